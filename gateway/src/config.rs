//! Configuration: one TOML file, every key overridable by `LAKEWIRE_*` environment variables
//! (`LAKEWIRE_KAFKA__BROKERS`), validated before anything starts. Input: a file and an
//! environment; output: a [`Config`] or a [`ConfigError`] naming the offending key.
//!
//! The environment is passed in as a list of pairs (see [`Config::load`]) so that tests never
//! touch the process environment.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format as _, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that override file keys; `__` separates nesting levels.
pub const ENV_PREFIX: &str = "LAKEWIRE_";

/// A configuration that cannot be used. The message names the key and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A key is unknown, missing, of the wrong type, or has a value that is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// The whole gateway configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Kafka cluster the records come from.
    pub kafka: KafkaConfig,
    /// The topics this gateway serves. Clients can subscribe to these and no others.
    #[serde(default)]
    pub topics: Vec<TopicConfig>,
    /// The HTTP / WebSocket listener and the per-client limits.
    #[serde(default)]
    pub websocket: WebSocketConfig,
    /// Who may connect.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The Confluent-compatible schema registry; needed by topics with format `confluent`.
    #[serde(default)]
    pub schema_registry: Option<SchemaRegistryConfig>,
    /// Folder of `*.avsc` schemas that `single-object` records are matched against, by the
    /// CRC-64-AVRO fingerprint of each schema's canonical form. Relative to the working
    /// directory.
    #[serde(default = "default_schemas_dir")]
    pub schemas_dir: PathBuf,
    /// The Hive sink: topics written as Parquet files in Hive partitions. Absent: no sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkConfig>,
}

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
    /// A file is closed after this many milliseconds open; 0 = never (wall-clock rolls make
    /// file boundaries depend on timing: at-least-once, see docs/configuration.md).
    #[serde(default)]
    pub roll_interval_ms: u64,
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

fn default_schemas_dir() -> PathBuf {
    PathBuf::from("schemas")
}

/// `[schema_registry]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL of the registry, `http://` or `https://`, e.g. `http://127.0.0.1:8081`.
    pub url: String,
    /// User name for HTTP basic authentication (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// Password for HTTP basic authentication.
    #[serde(default)]
    pub password: Option<String>,
    /// PEM file of CA certificates to trust for `https://` besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long one schema request may take before it counts as failed and is retried.
    #[serde(default = "default_registry_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How long connecting to the registry may take.
    #[serde(default = "default_registry_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// The longest wait between two attempts while the registry is unavailable.
    #[serde(default = "default_registry_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

const fn default_registry_request_timeout_ms() -> u64 {
    5_000
}
const fn default_registry_connect_timeout_ms() -> u64 {
    2_000
}
const fn default_registry_max_backoff_ms() -> u64 {
    10_000
}

/// `[kafka]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma-separated `host:port` (librdkafka `bootstrap.servers`).
    pub brokers: String,
    /// Any librdkafka client property, passed through as is (e.g. `"security.protocol"`). Set
    /// here, they apply to every consumer the gateway creates; they win over Lakewire's own
    /// defaults.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// How long a metadata or watermark request to Kafka may take before it counts as failed.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

const fn default_request_timeout_ms() -> u64 {
    10_000
}

/// One `[[topics]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// The Kafka topic name.
    pub name: String,
    /// How record values are encoded on the wire.
    pub format: PayloadFormat,
    /// The Avro schema file of the values: required for `raw`; for `single-object`, one more
    /// schema to match besides those in `schemas_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<PathBuf>,
    /// An Avro reader schema: values are resolved from the writer's schema to this one (Avro's
    /// schema resolution rules), so clients see one shape while producers evolve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_schema: Option<PathBuf>,
    /// How record keys are encoded. Absent: keys are sent as UTF-8 text, or base64 when not
    /// UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_format: Option<PayloadFormat>,
    /// The Avro schema file of the keys, for `key_format = "raw"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_schema: Option<PathBuf>,
    /// A topic that undecodable records are copied to, as they are, with the error in headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
}

impl TopicConfig {
    /// A topic of `format` with every optional key unset.
    pub fn new(name: impl Into<String>, format: PayloadFormat) -> Self {
        Self {
            name: name.into(),
            format,
            schema: None,
            reader_schema: None,
            key_format: None,
            key_schema: None,
            dead_letter_topic: None,
        }
    }
}

