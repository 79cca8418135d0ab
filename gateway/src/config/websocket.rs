//! `[websocket]`: the HTTP / WebSocket listener and the per-client limits.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::sources::Invalid;

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
    /// Subscriptions of one connection that may read the past at once (each has a Kafka
    /// reader of its own until it catches up); one more is refused (`too_many_subscriptions`).
    #[serde(default = "default_max_replays_per_connection")]
    pub max_replays_per_connection: usize,
    /// Replay readers the whole gateway runs at once (each holds up to 2 MiB of prefetched
    /// records and its own broker connections).
    #[serde(default = "default_max_replays")]
    pub max_replays: usize,
    /// How long one write to a client may take; a client that stops reading at the TCP level
    /// (its receive buffer full) is disconnected after this. Long enough for a client that
    /// only pauses (it gets `lagged`, or 4008 under `disconnect`, when it reads again).
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// Most distinct filters (filter and `fields` together) one topic serves: every record of
    /// the topic is checked against each. A subscription with a new one past this is refused
    /// (`too_many_subscriptions`); one that uses a filter in use is not.
    #[serde(default = "default_max_filters_per_topic")]
    pub max_filters_per_topic: usize,
    /// Most distinct filters (filter and `fields` together) one connection's subscriptions
    /// hold on one topic, so one client cannot fill `max_filters_per_topic`. A subscription
    /// with one more is refused (`too_many_subscriptions`); one that reuses a filter the
    /// connection already has on the topic is not.
    #[serde(default = "default_max_filters_per_connection")]
    pub max_filters_per_connection: usize,
    /// Most paths in a subscription's `fields`.
    #[serde(default = "default_max_fields")]
    pub max_fields: usize,
    /// On shutdown, how long open sessions get to receive their close frame (1001) before the
    /// process exits anyway.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// How long a client may take to send a request's headers: from the moment its connection
    /// is accepted (TLS handshake included), and on a kept-alive HTTP/1.1 connection from the
    /// end of the previous response. A slower client is disconnected (slowloris).
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// An HTTP connection that carries no byte either way for this long is closed (requests in
    /// flight finish first). Upgraded WebSocket connections have `idle_timeout_ms` instead.
    #[serde(default = "default_http_idle_timeout_ms")]
    pub http_idle_timeout_ms: u64,
    /// Open HTTP connections (accepted and not yet upgraded to a WebSocket) the listener takes;
    /// one more is closed at once (a plain listener first answers 503).
    #[serde(default = "default_max_http_connections")]
    pub max_http_connections: usize,
    /// The share of `max_http_connections` one client IP address may hold; one more from it is
    /// refused at accept (a plain listener first answers 429). Default: a quarter of
    /// `max_http_connections`, at least 1. Behind a reverse proxy every client has the proxy's
    /// address: set it to `max_http_connections` there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_http_connections_per_ip: Option<usize>,
    /// Agree to WebSocket per-message compression (RFC 7692 `permessage-deflate`) when a client
    /// offers it: `records` frames then go compressed, each shape's records compressed once for
    /// all its clients.
    #[serde(default = "default_permessage_deflate")]
    pub permessage_deflate: bool,
    /// A second, plain-HTTP listener serving only `/metrics`, `/readyz` and `/healthz` (for
    /// Prometheus and probes on an internal address). Absent: none.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Whether `listen` serves `/metrics` too. Set it to false, with `admin_listen`, to keep
    /// metrics off the public port.
    #[serde(default = "default_public_metrics")]
    pub public_metrics: bool,
}

