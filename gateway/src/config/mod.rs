//! Configuration: one TOML file, every key overridable by `LAKEWIRE_*` environment variables
//! (`LAKEWIRE_KAFKA__BROKERS`), validated before anything starts. Input: a file and an
//! environment; output: a [`Config`] or a [`ConfigError`] naming the offending key.
//!
//! The environment is passed in as a list of pairs (see [`Config::load`]) so that tests never
//! touch the process environment.
//!
//! This module is plain data and the checks that need nothing but the data (ranges, names,
//! keys that go together). It reads no file but the configuration itself: a schema, key or
//! certificate file is read where its component is built (`lakewire check` builds them all,
//! dry; see [`crate::app::check`]). One file per section: `sources.rs` (`[kafka]`,
//! `[[topics]]`, `[schema_registry]`), `websocket.rs`, `auth.rs`, `sink.rs`; `env.rs` reads the
//! `LAKEWIRE_*` overrides.

mod auth;
mod env;
mod sink;
mod sources;
mod websocket;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format as _, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use self::auth::{AuthConfig, AuthMode};
use self::env::{describe, env_provider};
pub use self::sink::{SinkCompression, SinkConfig, SinkS3Config, SinkTableConfig};
pub use self::sources::{KafkaConfig, PayloadFormat, SchemaRegistryConfig, TopicConfig};
pub use self::websocket::{SlowClientPolicy, WebSocketConfig};

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

fn default_schemas_dir() -> PathBuf {
    PathBuf::from("schemas")
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

    /// Checks what types alone cannot: ranges, duplicates, empty values, keys that go together.
    /// Reads no files (see the module header).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |(key, why): (String, String)| ConfigError::Invalid(format!("{key}: {why}"));
        self.kafka.validate().map_err(invalid)?;
        let mut seen = HashSet::new();
        for (i, topic) in self.topics.iter().enumerate() {
            let key = format!("topics[{i}].name");
            if let Err(why) = check_topic_name(&topic.name) {
                return Err(invalid((key, why)));
            }
            if !seen.insert(topic.name.as_str()) {
                return Err(invalid((
                    key,
                    format!("topic {:?} is listed twice", topic.name),
                )));
            }
            topic
                .validate(i, self.schema_registry.is_some())
                .map_err(invalid)?;
        }
        if let Some(r) = &self.schema_registry {
            r.validate().map_err(invalid)?;
        }
        self.websocket.validate().map_err(invalid)?;
        self.auth.validate().map_err(invalid)?;
        if let Some(sink) = &self.sink {
            self.validate_sink(sink)?;
        }
        Ok(())
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

#[cfg(test)]
mod tests;