/// The wire format of a topic's record values.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadFormat {
    /// UTF-8 JSON documents.
    Json,
    /// Confluent wire format: `0x00`, a 4-byte big-endian schema id, Avro binary; the schema
    /// comes from `[schema_registry]`.
    Confluent,
    /// Avro single-object encoding: `0xC3 0x01`, the schema's 8-byte fingerprint, Avro binary;
    /// the schema comes from `schemas_dir`.
    SingleObject,
    /// Avro binary with no framing, in the topic's `schema`.
    Raw,
}

impl PayloadFormat {
    /// True for the Avro formats.
    pub const fn is_avro(self) -> bool {
        !matches!(self, PayloadFormat::Json)
    }
}

/// What happens when a client's queue is full.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SlowClientPolicy {
    /// Drop the oldest queued records and tell the client with a `lagged` frame.
    #[default]
    Drop,
    /// Close the connection with code 4008 `slow consumer`.
    Disconnect,
}

/// `[websocket]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Address the HTTP server (dashboard, `/ws`, `/metrics`, health) listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Records buffered per client before the slow-client policy applies.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Bytes (of rendered records) buffered per client before the slow-client policy applies;
    /// whichever of `queue_size` and this is reached first counts.
    #[serde(default = "default_queue_bytes")]
    pub queue_bytes: usize,
    /// `drop` (oldest records dropped, `lagged` sent) or `disconnect` (close 4008).
    #[serde(default)]
    pub slow_client: SlowClientPolicy,
    /// Subscriptions one connection may hold at once.
    #[serde(default = "default_max_subscriptions")]
    pub max_subscriptions: usize,
    /// Client frames larger than this close the connection with 1009.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Records put in one `records` frame at most.
    #[serde(default = "default_max_records_per_frame")]
    pub max_records_per_frame: usize,
    /// How often the server pings an idle connection (WebSocket ping frame).
    #[serde(default = "default_ping_interval_ms")]
    pub ping_interval_ms: u64,
    /// A connection from which nothing (not even a pong) arrived for this long is closed with
    /// 1001 `idle timeout`.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// PEM file with the listener's TLS certificate chain (leaf first). With `tls_key_file`,
    /// the listener speaks HTTPS/WSS only; reloaded on SIGHUP.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM file with the private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Open connections (WebSocket and SSE) the process accepts; more are refused with 503.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections from one IP address; more are refused with 429.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Client messages per second one connection may send (a burst of as many is allowed);
    /// a client over it is closed with 1008 `too many messages`.
    #[serde(default = "default_max_messages_per_second")]
    pub max_messages_per_second: u32,
    /// Longest filter expression a client may send, in bytes.
    #[serde(default = "default_max_filter_bytes")]
    pub max_filter_bytes: usize,
    /// Most syntax-tree nodes in a filter (bounds its evaluation cost per record).
    #[serde(default = "default_max_filter_nodes")]
    pub max_filter_nodes: usize,
    /// Most paths in a subscription's `fields`.
    #[serde(default = "default_max_fields")]
    pub max_fields: usize,
    /// On shutdown, how long open sessions get to receive their close frame (1001) before the
    /// process exits anyway.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