const fn default_header_read_timeout_ms() -> u64 {
    10_000
}
const fn default_http_idle_timeout_ms() -> u64 {
    60_000
}
const fn default_max_http_connections() -> usize {
    10_000
}
const fn default_public_metrics() -> bool {
    true
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
const fn default_max_replays_per_connection() -> usize {
    4
}
const fn default_max_replays() -> usize {
    128
}
const fn default_write_timeout_ms() -> u64 {
    60_000
}
const fn default_max_filters_per_topic() -> usize {
    10_000
}
const fn default_max_filters_per_connection() -> usize {
    16
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
const fn default_permessage_deflate() -> bool {
    true
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
            max_replays_per_connection: default_max_replays_per_connection(),
            max_replays: default_max_replays(),
            write_timeout_ms: default_write_timeout_ms(),
            max_filters_per_topic: default_max_filters_per_topic(),
            max_filters_per_connection: default_max_filters_per_connection(),
            max_fields: default_max_fields(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
            http_idle_timeout_ms: default_http_idle_timeout_ms(),
            max_http_connections: default_max_http_connections(),
            max_http_connections_per_ip: None,
            permessage_deflate: default_permessage_deflate(),
            admin_listen: None,
            public_metrics: default_public_metrics(),
        }
    }
}

impl WebSocketConfig {
    /// `max_http_connections_per_ip`, or its default: a quarter of `max_http_connections`, at
    /// least 1.
    pub fn http_connections_per_ip(&self) -> usize {
        self.max_http_connections_per_ip
            .unwrap_or((self.max_http_connections / 4).max(1))
    }

    /// Checks the section (the TLS files are read when the listener is built).
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let bad = |key: &str, why: &str| Err((format!("websocket.{key}"), why.to_string()));
        if self.queue_size == 0 {
            return bad("queue_size", "must be at least 1");
        }
        if self.queue_bytes < 1024 {
            return bad("queue_bytes", "must be at least 1024");
        }
        if self.ping_interval_ms == 0 {
            return bad("ping_interval_ms", "must be greater than 0");
        }
        if self.idle_timeout_ms <= self.ping_interval_ms {
            return bad(
                "idle_timeout_ms",
                "must be greater than websocket.ping_interval_ms (pings keep live clients talking)",
            );
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return bad(
                "tls_cert_file / tls_key_file",
                "set both (certificate chain and its key) or neither",
            );
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err((
                "websocket.max_connections / max_connections_per_ip".into(),
                "must be at least 1".into(),
            ));
        }
        if self.max_messages_per_second == 0 {
            return bad("max_messages_per_second", "must be at least 1");
        }
        if self.max_filter_bytes == 0 || self.max_filter_nodes == 0 || self.max_fields == 0 {
            return Err((
                "websocket.max_filter_bytes / max_filter_nodes / max_fields".into(),
                "must be at least 1".into(),
            ));
        }
        if self.max_replays_per_connection == 0 || self.max_replays == 0 {
            return Err((
                "websocket.max_replays_per_connection / max_replays".into(),
                "must be at least 1".into(),
            ));
        }
        if self.write_timeout_ms == 0 {
            return bad("write_timeout_ms", "must be greater than 0");
        }
        if self.max_filters_per_topic == 0 {
            return bad("max_filters_per_topic", "must be at least 1");
        }
        if self.max_filters_per_connection == 0 {
            return bad("max_filters_per_connection", "must be at least 1");
        }
        if self.max_subscriptions == 0 {
            return bad("max_subscriptions", "must be at least 1");
        }
        if self.max_frame_bytes < 256 {
            return bad("max_frame_bytes", "must be at least 256");
        }
        if self.max_records_per_frame == 0 {
            return bad("max_records_per_frame", "must be at least 1");
        }
        if self.header_read_timeout_ms == 0 {
            return bad("header_read_timeout_ms", "must be greater than 0");
        }
        if self.http_idle_timeout_ms == 0 {
            return bad("http_idle_timeout_ms", "must be greater than 0");
        }
        if self.max_http_connections == 0 {
            return bad("max_http_connections", "must be at least 1");
        }
        match self.max_http_connections_per_ip {
            Some(0) => return bad("max_http_connections_per_ip", "must be at least 1"),
            Some(n) if n > self.max_http_connections => {
                return bad(
                    "max_http_connections_per_ip",
                    "must not exceed websocket.max_http_connections",
                );
            }
            _ => {}
        }
        if self
            .admin_listen
            .is_some_and(|a| a.port() != 0 && a == self.listen)
        {
            return bad("admin_listen", "must differ from websocket.listen");
        }
        if !self.public_metrics && self.admin_listen.is_none() {
            return bad(
                "public_metrics",
                "false would leave /metrics served nowhere: set websocket.admin_listen too",
            );
        }
        Ok(())
    }
}
