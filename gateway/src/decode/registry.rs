//! The schema registry client of the decode stage. Input: the schema ids in Confluent-framed
//! records; output: their writer schemas, typed ([`RegistrySchema`]: Avro, Protobuf or JSON
//! Schema, from the answer's `schemaType`, absent meaning Avro), fetched once from a
//! Confluent-compatible registry (`GET /schemas/ids/{id}`) and cached for the life of the process
//! (ids are immutable). A Protobuf or JSON schema's references (`references: [{name, subject,
//! version}]`) are fetched with it, recursively (`GET /subjects/{subject}/versions/{version}`),
//! and given to it by name (a Protobuf import, a JSON Schema `$ref`).
//!
//! Concurrent misses on one id make one request. When the registry cannot be reached (or
//! answers 5xx, 429, 401/403), the fetch is retried with backoff until it succeeds: the topic's
//! reader waits, counted in `lakewire_schema_registry_waiting` and logged, and no record is
//! skipped for it. Only an answer that the id does not exist (404) or a schema that does not
//! parse makes the records that use it undecodable; such answers are re-checked after a minute. A
//! reference is fetched the same way: its outage is waited through, and a 404 for it makes the
//! whole id "missing".

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::json_schema::JsonSchema;
use super::protobuf::ProtoSchema;
use super::schema::ParsedSchema;
use crate::config::SchemaRegistryConfig;
use crate::log_limit::LogLimiter;
use crate::metrics::Metrics;

/// How long an id the registry did not know stays known as missing before it is asked again.
const MISSING_TTL: Duration = Duration::from_secs(60);

/// The registry client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `ca_file` could not be read or holds no certificate.
    #[error("schema_registry.ca_file: {0}")]
    CaFile(String),
    /// The HTTP client could not be built.
    #[error("schema_registry: cannot build the HTTP client: {0}")]
    Client(String),
}

/// At most this many references (all levels together) per schema: a registry's answers cannot
/// make one lookup fetch without end.
const MAX_REFERENCES: usize = 256;

/// A registry schema, by its type (`schemaType`).
#[derive(Debug, Clone)]
pub enum RegistrySchema {
    /// `AVRO` (or no `schemaType`).
    Avro(Arc<ParsedSchema>),
    /// `PROTOBUF`: the .proto file compiled with its references.
    Protobuf(Arc<ProtoSchema>),
    /// `JSON`: a JSON Schema.
    Json(Arc<JsonSchema>),
}

impl RegistrySchema {
    /// The registry's name of the type: `AVRO`, `PROTOBUF` or `JSON`.
    pub const fn type_name(&self) -> &'static str {
        match self {
            RegistrySchema::Avro(_) => "AVRO",
            RegistrySchema::Protobuf(_) => "PROTOBUF",
            RegistrySchema::Json(_) => "JSON",
        }
    }

    /// The schema `text` of type `schema_type` (absent: Avro) with its resolved references (name
    /// and text, the direct ones and theirs); why it cannot be used otherwise.
    fn build(
        id: u32,
        schema_type: Option<&str>,
        text: &str,
        references: &[(String, String)],
    ) -> Result<Self, String> {
        match schema_type.unwrap_or("AVRO") {
            "AVRO" if !references.is_empty() => Err(format!(
                "schema {id} is an Avro schema with references, which Lakewire does not resolve"
            )),
            "AVRO" => ParsedSchema::parse(text)
                .map(|s| RegistrySchema::Avro(Arc::new(s)))
                .map_err(|e| format!("schema {id}: {e}")),
            "PROTOBUF" => ProtoSchema::compile(id, text, references)
                .map(|s| RegistrySchema::Protobuf(Arc::new(s))),
            "JSON" => {
                JsonSchema::parse(id, text, references).map(|s| RegistrySchema::Json(Arc::new(s)))
            }
            other => Err(format!(
                "schema {id} is of type {other}, which Lakewire does not decode"
            )),
        }
    }
}

impl From<Arc<ParsedSchema>> for RegistrySchema {
    fn from(s: Arc<ParsedSchema>) -> Self {
        RegistrySchema::Avro(s)
    }
}

/// What the registry said about one id.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The schema.
    Found(RegistrySchema),
    /// The registry does not know the id (404).
    Missing { at: Instant },
    /// The registry's schema for the id cannot be used (does not parse or compile, or is of a
    /// type Lakewire does not decode).
    Unusable { why: String, at: Instant },
}

impl Lookup {
    fn expired(&self) -> bool {
        match self {
            Lookup::Found(_) => false,
            Lookup::Missing { at } | Lookup::Unusable { at, .. } => at.elapsed() > MISSING_TTL,
        }
    }
}

