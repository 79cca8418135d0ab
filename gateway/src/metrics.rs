//! Metrics: every metric name and label the gateway exports is declared here, once. Input: the
//! stages' counts; output: the Prometheus text format served at `/metrics`.
//!
//! Hot paths clone a labelled handle once (a `Counter` is an `Arc` inside) and increment it
//! without a family lookup per record.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

mod labels;
pub use self::labels::*;

/// All of the gateway's metrics. Cheap to clone: every field is a shared handle.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Records read from Kafka by the live consumers, per topic.
    pub kafka_records: Family<TopicLabels, Counter>,
    /// Records read from Kafka by replay consumers (subscriptions that start in the past).
    pub kafka_replay_records: Family<TopicLabels, Counter>,
    /// Records that could not be decoded, per topic and reason. They are skipped.
    pub decode_errors: Family<DecodeErrorLabels, Counter>,
    /// Filters that failed to evaluate on a record (counted as no match), per topic.
    pub filter_errors: Family<TopicLabels, Counter>,
    /// Bytes of `records` frames written to clients.
    pub ws_bytes_sent: Counter,
    /// Per topic and partition, records in Kafka not yet read by the live consumer.
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    /// Connections and requests refused by authentication or origin checks, per reason.
    pub auth_refused: Family<CloseLabels, Counter>,
    /// TLS certificate reloads (SIGHUP), per result (`ok`, `error`).
    pub tls_reloads: Family<CloseLabels, Counter>,
    /// Connections refused by a limit, per limit.
    pub ws_refused: Family<CloseLabels, Counter>,
    /// HTTP connections open (TCP accepted, not yet upgraded to a WebSocket or closed).
    pub http_connections: Gauge,
    /// HTTP connections the server closed, per reason (`header_timeout`, `idle`,
    /// `write_timeout`).
    pub http_closed: Family<CloseLabels, Counter>,
    /// 1 while the last background check found the Kafka cluster answering, else 0.
    pub kafka_reachable: Gauge,
    /// Errors reported by the Kafka client (connection loss, broker down, ...), per topic.
    pub kafka_errors: Family<TopicLabels, Counter>,
    /// 1 when the topic's live consumer is assigned to every partition, else 0.
    pub source_ready: Family<TopicLabels, Gauge>,
    /// Open WebSocket connections.
    pub ws_connections: Gauge,
    /// Active subscriptions over all connections.
    pub ws_subscriptions: Gauge,
    /// Replay readers running (subscriptions reading the past, until they catch up).
    pub ws_replays: Gauge,
    /// Records queued for clients and not yet written, over all connections.
    pub ws_queued_records: Gauge,
    /// Records written to clients.
    pub ws_records_sent: Counter,
    /// `records` frames written to clients.
    pub ws_frames_sent: Counter,
    /// `records` frames written compressed (permessage-deflate), of `ws_frames_sent`.
    pub ws_frames_compressed: Counter,
    /// WebSocket connections that agreed permessage-deflate.
    pub ws_deflate_connections: Counter,
    /// Records not delivered to a client, per reason.
    pub ws_dropped_records: Family<DropLabels, Counter>,
    /// Client requests refused with an error frame, per error code.
    pub ws_request_errors: Family<ErrorCodeLabels, Counter>,
    /// Connections that ended, per reason.
    pub ws_closed: Family<CloseLabels, Counter>,
    /// Schemas fetched from the registry, per result (`ok`, `not_found`, `unusable`).
    pub schema_registry_fetches: Family<RegistryFetchLabels, Counter>,
    /// Registry requests that failed and are retried (unreachable, timeout, 5xx, 429, 401/403).
    pub schema_registry_failures: Counter,
    /// Schema fetches currently waiting for the registry to come back; their topics wait too.
    pub schema_registry_waiting: Gauge,
    /// Undecodable records copied to their dead-letter topic, per source topic.
    pub dead_letter_records: Family<TopicLabels, Counter>,
    /// Undecodable records that could not be copied to their dead-letter topic, per source topic.
    pub dead_letter_errors: Family<TopicLabels, Counter>,
    /// Sink: rows written to Parquet files that are in place, per table.
    pub sink_records: Family<TableLabels, Counter>,
    /// Sink: bytes of Parquet files in place, per table.
    pub sink_bytes: Family<TableLabels, Counter>,
    /// Sink: Parquet files in place, per table.
    pub sink_files: Family<TableLabels, Counter>,
    /// Sink: size of each file in place, bytes.
    pub sink_file_bytes: Histogram,
    /// Sink: seconds from reading a file's first record to the file being in place (readable).
    pub sink_visibility_seconds: Histogram,
    /// Latency by stage, live path: seconds from a record's Kafka timestamp to the live
    /// consumer receiving it (the first record of each batch).
    pub live_receive_delay_seconds: Histogram,
    /// Seconds the hub took to render a live batch and hand it to every queue.
    pub live_publish_seconds: Histogram,
    /// Seconds from the Kafka timestamp of the oldest record of a session's batch to the
    /// session starting to write it (receive, publish and the queue's wake-up).
    pub ws_send_delay_seconds: Histogram,
    /// Seconds one session write (a batch of frames, to the socket) took.
    pub ws_write_seconds: Histogram,
    /// Sink: Hive partitions with files that are not yet registered in the metastore.
    pub sink_pending_partitions: Gauge,
    /// Sink: failed metastore calls (they are retried).
    pub sink_metastore_errors: Counter,
    /// Sink: metastore calls refused for good (permanent errors; tried again hourly).
    pub sink_metastore_refused: Counter,
    /// Sink: failed storage writes and listings (writes are retried).
    pub sink_storage_errors: Counter,
    /// Sink: per topic and partition, records in Kafka not yet in a file in place.
    pub sink_lag: Family<PartitionLabels, Gauge>,
    /// Sink: records read but not written, per topic and reason (tombstone, duplicate, ...).
    pub sink_skipped_records: Family<DecodeErrorLabels, Counter>,
    /// Sink: files open (being filled) in this worker.
    pub sink_open_files: Gauge,
    /// Sink: the Avro bytes of the records in this worker's open files (`sink.max_open_bytes`).
    pub sink_open_bytes: Gauge,
    /// Sink: files closed before `roll_rows` / `roll_bytes` / `roll_interval_ms` to keep the
    /// buffers bounded, per reason (`max_open_files`, `max_open_bytes`).
    pub sink_early_rolls: Family<CloseLabels, Counter>,
    /// Sink: partitions assigned with a resume point outside their watermarks.
    pub sink_resume_gaps: Family<ResumeGapLabels, Counter>,
    /// Sink: records that expired from Kafka before they landed (a resume point below the low
    /// watermark), per topic.
    pub sink_expired_records: Family<TopicLabels, Counter>,
    /// Sink: partitions paused because their resume point is above the high watermark.
    pub sink_paused_partitions: Gauge,
    /// Sink: partitions taken from this worker by a rebalance (their open files dropped).
    pub sink_revoked_partitions: Counter,
    /// Sink: waits on a record that could not be decoded yet, per topic and reason
    /// (`unknown_schema_id`, `unknown_fingerprint`, `registry_unavailable`).
    pub sink_decode_waits: Family<DecodeErrorLabels, Counter>,
    /// Sink: partitions paused on such a record now.
    pub sink_waiting_partitions: Gauge,
}