const fn default_queue_size() -> usize {
    1024
}
const fn default_queue_bytes() -> usize {
    1 << 20
}
const fn default_ping_interval_ms() -> u64 {
    20_000
}
const fn default_idle_timeout_ms() -> u64 {
    60_000
}
const fn default_max_connections() -> usize {
    20_000
}
const fn default_max_connections_per_ip() -> usize {
    1_000
}
const fn default_max_messages_per_second() -> u32 {
    50
}
const fn default_max_filter_bytes() -> usize {
    4_096
}
const fn default_max_filter_nodes() -> usize {
    512
}
const fn default_max_fields() -> usize {
    64
}
const fn default_max_subscriptions() -> usize {
    64
}
const fn default_max_frame_bytes() -> usize {
    65_536
}
const fn default_max_records_per_frame() -> usize {
    256
}
const fn default_shutdown_grace_ms() -> u64 {
    5_000
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            queue_size: default_queue_size(),
            queue_bytes: default_queue_bytes(),
            slow_client: SlowClientPolicy::default(),
            max_subscriptions: default_max_subscriptions(),
            max_frame_bytes: default_max_frame_bytes(),
            max_records_per_frame: default_max_records_per_frame(),
            ping_interval_ms: default_ping_interval_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            tls_cert_file: None,
            tls_key_file: None,
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            max_messages_per_second: default_max_messages_per_second(),
            max_filter_bytes: default_max_filter_bytes(),
            max_filter_nodes: default_max_filter_nodes(),
            max_fields: default_max_fields(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `none`: anyone who reaches the listener may read every configured topic. `jwt`: a bearer
    /// token is required; its `topics` claim says what may be read.
    #[serde(default)]
    pub mode: AuthMode,
    /// HS256 shared secret (at least 32 bytes). Prefer `LAKEWIRE_AUTH__HS256_SECRET`.
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// PEM file with the RSA public key that verifies RS256 tokens.
    #[serde(default)]
    pub rs256_public_key_file: Option<PathBuf>,
    /// PEM file with the P-256 public key that verifies ES256 tokens.
    #[serde(default)]
    pub es256_public_key_file: Option<PathBuf>,
    /// URL of a JWKS document (the identity provider's keys); replaces the key settings above.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Allows an `http://` `jwks_url` (keys fetched without TLS can be swapped in transit);
    /// for tests and trusted loopback identity providers only.
    #[serde(default)]
    pub jwks_allow_http: bool,
    /// How often the JWKS document is fetched again (also on a token with an unknown key id, at
    /// most every 10 s).
    #[serde(default = "default_jwks_refresh_seconds")]
    pub jwks_refresh_seconds: u64,
    /// Required `aud` claim, when set.
    #[serde(default)]
    pub audience: Option<String>,
    /// Required `iss` claim, when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The claim listing the topics (names or glob patterns such as `orders.*`) a token grants.
    #[serde(default = "default_topics_claim")]
    pub topics_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_seconds")]
    pub leeway_seconds: u64,
    /// Browser origins allowed to connect (`https://dash.example.com`); an upgrade or request
    /// with another `Origin` header is refused with 403. Empty: any origin. Applies in every
    /// mode.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

const fn default_jwks_refresh_seconds() -> u64 {
    300
}
fn default_topics_claim() -> String {
    "topics".into()
}
const fn default_leeway_seconds() -> u64 {
    30
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            hs256_secret: None,
            rs256_public_key_file: None,
            es256_public_key_file: None,
            jwks_url: None,
            jwks_allow_http: false,
            jwks_refresh_seconds: default_jwks_refresh_seconds(),
            audience: None,
            issuer: None,
            topics_claim: default_topics_claim(),
            leeway_seconds: default_leeway_seconds(),
            allowed_origins: Vec::new(),
        }
    }
}

/// How clients authenticate.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// No authentication.
    #[default]
    None,
    /// JWT bearer tokens.
    Jwt,
}

impl Config {
    /// Reads `path`, applies the `LAKEWIRE_*` variables found in `env`, and validates the result.
    pub fn load(path: &Path, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_and_env(&text, env, &path.display().to_string())
    }

