//! `[sink]`: the topics written to the data lake as Parquet files in Hive partitions.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};

/// `[sink]`: the topics written to the data lake as Parquet (see [`crate::sink`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `s3://bucket/prefix`, `file:///abs/path` or a plain path.
    pub root: String,
    /// The Kafka consumer group of all sink workers.
    #[serde(default = "default_sink_group")]
    pub group_id: String,
    /// Parquet compression.
    #[serde(default)]
    pub compression: SinkCompression,
    /// A file is closed after this many rows.
    #[serde(default = "default_roll_rows")]
    pub roll_rows: u64,
    /// A file is closed once its records' Avro bytes reach this (the Parquet file is smaller).
    #[serde(default = "default_roll_bytes")]
    pub roll_bytes: u64,
    /// A file is closed after this many milliseconds open (wall clock); 0 = never. The bound on
    /// how long a record waits to land in a partition that goes quiet.
    #[serde(default = "default_roll_interval_ms")]
    pub roll_interval_ms: u64,
    /// A file is closed when a record of its partition arrives whose Kafka timestamp is this
    /// many milliseconds or more after the file's first record's; 0 = never.
    #[serde(default)]
    pub roll_record_ms: u64,
    /// Open files per assigned partition (one per Hive folder and writer schema); a record
    /// for another folder when this many are open closes the oldest first.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: usize,
    /// The Avro bytes of all open files of the worker together; reaching it closes the
    /// largest. With `roll_bytes` it bounds the sink's buffers.
    #[serde(default = "default_max_open_bytes")]
    pub max_open_bytes: u64,
    /// On SIGTERM / ctrl-c, how long the sink may take to land its open files (one attempt
    /// each) before the process exits anyway; the records of a file not landed are read again
    /// by the next owner of its partition.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// `thrift://host:port` of a Hive Metastore to register tables and partitions in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metastore_uri: Option<String>,
    /// The metastore database of the tables.
    #[serde(default = "default_sink_database")]
    pub database: String,
    /// S3 settings, for `s3://` roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<SinkS3Config>,
    /// The topics to write, one table each.
    #[serde(default)]
    pub tables: Vec<SinkTableConfig>,
}

const fn default_shutdown_timeout_ms() -> u64 {
    50_000
}
fn default_sink_group() -> String {
    "lakewire-sink".into()
}
fn default_sink_database() -> String {
    "default".into()
}
const fn default_roll_rows() -> u64 {
    1_000_000
}
const fn default_roll_bytes() -> u64 {
    128 * 1024 * 1024
}
const fn default_roll_interval_ms() -> u64 {
    600_000
}
const fn default_max_open_files() -> usize {
    64
}
const fn default_max_open_bytes() -> u64 {
    256 * 1024 * 1024
}

/// Parquet compression codec of the sink's files.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkCompression {
    #[default]
    Zstd,
    Snappy,
}

/// `[sink.s3]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkS3Config {
    /// The S3 endpoint (an S3-compatible server); AWS when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default = "default_s3_region")]
    pub region: String,
    /// Else `AWS_ACCESS_KEY_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Else `AWS_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Allow an `http://` endpoint.
    #[serde(default)]
    pub allow_http: bool,
}

fn default_s3_region() -> String {
    "us-east-1".into()
}

/// One `[[sink.tables]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkTableConfig {
    /// A topic of `[[topics]]` (its decoder settings are used).
    pub topic: String,
    /// The table (directory) name; default: the topic with `.` and `-` replaced by `_`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Partition columns: `dt`/`hr` (UTC date/hour of the record timestamp) or top-level fields.
    #[serde(default = "default_partition_by")]
    pub partition_by: Vec<String>,
    /// Write the Kafka key as a `_key` column (text, decoded with the topic's `key_format`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub key_column: bool,
    /// Write the Kafka headers as a `_headers` column (a list of name and value pairs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub headers_column: bool,
}

fn default_partition_by() -> Vec<String> {
    vec!["dt".into(), "hr".into()]
}

impl SinkTableConfig {
    /// The table name.
    pub fn table_name(&self) -> String {
        self.table
            .clone()
            .unwrap_or_else(|| self.topic.replace(['.', '-'], "_"))
    }
}

impl Config {
    pub(super) fn validate_sink(&self, sink: &SinkConfig) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::Invalid(format!("sink.{key}: {why}")));
        if sink.root.trim().is_empty() {
            return bad("root", "must name a folder or an s3:// bucket");
        }
        if sink.s3.is_some() && !sink.root.starts_with("s3://") {
            return bad("s3", "only for s3:// roots");
        }
        if sink.group_id.trim().is_empty() {
            return bad("group_id", "must not be empty");
        }
        if sink.shutdown_timeout_ms == 0 {
            return bad("shutdown_timeout_ms", "must be greater than 0");
        }
        if sink.roll_rows == 0 {
            return bad("roll_rows", "must be at least 1");
        }
        if sink.roll_bytes < 1024 {
            return bad("roll_bytes", "must be at least 1024");
        }
        if sink.max_open_files == 0 {
            return bad("max_open_files", "must be at least 1");
        }
        if sink.max_open_bytes < 1024 {
            return bad("max_open_bytes", "must be at least 1024");
        }
        if let Some(uri) = &sink.metastore_uri {
            let hostport = uri.strip_prefix("thrift://").unwrap_or("");
            if hostport
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return bad(
                    "metastore_uri",
                    &format!("{uri:?} is not thrift://host:port"),
                );
            }
        }
        if sink.tables.is_empty() {
            return bad("tables", "name at least one topic to write");
        }
        let ident = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !s.starts_with('_')
        };
        let mut names = HashSet::new();
        let mut topics = HashSet::new();
        for (i, t) in sink.tables.iter().enumerate() {
            let key = |k: &str| format!("tables[{i}].{k}");
            let Some(topic) = self.topic(&t.topic) else {
                return bad(
                    &key("topic"),
                    &format!("{:?} is not one of [[topics]]", t.topic),
                );
            };
            if !topic.format.is_avro() {
                return bad(
                    &key("topic"),
                    &format!(
                        "{:?} has format {}; the sink writes Avro topics",
                        t.topic, topic.format
                    ),
                );
            }
            if t.topic.starts_with(['_', '.']) {
                // File names begin with the topic, and Hive, Spark, pyarrow and DuckDB skip
                // files whose names start with '_' or '.': such a table would look empty.
                return bad(
                    &key("topic"),
                    &format!(
                        "{:?} starts with '{}': the sink's files are named after the topic, and readers skip files starting with '_' or '.'",
                        t.topic,
                        &t.topic[..1]
                    ),
                );
            }
            if !topics.insert(t.topic.as_str()) {
                return bad(&key("topic"), &format!("{:?} is listed twice", t.topic));
            }
            let name = t.table_name();
            if !ident(&name) {
                return bad(
                    &key("table"),
                    &format!("{name:?}: letters, digits and '_' only, not starting with '_'"),
                );
            }
            if !names.insert(name.clone()) {
                return bad(&key("table"), &format!("{name:?} is used twice"));
            }
            let mut seen = HashSet::new();
            for p in &t.partition_by {
                if !ident(p) {
                    return bad(&key("partition_by"), &format!("{p:?} is not a column name"));
                }
                if !seen.insert(p.as_str()) {
                    return bad(&key("partition_by"), &format!("{p:?} is listed twice"));
                }
            }
        }
        Ok(())
    }
}
