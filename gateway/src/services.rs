//! Services: the state every connection and HTTP handler shares (configuration, the topics'
//! hubs, the Kafka handle, the decoders, metrics, the authenticator) and the connection guards
//! that hold each connection to `websocket.max_connections` and `max_connections_per_ip`.
//! Input: a validated [`Config`]; output: [`Services`], built once by [`crate::app`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::registry::Registry;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::decode::{DecodeContext, DecodeSetupError, Decoder};
use crate::hub::{Hub, ShapeLimits};
use crate::metrics::{self, Metrics};
use crate::source::{Followers, Kafka, SourceError};

/// A component named by the configuration could not be built (a schema, key or CA file, the
/// Kafka or registry client).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The authentication settings cannot be used.
    #[error("auth: {0}")]
    Auth(String),
    /// The Kafka client could not be created.
    #[error(transparent)]
    Kafka(#[from] SourceError),
    /// A topic's decoder could not be set up.
    #[error(transparent)]
    Decode(#[from] DecodeSetupError),
}

/// Counts open connections, in all and per IP address, against the configured limits.
#[derive(Debug, Default)]
pub struct ConnLimits {
    open: std::sync::Mutex<(usize, HashMap<std::net::IpAddr, usize>)>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnGuard {
    services: Arc<Services>,
    ip: Option<std::net::IpAddr>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = self
            .services
            .limits
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = open.1.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.1.remove(&ip);
                }
            }
        }
    }
}

/// Why a connection was not admitted: HTTP status and the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub reason: &'static str,
}

impl Services {
    /// Admits a connection from `ip` if the limits allow it.
    pub fn admit(self: &Arc<Self>, ip: Option<std::net::IpAddr>) -> Result<ConnGuard, Refused> {
        let ws = &self.config.websocket;
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        let refused = if open.0 >= ws.max_connections {
            Some(Refused {
                status: 503,
                reason: "max_connections",
            })
        } else if ip
            .is_some_and(|ip| open.1.get(&ip).copied().unwrap_or(0) >= ws.max_connections_per_ip)
        {
            Some(Refused {
                status: 429,
                reason: "max_connections_per_ip",
            })
        } else {
            None
        };
        if let Some(r) = refused {
            self.metrics.refused(r.reason);
            return Err(r);
        }
        open.0 += 1;
        if let Some(ip) = ip {
            *open.1.entry(ip).or_insert(0) += 1;
        }
        Ok(ConnGuard {
            services: self.clone(),
            ip,
        })
    }
}

/// What every session and HTTP handler shares.
pub struct Services {
    pub config: Config,
    pub hub: Hub,
    pub kafka: Kafka,
    /// The replay subscriptions a partition added to their topic is handed to.
    pub followers: Followers,
    pub decoders: HashMap<String, Arc<Decoder>>,
    pub metrics: Metrics,
    /// The Prometheus registry `/metrics` renders.
    pub prometheus: Registry,
    pub sessions: TaskTracker,
    pub auth: Authenticator,
    /// The JWKS cache to refresh in the background, when one is configured.
    pub jwks: Option<Arc<crate::auth::Jwks>>,
    limits: ConnLimits,
    /// Replay readers running: in all, and per connection.
    replays: std::sync::Mutex<(usize, HashMap<u64, usize>)>,
    conn_ids: AtomicU64,
}

/// A running replay reader's place under `websocket.max_replays` and
/// `max_replays_per_connection`; dropping it (when the reader ends) frees the place.
pub struct ReplaySlot {
    services: Arc<Services>,
    conn: u64,
}

impl Drop for ReplaySlot {
    fn drop(&mut self) {
        let mut r = self
            .services
            .replays
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        r.0 = r.0.saturating_sub(1);
        if let Some(n) = r.1.get_mut(&self.conn) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                r.1.remove(&self.conn);
            }
        }
        self.services.metrics.ws_replays.dec();
    }
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

impl Services {
    /// Builds the shared state for `config` (no I/O yet).
    pub fn new(config: Config) -> Result<Arc<Self>, BuildError> {
        let metrics = Metrics::default();
        let prometheus = metrics::prometheus_registry(&metrics);
        let kafka = Kafka::new(&config.kafka, metrics.clone())?;
        let hub = Hub::new(
            config.topics.iter().map(|t| t.name.as_str()),
            &metrics,
            ShapeLimits {
                per_topic: config.websocket.max_filters_per_topic,
                per_connection: config.websocket.max_filters_per_connection,
            },
        );
        let cx = DecodeContext::new(&config, &metrics)?;
        let decoders = Decoder::for_topics(&config, &cx)?;
        let (auth, jwks) = Authenticator::new(&config.auth, &metrics).map_err(BuildError::Auth)?;
        Ok(Arc::new(Self {
            auth,
            jwks,
            limits: ConnLimits::default(),
            replays: std::sync::Mutex::new((0, HashMap::new())),
            config,
            hub,
            kafka,
            followers: Followers::default(),
            decoders,
            metrics,
            prometheus,
            sessions: TaskTracker::new(),
            conn_ids: AtomicU64::new(1),
        }))
    }

    /// A place for one more replay reader of connection `conn`, if the limits allow it; else
    /// why not (the message names the limit).
    pub fn admit_replay(self: &Arc<Self>, conn: u64) -> Result<ReplaySlot, String> {
        let ws = &self.config.websocket;
        let mut r = self.replays.lock().unwrap_or_else(|p| p.into_inner());
        let mine = r.1.get(&conn).copied().unwrap_or(0);
        if mine >= ws.max_replays_per_connection {
            return Err(format!(
                "this connection already has {mine} subscriptions reading the past, the limit (websocket.max_replays_per_connection); subscribe from \"latest\", or once one has caught up"
            ));
        }
        if r.0 >= ws.max_replays {
            return Err(format!(
                "the gateway already runs {} replays, its limit (websocket.max_replays); try again later or subscribe from \"latest\"",
                r.0
            ));
        }
        r.0 += 1;
        *r.1.entry(conn).or_insert(0) += 1;
        self.metrics.ws_replays.inc();
        Ok(ReplaySlot {
            services: self.clone(),
            conn,
        })
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(per_connection: usize, all: usize) -> Arc<Services> {
        let toml = format!(
            "[kafka]\nbrokers = \"127.0.0.1:1\"\n\n[websocket]\nmax_replays_per_connection = {per_connection}\nmax_replays = {all}\n"
        );
        let config =
            Config::from_toml_and_env(&toml, &[], "test").unwrap_or_else(|e| panic!("{e}"));
        Services::new(config).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn replays_are_capped_per_connection_and_in_all_and_freed_on_drop() {
        let s = services(2, 3);
        let a1 = s.admit_replay(1).unwrap_or_else(|e| panic!("{e}"));
        let _a2 = s.admit_replay(1).unwrap_or_else(|e| panic!("{e}"));
        let e = s.admit_replay(1).err().unwrap_or_default();
        assert!(e.contains("max_replays_per_connection"), "{e}");
        let _b1 = s.admit_replay(2).unwrap_or_else(|e| panic!("{e}"));
        let e = s.admit_replay(3).err().unwrap_or_default();
        assert!(e.contains("websocket.max_replays)"), "{e}");
        assert_eq!(s.metrics.ws_replays.get(), 3);
        drop(a1);
        assert_eq!(s.metrics.ws_replays.get(), 2);
        // The freed place serves any connection.
        let _c1 = s.admit_replay(3).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.admit_replay(1).is_err(), "over the total again");
    }
}
