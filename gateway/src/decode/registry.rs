//! The schema registry client of the decode stage. Input: the schema ids in Confluent-framed
//! records; output: their writer schemas, fetched once from a Confluent-compatible registry
//! (`GET /schemas/ids/{id}`) and cached for the life of the process (ids are immutable).
//!
//! Concurrent misses on one id make one request. When the registry cannot be reached (or
//! answers 5xx, 429, 401/403), the fetch is retried with backoff until it succeeds: the topic's
//! reader waits, counted in `lakewire_schema_registry_waiting` and logged, and no record is
//! skipped for it. Only an answer that the id does not exist (404) or a schema that does not
//! parse makes the records that use it undecodable; such answers are re-checked after a minute.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

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

/// What the registry said about one id.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The schema.
    Found(Arc<ParsedSchema>),
    /// The registry does not know the id (404).
    Missing { at: Instant },
    /// The registry's schema for the id is not a usable Avro schema.
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

/// The registry's answer to `GET /schemas/ids/{id}`.
#[derive(serde::Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<serde_json::Value>,
}

/// One failed attempt.
enum Attempt {
    /// Try again later.
    Retry(String),
    /// A final answer.
    Done(Lookup),
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
    pub fn preload(&self, id: u32, schema: Arc<ParsedSchema>) {
        let mut cache = match self.cache.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let cell = OnceCell::new_with(Some(Lookup::Found(schema)));
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
        let url = format!("{}/schemas/ids/{id}", self.base);
        let mut req = self.client.get(&url).header(
            "Accept",
            "application/vnd.schemaregistry.v1+json, application/json",
        );
        if let Some((user, pass)) = &self.auth {
            req = req.basic_auth(user, Some(pass));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(format!("GET {url}: {e}")),
        };
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            self.metrics.schema_registry_fetch("not_found");
            return Attempt::Done(Lookup::Missing { at: Instant::now() });
        }
        if !status.is_success() {
            return Attempt::Retry(format!("GET {url}: HTTP {status}"));
        }
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Attempt::Retry(format!("GET {url}: reading the answer: {e}")),
        };
        let unusable = |why: String| {
            self.metrics.schema_registry_fetch("unusable");
            Attempt::Done(Lookup::Unusable {
                why,
                at: Instant::now(),
            })
        };
        // Not the registry's word on the id but a garbled answer (a proxy's error page, a cut
        // body): tried again like an outage, never taken as "this id has no usable schema".
        let answer: SchemaAnswer = match serde_json::from_slice(&body) {
            Ok(a) => a,
            Err(e) => {
                return Attempt::Retry(format!("GET {url}: the answer is not a schema: {e}"));
            }
        };
        if let Some(t) = answer.schema_type.as_deref().filter(|t| *t != "AVRO") {
            return unusable(format!("schema {id} is a {t} schema, not Avro"));
        }
        if !answer.references.is_empty() {
            return unusable(format!(
                "schema {id} uses schema references, which Lakewire does not resolve"
            ));
        }
        match ParsedSchema::parse(&answer.schema) {
            Ok(s) => {
                self.metrics.schema_registry_fetch("ok");
                Attempt::Done(Lookup::Found(Arc::new(s)))
            }
            Err(e) => unusable(format!("schema {id}: {e}")),
        }
    }
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