/// Seconds from `timestamp_ms` (a Kafka timestamp, ms since the epoch) to now; 0 for a
/// timestamp in the future (another host's clock).
pub fn since_timestamp(timestamp_ms: i64) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    (now - timestamp_ms as f64 / 1000.0).max(0.0)
}

/// Buckets of `lakewire_sink_file_bytes`: 64 KiB to 1 GiB.
fn file_size_buckets() -> Histogram {
    Histogram::new((0..9).map(|i| 65_536.0 * 4f64.powi(i)))
}

/// Buckets of the latency stages: 0.25 ms to about 4 s.
fn stage_buckets() -> Histogram {
    Histogram::new((0..15).map(|i| 0.000_25 * 2f64.powi(i)))
}

/// Buckets of `lakewire_sink_visibility_seconds`: 50 ms to about 14 min.
fn visibility_buckets() -> Histogram {
    Histogram::new((0..15).map(|i| 0.05 * 2f64.powi(i)))
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            kafka_records: Family::default(),
            kafka_replay_records: Family::default(),
            decode_errors: Family::default(),
            filter_errors: Family::default(),
            ws_bytes_sent: Counter::default(),
            consumer_lag: Family::default(),
            auth_refused: Family::default(),
            tls_reloads: Family::default(),
            ws_refused: Family::default(),
            http_connections: Gauge::default(),
            http_closed: Family::default(),
            kafka_reachable: Gauge::default(),
            kafka_errors: Family::default(),
            source_ready: Family::default(),
            ws_connections: Gauge::default(),
            ws_subscriptions: Gauge::default(),
            ws_replays: Gauge::default(),
            ws_queued_records: Gauge::default(),
            ws_records_sent: Counter::default(),
            ws_frames_sent: Counter::default(),
            ws_frames_compressed: Counter::default(),
            ws_deflate_connections: Counter::default(),
            ws_dropped_records: Family::default(),
            ws_request_errors: Family::default(),
            ws_closed: Family::default(),
            schema_registry_fetches: Family::default(),
            schema_registry_failures: Counter::default(),
            schema_registry_waiting: Gauge::default(),
            dead_letter_records: Family::default(),
            dead_letter_errors: Family::default(),
            sink_records: Family::default(),
            sink_bytes: Family::default(),
            sink_files: Family::default(),
            sink_file_bytes: file_size_buckets(),
            sink_visibility_seconds: visibility_buckets(),
            live_receive_delay_seconds: stage_buckets(),
            live_publish_seconds: stage_buckets(),
            ws_send_delay_seconds: stage_buckets(),
            ws_write_seconds: stage_buckets(),
            sink_pending_partitions: Gauge::default(),
            sink_metastore_errors: Counter::default(),
            sink_metastore_refused: Counter::default(),
            sink_storage_errors: Counter::default(),
            sink_lag: Family::default(),
            sink_skipped_records: Family::default(),
            sink_open_files: Gauge::default(),
            sink_open_bytes: Gauge::default(),
            sink_early_rolls: Family::default(),
            sink_resume_gaps: Family::default(),
            sink_expired_records: Family::default(),
            sink_paused_partitions: Gauge::default(),
            sink_revoked_partitions: Counter::default(),
            sink_decode_waits: Family::default(),
            sink_waiting_partitions: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `lakewire_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("lakewire");
        r.register(
            "kafka_records",
            "Records read from Kafka by the live consumers",
            self.kafka_records.clone(),
        );
        r.register(
            "kafka_replay_records",
            "Records read from Kafka by replay consumers (subscriptions starting in the past)",
            self.kafka_replay_records.clone(),
        );
        r.register(
            "decode_errors",
            "Records that could not be decoded and were skipped",
            self.decode_errors.clone(),
        );
        r.register(
            "filter_errors",
            "Filters that failed on a record (counted as no match)",
            self.filter_errors.clone(),
        );
        r.register(
            "ws_bytes_sent",
            "Bytes of records frames written to WebSocket clients",
            self.ws_bytes_sent.clone(),
        );
        r.register(
            "consumer_lag",
            "Records in Kafka not yet read by the live consumer",
            self.consumer_lag.clone(),
        );
        r.register(
            "auth_refused",
            "Connections and requests refused by authentication or origin checks",
            self.auth_refused.clone(),
        );
        r.register(
            "tls_reloads",
            "TLS certificate reloads on SIGHUP",
            self.tls_reloads.clone(),
        );
        r.register(
            "ws_refused",
            "Connections refused by a connection limit",
            self.ws_refused.clone(),
        );
        r.register(
            "http_connections",
            "HTTP connections open (accepted, not yet upgraded to a WebSocket)",
            self.http_connections.clone(),
        );
        r.register(
            "http_closed",
            "HTTP connections closed by the server for a slow request head, idleness or a stalled write",
            self.http_closed.clone(),
        );
        r.register(
            "kafka_reachable",
            "1 while the background check finds the Kafka cluster answering",
            self.kafka_reachable.clone(),
        );
        r.register(
            "kafka_errors",
            "Errors reported by the Kafka client",
            self.kafka_errors.clone(),
        );
        r.register(
            "source_ready",
            "1 when the topic's live consumer is assigned to all partitions",
            self.source_ready.clone(),
        );
        r.register(
            "ws_connections",
            "Open WebSocket connections",
            self.ws_connections.clone(),
        );
        r.register(
            "ws_subscriptions",
            "Active subscriptions over all connections",
            self.ws_subscriptions.clone(),
        );
        r.register(
            "ws_replays",
            "Replay readers running (subscriptions reading the past, until they catch up)",
            self.ws_replays.clone(),
        );
        r.register(
            "ws_queued_records",
            "Records queued for clients and not yet written",
            self.ws_queued_records.clone(),
        );
        r.register(
            "ws_records_sent",
            "Records written to WebSocket clients",
            self.ws_records_sent.clone(),
        );
        r.register(
            "ws_frames_sent",
            "records frames written to WebSocket clients",
            self.ws_frames_sent.clone(),
        );
        r.register(
            "ws_frames_compressed",
            "records frames written compressed (permessage-deflate)",
            self.ws_frames_compressed.clone(),
        );
        r.register(
            "ws_deflate_connections",
            "WebSocket connections that agreed permessage-deflate",
            self.ws_deflate_connections.clone(),
        );
        r.register(
            "ws_dropped_records",
            "Records not delivered to a client",
            self.ws_dropped_records.clone(),
        );
        r.register(
            "ws_request_errors",
            "Client requests refused with an error frame",
            self.ws_request_errors.clone(),
        );
        r.register(
            "ws_closed",
            "WebSocket connections that ended",
            self.ws_closed.clone(),
        );
        r.register(
            "schema_registry_fetches",
            "Schemas fetched from the schema registry, per result",
            self.schema_registry_fetches.clone(),
        );
        r.register(
            "schema_registry_failures",
            "Schema registry requests that failed and are retried",
            self.schema_registry_failures.clone(),
        );
        r.register(
            "schema_registry_waiting",
            "Schema fetches waiting for the schema registry to answer",
            self.schema_registry_waiting.clone(),
        );
        r.register(
            "dead_letter_records",
            "Undecodable records copied to their dead-letter topic",
            self.dead_letter_records.clone(),
        );
        r.register(
            "dead_letter_errors",
            "Undecodable records that could not be copied to their dead-letter topic",
            self.dead_letter_errors.clone(),
        );
        r.register(
            "sink_records",
            "Rows in Parquet files the sink has put in place",
            self.sink_records.clone(),
        );
        r.register(
            "sink_bytes",
            "Bytes of Parquet files the sink has put in place",
            self.sink_bytes.clone(),
        );
        r.register(
            "sink_files",
            "Parquet files the sink has put in place",
            self.sink_files.clone(),
        );
        r.register(
            "sink_file_bytes",
            "Size of each Parquet file put in place",
            self.sink_file_bytes.clone(),
        );
        r.register(
            "sink_visibility_seconds",
            "Seconds from reading a file's first record to the file being readable",
            self.sink_visibility_seconds.clone(),
        );
        for (name, help, h) in [
            (
                "live_receive_delay_seconds",
                "Seconds from a record's Kafka timestamp to the live consumer receiving it",
                &self.live_receive_delay_seconds,
            ),
            (
                "live_publish_seconds",
                "Seconds the hub took to render a live batch and queue it for every client",
                &self.live_publish_seconds,
            ),
            (
                "ws_send_delay_seconds",
                "Seconds from the Kafka timestamp of a session batch's oldest record to its write",
                &self.ws_send_delay_seconds,
            ),
            (
                "ws_write_seconds",
                "Seconds one session write of a batch of frames took",
                &self.ws_write_seconds,
            ),
        ] {
            r.register(name, help, h.clone());
        }
        r.register(
            "sink_pending_partitions",
            "Hive partitions with files not yet registered in the metastore",
            self.sink_pending_partitions.clone(),
        );
        r.register(
            "sink_metastore_errors",
            "Failed Hive Metastore calls (outages retried with backoff, refusals hourly)",
            self.sink_metastore_errors.clone(),
        );
        r.register(
            "sink_metastore_refused",
            "Hive Metastore calls refused with a permanent error (a subset of sink_metastore_errors)",
            self.sink_metastore_refused.clone(),
        );
        r.register(
            "sink_storage_errors",
            "Failed sink storage writes and listings (writes are retried)",
            self.sink_storage_errors.clone(),
        );
        r.register(
            "sink_lag",
            "Records in Kafka not yet in a sink file in place",
            self.sink_lag.clone(),
        );
        r.register(
            "sink_skipped_records",
            "Records the sink read but did not write, per reason",
            self.sink_skipped_records.clone(),
        );
        r.register(
            "sink_open_files",
            "Sink files open (being filled) in this worker",
            self.sink_open_files.clone(),
        );
        r.register(
            "sink_open_bytes",
            "Avro bytes of the records in this sink worker's open files (capped by sink.max_open_bytes)",
            self.sink_open_bytes.clone(),
        );
        r.register(
            "sink_early_rolls",
            "Sink files closed early to bound the open files (max_open_files) or their bytes (max_open_bytes)",
            self.sink_early_rolls.clone(),
        );
        r.register(
            "sink_resume_gaps",
            "Sink partitions assigned with a resume point below the low watermark (expired) or above the high watermark (ahead)",
            self.sink_resume_gaps.clone(),
        );
        r.register(
            "sink_expired_records",
            "Records that expired from Kafka before the sink landed them",
            self.sink_expired_records.clone(),
        );
        r.register(
            "sink_paused_partitions",
            "Sink partitions paused: their resume point is above the high watermark (topic recreated?)",
            self.sink_paused_partitions.clone(),
        );
        r.register(
            "sink_revoked_partitions",
            "Sink partitions taken from this worker by a rebalance (their open files dropped; the next owner reads those records again)",
            self.sink_revoked_partitions.clone(),
        );
        r.register(
            "sink_decode_waits",
            "Sink waits on a record that could not be decoded yet (schema not registered yet, registry unreachable, unknown fingerprint), per reason",
            self.sink_decode_waits.clone(),
        );
        r.register(
            "sink_waiting_partitions",
            "Sink partitions paused on a record that could not be decoded yet",
            self.sink_waiting_partitions.clone(),
        );
    }

    /// The handle counting `topic`'s records.
    pub fn topic_counter(family: &Family<TopicLabels, Counter>, topic: &str) -> Counter {
        family.get_or_create_owned(&TopicLabels {
            topic: topic.to_string(),
        })
    }

    /// The `topic` series of a per-topic gauge.
    pub fn topic_gauge(family: &Family<TopicLabels, Gauge>, topic: &str) -> Gauge {
        family.get_or_create_owned(&TopicLabels {
            topic: topic.to_string(),
        })
    }

    /// Counts one undecodable record.
    pub fn decode_error(&self, topic: &str, reason: &str) {
        self.decode_errors
            .get_or_create(&DecodeErrorLabels {
                topic: topic.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts one answer of the schema registry.
    pub fn schema_registry_fetch(&self, result: &'static str) {
        self.schema_registry_fetches
            .get_or_create(&RegistryFetchLabels { result })
            .inc();
    }

    /// Counts one refused request.
    pub fn request_error(&self, code: &'static str) {
        self.ws_request_errors
            .get_or_create(&ErrorCodeLabels { code })
            .inc();
    }

    /// Counts one refusal by auth (`reason`).
    pub fn auth_refused(&self, reason: &'static str) {
        self.auth_refused
            .get_or_create(&CloseLabels { reason })
            .inc();
    }

    /// Counts one TLS reload (`ok` or `error`); the label is `reason` like the other event
    /// counters.
    pub fn tls_reload(&self, result: &'static str) {
        self.tls_reloads
            .get_or_create(&CloseLabels { reason: result })
            .inc();
    }

    /// Counts one connection refused by a limit (`reason`).
    pub fn refused(&self, reason: &'static str) {
        self.ws_refused.get_or_create(&CloseLabels { reason }).inc();
    }

    /// Counts one closed connection.
    pub fn closed(&self, reason: &'static str) {
        self.ws_closed.get_or_create(&CloseLabels { reason }).inc();
    }

    /// Counts records that did not reach a client.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.ws_dropped_records
            .get_or_create(&DropLabels {
                reason: reason.as_str(),
            })
            .inc_by(n);
    }
}

/// The registry behind `/metrics`, with the gateway's metrics in it.
pub fn prometheus_registry(metrics: &Metrics) -> Registry {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    registry
}

/// The registry in Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Encoding into a String cannot fail; an error would only come from a broken label encoder.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_counters_suffixed() {
        let m = Metrics::default();
        let reg = prometheus_registry(&m);
        Metrics::topic_counter(&m.kafka_records, "trades").inc_by(3);
        m.decode_error("trades", "bad_json");
        m.dropped(DropReason::SlowClient, 5);
        let text = render(&reg);
        assert!(
            text.contains("lakewire_kafka_records_total{topic=\"trades\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("lakewire_decode_errors_total{topic=\"trades\",reason=\"bad_json\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lakewire_ws_dropped_records_total{reason=\"slow_client\"} 5"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
