//! The label sets of the gateway's metric families ([`super::Metrics`]).

use prometheus_client::encoding::EncodeLabelSet;

/// Labels of per-topic series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

/// Labels of per-partition series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: i32,
}

/// Labels of decode failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecodeErrorLabels {
    pub topic: String,
    pub reason: String,
}

/// Labels of schema registry answers.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryFetchLabels {
    pub result: &'static str,
}

/// Why a record meant for a client was not delivered.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DropReason {
    /// The client's queue was full (policy `drop`).
    SlowClient,
    /// The client was disconnected for being slow (policy `disconnect`); its queue went with it.
    Disconnected,
}

impl DropReason {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::SlowClient => "slow_client",
            DropReason::Disconnected => "disconnected",
        }
    }
}

/// Labels of dropped records.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: &'static str,
}

/// Labels of refused client requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorCodeLabels {
    pub code: &'static str,
}

/// Labels of a sink partition's resume point outside its watermarks.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResumeGapLabels {
    pub topic: String,
    /// `expired` (below the low watermark) or `ahead` (above the high watermark).
    pub kind: &'static str,
}

/// Labels of closed connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub reason: &'static str,
}

/// Labels of per-table series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}