    /// Like [`Config::load`], from TOML text; `origin` names it in messages.
    pub fn from_toml_and_env(
        text: &str,
        env: &[(String, String)],
        origin: &str,
    ) -> Result<Self, ConfigError> {
        let figment = Figment::new()
            .merge(Toml::string(text))
            .merge(env_provider(env));
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e, origin)))?;
        config.validate()?;
        Ok(config)
    }

    /// Applies the `LAKEWIRE_*` variables in `env` over an in-code configuration (the demo's).
    pub fn with_env(self, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(self))
            .merge(env_provider(env))
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e, "built-in defaults")))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot: ranges, duplicates, empty values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::Invalid(format!("{key}: {why}")));
        if self.kafka.brokers.trim().is_empty() {
            return bad("kafka.brokers", "must name at least one broker (host:port)");
        }
        if self.kafka.request_timeout_ms == 0 {
            return bad("kafka.request_timeout_ms", "must be greater than 0");
        }
        let mut seen = HashSet::new();
        for (i, topic) in self.topics.iter().enumerate() {
            let key = format!("topics[{i}].name");
            if let Err(why) = check_topic_name(&topic.name) {
                return bad(&key, &why);
            }
            if !seen.insert(topic.name.as_str()) {
                return bad(&key, &format!("topic {:?} is listed twice", topic.name));
            }
            if let Err((key, why)) = crate::decode::check_topic(self, i) {
                return bad(&key, &why);
            }
        }
        if let Some(r) = &self.schema_registry {
            if let Err((key, why)) = crate::decode::check_registry(r) {
                return bad(&key, &why);
            }
        }
        let ws = &self.websocket;
        if ws.queue_size == 0 {
            return bad("websocket.queue_size", "must be at least 1");
        }
        if ws.queue_bytes < 1024 {
            return bad("websocket.queue_bytes", "must be at least 1024");
        }
        if ws.ping_interval_ms == 0 {
            return bad("websocket.ping_interval_ms", "must be greater than 0");
        }
        if ws.idle_timeout_ms <= ws.ping_interval_ms {
            return bad(
                "websocket.idle_timeout_ms",
                "must be greater than websocket.ping_interval_ms (pings keep live clients talking)",
            );
        }
        match (&ws.tls_cert_file, &ws.tls_key_file) {
            (Some(cert), Some(key)) => {
                crate::tls::load(cert, key).map_err(|e| {
                    ConfigError::Invalid(format!("websocket.tls_cert_file / tls_key_file: {e}"))
                })?;
            }
            (None, None) => {}
            _ => {
                return bad(
                    "websocket.tls_cert_file / tls_key_file",
                    "set both (certificate chain and its key) or neither",
                );
            }
        }
        if ws.max_connections == 0 || ws.max_connections_per_ip == 0 {
            return bad(
                "websocket.max_connections / max_connections_per_ip",
                "must be at least 1",
            );
        }
        if ws.max_messages_per_second == 0 {
            return bad("websocket.max_messages_per_second", "must be at least 1");
        }
        let auth = &self.auth;
        match auth.mode {
            AuthMode::None => {
                if auth.hs256_secret.is_some()
                    || auth.rs256_public_key_file.is_some()
                    || auth.es256_public_key_file.is_some()
                    || auth.jwks_url.is_some()
                {
                    return bad(
                        "auth.mode",
                        "keys are configured but mode is \"none\": set mode = \"jwt\" to use them",
                    );
                }
            }
            AuthMode::Jwt => {
                if let Some(url) = &auth.jwks_url {
                    if url.starts_with("http://") {
                        if !auth.jwks_allow_http {
                            return bad(
                                "auth.jwks_url",
                                "is an http:// URL: keys fetched without TLS can be replaced in transit; use https://, or set auth.jwks_allow_http = true for a trusted local identity provider",
                            );
                        }
                    } else if !url.starts_with("https://") {
                        return bad("auth.jwks_url", "must be an https:// URL");
                    }
                } else {
                    let keys = crate::auth::static_keys(auth).map_err(ConfigError::Invalid)?;
                    if keys.is_empty() {
                        return bad(
                            "auth",
                            "mode = \"jwt\" needs hs256_secret, rs256_public_key_file, es256_public_key_file or jwks_url",
                        );
                    }
                }
                if auth.topics_claim.is_empty() {
                    return bad("auth.topics_claim", "must not be empty");
                }
            }
        }
        if let Some(o) = auth
            .allowed_origins
            .iter()
            .find(|o| !(o.starts_with("https://") || o.starts_with("http://")) || o.ends_with('/'))
        {
            return bad(
                "auth.allowed_origins",
                &format!(
                    "{o:?} is not an origin like \"https://dash.example.com\" (scheme and host, no path)"
                ),
            );
        }
        if ws.max_filter_bytes == 0 || ws.max_filter_nodes == 0 || ws.max_fields == 0 {
            return bad(
                "websocket.max_filter_bytes / max_filter_nodes / max_fields",
                "must be at least 1",
            );
        }
        if ws.max_subscriptions == 0 {
            return bad("websocket.max_subscriptions", "must be at least 1");
        }
        if ws.max_frame_bytes < 256 {
            return bad("websocket.max_frame_bytes", "must be at least 256");
        }
        if ws.max_records_per_frame == 0 {
            return bad("websocket.max_records_per_frame", "must be at least 1");
        }
        if let Some(sink) = &self.sink {
            self.validate_sink(sink)?;
        }
        Ok(())
    }

    fn validate_sink(&self, sink: &SinkConfig) -> Result<(), ConfigError> {
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
        if sink.roll_rows == 0 {
            return bad("roll_rows", "must be at least 1");
        }
        if sink.roll_bytes < 1024 {
            return bad("roll_bytes", "must be at least 1024");
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

    /// The limits on client filters and projections.
    pub fn shape_limits(&self) -> crate::filter::Limits {
        crate::filter::Limits {
            max_filter_bytes: self.websocket.max_filter_bytes,
            max_filter_nodes: self.websocket.max_filter_nodes,
            max_fields: self.websocket.max_fields,
        }
    }

    /// The configured topic called `name`.
    pub fn topic(&self, name: &str) -> Option<&TopicConfig> {
        self.topics.iter().find(|t| t.name == name)
    }
}

/// Kafka's own rule: 1 to 249 of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub(crate) fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err("a topic name has 1 to 249 characters".into());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid topic name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{name:?} has {c:?}; topic names use only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// The `LAKEWIRE_*` pairs of an environment as a figment provider. Figment's own `Env` reads the
/// process environment; this one reads only the list it is given.
struct EnvPairs(Vec<(String, String)>);

fn env_provider(env: &[(String, String)]) -> EnvPairs {
    EnvPairs(
        env.iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix(ENV_PREFIX)?;
                (!key.is_empty()).then(|| (key.to_ascii_lowercase().replace("__", "."), v.clone()))
            })
            .collect(),
    )
}