/// A cached, single-flight client of a Confluent-compatible schema registry.
pub struct Registry {
    client: reqwest::Client,
    base: String,
    auth: Option<(String, String)>,
    max_backoff: Duration,
    cache: RwLock<HashMap<u32, Arc<OnceCell<Lookup>>>>,
    metrics: Metrics,
    limiter: LogLimiter,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("url", &self.base).finish()
    }
}

/// The registry's answer to `GET /schemas/ids/{id}` and to
/// `GET /subjects/{subject}/versions/{version}` (which has more fields, not needed here).
#[derive(serde::Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
}

/// One of a schema's references: the schema registered as `version` of `subject`, known to the
/// referring schema as `name` (a Protobuf import path, a JSON Schema `$ref`).
#[derive(serde::Deserialize)]
struct Reference {
    name: String,
    subject: String,
    /// A number (Confluent), or as text.
    version: serde_json::Value,
}

/// One failed attempt.
enum Attempt {
    /// Try again later.
    Retry(String),
    /// A final answer.
    Done(Lookup),
}

/// One registry request's outcome.
enum Got<T> {
    Found(T),
    /// 404.
    NotFound,
    /// An outage, a 5xx, 429, 401/403, or a garbled answer: try again later.
    Retry(String),
}

impl Registry {
    /// A client for `config` (no request is made yet).
    pub fn new(config: &SchemaRegistryConfig, metrics: Metrics) -> Result<Self, RegistryError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .user_agent(concat!("lakewire/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            for cert in read_ca_file(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| RegistryError::Client(e.to_string()))?;
        let auth = config
            .username
            .clone()
            .map(|u| (u, config.password.clone().unwrap_or_default()));
        Ok(Self {
            client,
            base: config.url.trim_end_matches('/').to_string(),
            auth,
            max_backoff: Duration::from_millis(config.max_backoff_ms),
            cache: RwLock::new(HashMap::new()),
            metrics,
            limiter: LogLimiter::default(),
        })
    }

    /// Caches `schema` under `id` as if the registry had answered, so that records with that id
    /// decode without a request. For the fuzz targets, which run without a registry.
    #[doc(hidden)]
    pub fn preload(&self, id: u32, schema: impl Into<RegistrySchema>) {
        let mut cache = match self.cache.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let cell = OnceCell::new_with(Some(Lookup::Found(schema.into())));
        cache.insert(id, Arc::new(cell));
    }

    /// Forgets a cached "not found" or "unusable" answer for `id`, so that the next
    /// [`Registry::lookup`] asks the registry again (the sink, retrying a record whose schema
    /// may have been registered since). A schema found stays.
    pub fn forget(&self, id: u32) {
        let mut cache = match self.cache.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if cache
            .get(&id)
            .and_then(|c| c.get())
            .is_some_and(|l| !matches!(l, Lookup::Found(_)))
        {
            cache.remove(&id);
        }
    }

    /// The cached answer for `id`, if there is a current one. Never waits.
    pub fn cached(&self, id: u32) -> Option<Lookup> {
        let cache = self.cache.read().ok()?;
        cache.get(&id)?.get().filter(|l| !l.expired()).cloned()
    }

    /// The answer for `id`: from the cache, or fetched (one request however many callers ask at
    /// once), waiting through registry outages.
    pub async fn lookup(&self, id: u32) -> Lookup {
        let cell = {
            let mut cache = match self.cache.write() {
                Ok(c) => c,
                Err(poisoned) => poisoned.into_inner(),
            };
            let stale = cache
                .get(&id)
                .and_then(|c| c.get())
                .is_some_and(Lookup::expired);
            if stale {
                cache.remove(&id);
            }
            cache.entry(id).or_default().clone()
        };
        cell.get_or_init(|| self.fetch(id)).await.clone()
    }

    /// Asks the registry until it gives an answer.
    async fn fetch(&self, id: u32) -> Lookup {
        let mut backoff = Duration::from_millis(100);
        let mut waiting = false;
        let result = loop {
            match self.attempt(id).await {
                Attempt::Done(lookup) => break lookup,
                Attempt::Retry(why) => {
                    self.metrics.schema_registry_failures.inc();
                    if !waiting {
                        waiting = true;
                        self.metrics.schema_registry_waiting.inc();
                    }
                    if let Some(held) = self.limiter.allow() {
                        tracing::warn!(
                            schema_id = id,
                            retry_in = ?backoff,
                            held_back = held,
                            "schema registry unavailable; records wait for it: {why}"
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        };
        if waiting {
            self.metrics.schema_registry_waiting.dec();
            tracing::info!(schema_id = id, "schema registry answered again");
        }
        result
    }

    async fn attempt(&self, id: u32) -> Attempt {
        let answer: SchemaAnswer = match self.get(&format!("/schemas/ids/{id}")).await {
            Got::Found(a) => a,
            Got::NotFound => {
                self.metrics.schema_registry_fetch("not_found");
                return Attempt::Done(Lookup::Missing { at: Instant::now() });
            }
            Got::Retry(why) => return Attempt::Retry(why),
        };
        let unusable = |why: String| {
            self.metrics.schema_registry_fetch("unusable");
            Attempt::Done(Lookup::Unusable {
                why,
                at: Instant::now(),
            })
        };
        let avro = answer.schema_type.as_deref().is_none_or(|t| t == "AVRO");
        let references = if avro {
            // Not fetched: refused by `RegistrySchema::build` either way.
            answer
                .references
                .iter()
                .map(|r| (r.name.clone(), String::new()))
                .collect()
        } else {
            match self.references(answer.references).await {
                Got::Found(r) => r,
                Got::NotFound => {
                    self.metrics.schema_registry_fetch("not_found");
                    return Attempt::Done(Lookup::Missing { at: Instant::now() });
                }
                Got::Retry(why) => return Attempt::Retry(why),
            }
        };
        match RegistrySchema::build(
            id,
            answer.schema_type.as_deref(),
            &answer.schema,
            &references,
        ) {
            Ok(s) => {
                self.metrics.schema_registry_fetch("ok");
                Attempt::Done(Lookup::Found(s))
            }
            Err(why) => unusable(why),
        }
    }

    /// The texts of `direct` references and of theirs, by name (each name once, the first
    /// found), fetched breadth first; at most [`MAX_REFERENCES`]. `NotFound` when one is not in
    /// the registry (logged).
    async fn references(&self, direct: Vec<Reference>) -> Got<Vec<(String, String)>> {
        let mut queue = std::collections::VecDeque::from(direct);
        let mut out: Vec<(String, String)> = Vec::new();
        while let Some(r) = queue.pop_front() {
            if out.iter().any(|(name, _)| *name == r.name) {
                continue;
            }
            if out.len() >= MAX_REFERENCES {
                return Got::Retry(format!(
                    "more than {MAX_REFERENCES} schema references; not resolved"
                ));
            }
            let version = match &r.version {
                serde_json::Value::String(v) => v.clone(),
                v => v.to_string(),
            };
            let path = format!(
                "/subjects/{}/versions/{}",
                path_segment(&r.subject),
                path_segment(&version)
            );
            let answer: SchemaAnswer = match self.get(&path).await {
                Got::Found(a) => a,
                Got::NotFound => {
                    tracing::warn!(
                        reference = %r.name,
                        subject = %r.subject,
                        version = %version,
                        "a schema reference is not in the schema registry"
                    );
                    return Got::NotFound;
                }
                Got::Retry(why) => return Got::Retry(why),
            };
            queue.extend(answer.references);
            out.push((r.name, answer.schema));
        }
        Got::Found(out)
    }

    /// `GET {base}{path}` as JSON, once.
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Got<T> {
        let url = format!("{}{path}", self.base);
        let mut req = self.client.get(&url).header(
            "Accept",
            "application/vnd.schemaregistry.v1+json, application/json",
        );
        if let Some((user, pass)) = &self.auth {
            req = req.basic_auth(user, Some(pass));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Got::Retry(format!("GET {url}: {e}")),
        };
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Got::NotFound;
        }
        if !status.is_success() {
            return Got::Retry(format!("GET {url}: HTTP {status}"));
        }
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Got::Retry(format!("GET {url}: reading the answer: {e}")),
        };
        // Not the registry's word on the id but a garbled answer (a proxy's error page, a cut
        // body): tried again like an outage, never taken as "this id has no usable schema".
        match serde_json::from_slice(&body) {
            Ok(a) => Got::Found(a),
            Err(e) => Got::Retry(format!("GET {url}: the answer is not a schema: {e}")),
        }
    }

    /// The type (`AVRO`, `PROTOBUF`, `JSON`, ...) of the latest schema of `subject`, asked once
    /// (no retry): `Ok(None)` when the subject has none, `Err` when the registry does not answer
    /// usably. For the sink's start-up check.
    pub async fn latest_type(&self, subject: &str) -> Result<Option<String>, String> {
        let path = format!("/subjects/{}/versions/latest", path_segment(subject));
        match self.get::<SchemaAnswer>(&path).await {
            Got::Found(a) => Ok(Some(a.schema_type.unwrap_or_else(|| "AVRO".into()))),
            Got::NotFound => Ok(None),
            Got::Retry(why) => Err(why),
        }
    }
}

/// `s` as one URL path segment: every byte but the unreserved ones percent-encoded.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The certificates of a PEM file.
fn read_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, RegistryError> {
    let pem = std::fs::read(path)
        .map_err(|e| RegistryError::CaFile(format!("cannot read {}: {e}", path.display())))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| RegistryError::CaFile(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(RegistryError::CaFile(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}