impl figment::Provider for EnvPairs {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (key, raw) in &self.0 {
            let value: figment::value::Value = raw.parse().unwrap_or_else(|e| match e {});
            if let Some(nested) = figment::util::nest(key, value).into_dict() {
                merge_into(&mut dict, nested);
            }
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// Deep-merges `from` into `into` (later keys win), so `A__B` and `A__C` both land under `a`.
fn merge_into(into: &mut figment::value::Dict, from: figment::value::Dict) {
    use figment::value::Value;
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Dict(_, existing)), Value::Dict(_, incoming)) => {
                merge_into(existing, incoming)
            }
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Turns figment's error into one line per problem that names the key and its origin.
fn describe(error: figment::Error, origin: &str) -> String {
    use figment::error::Kind;
    let mut lines = Vec::new();
    for e in error {
        let mut path = e.path.join(".");
        let from = match &e.metadata {
            Some(m) if m.name.contains("environment") => {
                let var = format!(
                    "{ENV_PREFIX}{}",
                    path.replace('.', "__").to_ascii_uppercase()
                );
                format!(" (from environment variable {var})")
            }
            _ => format!(" (in {origin})"),
        };
        let what = match &e.kind {
            Kind::UnknownField(name, expected) => {
                path = join_key(&path, name);
                format!("unknown key; expected one of: {}", expected.join(", "))
            }
            Kind::MissingField(name) => {
                path = join_key(&path, name);
                "missing required key".to_string()
            }
            Kind::UnknownVariant(value, expected) => {
                format!(
                    "unknown value {value:?}; expected one of: {}",
                    expected.join(", ")
                )
            }
            other => other.to_string(),
        };
        let key = if path.is_empty() {
            "<top level>".to_string()
        } else {
            path
        };
        lines.push(format!("{key}: {what}{from}"));
    }
    lines.join("\n")
}

fn join_key(parent: &str, name: &str) -> String {
    // Figment sometimes puts the offending key in the path already.
    if parent == name || parent.ends_with(&format!(".{name}")) {
        parent.to_string()
    } else if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

impl fmt::Display for PayloadFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadFormat::Json => f.write_str("json"),
            PayloadFormat::Confluent => f.write_str("confluent"),
            PayloadFormat::SingleObject => f.write_str("single-object"),
            PayloadFormat::Raw => f.write_str("raw"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"

[[topics]]
name = "trades"
format = "json"

[websocket]
listen = "127.0.0.1:0"
queue_size = 16
"#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err(text: &str, pairs: &[(&str, &str)]) -> String {
        match Config::from_toml_and_env(text, &env(pairs), "test.toml") {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn good_file_loads_with_defaults() -> anyhow::Result<()> {
        let c = Config::from_toml_and_env(GOOD, &[], "test.toml")?;
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(c.topics[0].format, PayloadFormat::Json);
        assert_eq!(c.websocket.queue_size, 16);
        assert_eq!(c.websocket.max_subscriptions, 64);
        assert_eq!(c.websocket.slow_client, SlowClientPolicy::Drop);
        assert_eq!(c.auth.mode, AuthMode::None);
        Ok(())
    }

    #[test]
    fn typo_in_key_is_named() {
        let text = GOOD.replace("queue_size", "queue_sise");
        let msg = err(&text, &[]);
        assert!(
            msg.starts_with("websocket.queue_sise: unknown key"),
            "{msg}"
        );
        assert!(msg.contains("test.toml"), "{msg}");
    }

    #[test]
    fn bad_value_is_named() {
        let msg = err(&GOOD.replace("16", "\"lots\""), &[]);
        assert!(msg.starts_with("websocket.queue_size:"), "{msg}");
        let msg = err(&GOOD.replace("\"json\"", "\"xml\""), &[]);
        assert!(
            msg.contains("topics.0.format") || msg.contains("format"),
            "{msg}"
        );
        assert!(msg.contains("xml"), "{msg}");
        let msg = err(&GOOD.replace("16", "0"), &[]);
        assert_eq!(msg, "websocket.queue_size: must be at least 1");
    }

    #[test]
    fn plain_http_jwks_is_refused_unless_allowed() -> anyhow::Result<()> {
        let jwt = |url: &str| {
            vec![
                ("LAKEWIRE_AUTH__MODE".to_string(), "jwt".to_string()),
                ("LAKEWIRE_AUTH__JWKS_URL".to_string(), url.to_string()),
            ]
        };
        let http = jwt("http://idp.example/jwks.json");
        let msg = match Config::from_toml_and_env(GOOD, &http, "test.toml") {
            Ok(c) => panic!("an http:// JWKS URL was accepted: {c:?}"),
            Err(e) => e.to_string(),
        };
        assert!(msg.starts_with("auth.jwks_url: is an http:// URL"), "{msg}");
        assert!(msg.contains("auth.jwks_allow_http"), "{msg}");
        let mut allowed = http.clone();
        allowed.push(("LAKEWIRE_AUTH__JWKS_ALLOW_HTTP".into(), "true".into()));
        assert!(
            Config::from_toml_and_env(GOOD, &allowed, "test.toml")?
                .auth
                .jwks_allow_http
        );
        Config::from_toml_and_env(GOOD, &jwt("https://idp.example/jwks.json"), "test.toml")?;
        let msg = match Config::from_toml_and_env(GOOD, &jwt("ftp://idp/jwks"), "test.toml") {
            Ok(c) => panic!("an ftp:// JWKS URL was accepted: {c:?}"),
            Err(e) => e.to_string(),
        };
        assert_eq!(msg, "auth.jwks_url: must be an https:// URL");
        Ok(())
    }

    #[test]
    fn missing_key_is_named() {
        let msg = err("[kafka]\n", &[]);
        assert!(msg.contains("kafka.brokers: missing required key"), "{msg}");
    }

    #[test]
    fn duplicate_topics_and_bad_names_are_refused() {
        let text = format!("{GOOD}\n[[topics]]\nname = \"trades\"\nformat = \"json\"\n");
        assert!(err(&text, &[]).contains("listed twice"));
        let msg = err(&GOOD.replace("\"trades\"", "\"tr ades\""), &[]);
        assert!(msg.starts_with("topics[0].name:"), "{msg}");
    }

    #[test]
    fn env_overrides_file() -> anyhow::Result<()> {
        let c = Config::from_toml_and_env(
            GOOD,
            &env(&[
                ("LAKEWIRE_KAFKA__BROKERS", "kafka-1:9092,kafka-2:9092"),
                ("LAKEWIRE_WEBSOCKET__QUEUE_SIZE", "99"),
                ("LAKEWIRE_WEBSOCKET__SLOW_CLIENT", "disconnect"),
                ("UNRELATED", "x"),
            ]),
            "test.toml",
        )?;
        assert_eq!(c.kafka.brokers, "kafka-1:9092,kafka-2:9092");
        assert_eq!(c.websocket.queue_size, 99);
        assert_eq!(c.websocket.slow_client, SlowClientPolicy::Disconnect);
        Ok(())
    }

    #[test]
    fn bad_env_override_names_the_variable() {
        let msg = err(GOOD, &[("LAKEWIRE_WEBSOCKET__QUEUE_SIZE", "many")]);
        assert!(msg.contains("LAKEWIRE_WEBSOCKET__QUEUE_SIZE"), "{msg}");
        let msg = err(GOOD, &[("LAKEWIRE_WEBSOCKET__QUEUE_SISE", "5")]);
        assert!(
            msg.starts_with("websocket.queue_sise: unknown key"),
            "{msg}"
        );
    }

    #[test]
    fn in_code_config_takes_env() -> anyhow::Result<()> {
        let base = Config::from_toml_and_env(GOOD, &[], "test.toml")?;
        let c = base.with_env(&env(&[("LAKEWIRE_WEBSOCKET__LISTEN", "127.0.0.1:9999")]))?;
        assert_eq!(c.websocket.listen.port(), 9999);
        Ok(())
    }

    const SINK: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"

[[topics]]
name = "or.ders-v1"
format = "raw"
schema = "../schemas/order.avsc"

[[topics]]
name = "trades"
format = "json"

[sink]
root = "/tmp/lake"

[[sink.tables]]
topic = "or.ders-v1"
"#;

    #[test]
    fn sink_section_loads_with_defaults() -> anyhow::Result<()> {
        let c = Config::from_toml_and_env(SINK, &[], "test.toml")?;
        let s = c.sink.as_ref().ok_or_else(|| anyhow::anyhow!("no sink"))?;
        assert_eq!(s.group_id, "lakewire-sink");
        assert_eq!(s.compression, SinkCompression::Zstd);
        assert_eq!(
            (s.roll_rows, s.roll_bytes, s.roll_interval_ms),
            (1_000_000, 128 << 20, 0)
        );
        assert_eq!(s.database, "default");
        assert_eq!(s.tables[0].table_name(), "or_ders_v1");
        assert_eq!(s.tables[0].partition_by, ["dt", "hr"]);
        let c = Config::from_toml_and_env(
            SINK,
            &env(&[("LAKEWIRE_SINK__COMPRESSION", "snappy")]),
            "test.toml",
        )?;
        assert_eq!(c.sink.map(|s| s.compression), Some(SinkCompression::Snappy));
        Ok(())
    }

    #[test]
    fn sink_topics_starting_with_underscore_or_dot_are_refused() {
        for name in ["_orders", ".orders"] {
            let e = err(&SINK.replace("or.ders-v1", name), &[]);
            assert!(
                e.starts_with("sink.tables[0].topic:") && e.contains("readers skip files"),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn bad_sink_settings_name_the_key() {
        let with = |extra: &str| SINK.replace("root = \"/tmp/lake\"", extra);
        for (text, key) in [
            (with("root = \"\""), "sink.root"),
            (with("root = \"/tmp/l\"\nroll_rows = 0"), "sink.roll_rows"),
            (
                with("root = \"/tmp/l\"\ncompression = \"lz4\""),
                "compression",
            ),
            (
                with("root = \"/tmp/l\"\nmetastore_uri = \"http://hms\""),
                "sink.metastore_uri",
            ),
            (
                with("root = \"/tmp/l\"\n[sink.s3]\nregion = \"x\""),
                "sink.s3",
            ),
            (
                SINK.replace("topic = \"or.ders-v1\"", "topic = \"nope\""),
                "sink.tables[0].topic",
            ),
            (
                SINK.replace("topic = \"or.ders-v1\"", "topic = \"trades\""),
                "sink.tables[0].topic",
            ),
            (
                format!("{SINK}partition_by = [\"dt\", \"a/b\"]\n"),
                "sink.tables[0].partition_by",
            ),
            (format!("{SINK}table = \"_x\"\n"), "sink.tables[0].table"),
        ] {
            let e = err(&text, &[]);
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
