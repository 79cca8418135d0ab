//! The idle-connections scenario (`wsload connections`): N subscribed connections that receive
//! nothing, opened from many loopback source addresses; what each costs the server in memory.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::inflate::Scratch;
use crate::load::{FilterMode, Protocol, Shared, Stats, client, subscribe_request};
use crate::procstat::{self};
use crate::produce::Control;
use crate::scan::Scanner;
/// Loopback source addresses the idle connections are spread over.
const IDLE_SOURCES: usize = 32;

/// What the idle-connections scenario measured.
#[derive(Debug, Clone)]
pub struct IdleOutcome {
    pub protocol: Protocol,
    pub connections: usize,
    /// Seconds to open and subscribe them all.
    pub open_secs: f64,
    /// The server's resident memory before the connections and with them open, KiB.
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// The server's permessage-deflate answer when `--deflate` offered it (every connection
    /// had it accepted, else the scenario failed).
    pub deflate_params: Option<String>,
}

impl IdleOutcome {
    /// Resident memory per connection, KiB.
    pub fn per_connection_kib(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64
            / self.connections.max(1) as f64
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "wsload": "connections",
            "server": self.protocol.name(),
            "connections": self.connections,
            "open_s": (self.open_secs * 10.0).round() / 10.0,
            "rss_before_mib": (self.rss_before_kib as f64 / 102.4).round() / 10.0,
            "rss_after_mib": (self.rss_after_kib as f64 / 102.4).round() / 10.0,
            "rss_per_connection_kib": (self.per_connection_kib() * 10.0).round() / 10.0,
            "deflate": self.deflate_params.is_some(),
            "deflate_params": self.deflate_params,
        })
    }

    pub fn table_row(&self) -> String {
        let server = if self.deflate_params.is_some() {
            format!("{}+z", self.protocol.name())
        } else {
            self.protocol.name().to_string()
        };
        format!(
            "{:>12} {:>11} {:>8.1} {:>12.1} {:>12.1} {:>14.1}",
            server,
            self.connections,
            self.open_secs,
            self.rss_before_kib as f64 / 1024.0,
            self.rss_after_kib as f64 / 1024.0,
            self.per_connection_kib()
        )
    }

    pub fn table_header() -> String {
        format!(
            "{:>12} {:>11} {:>8} {:>12} {:>12} {:>14}",
            "server", "connections", "open s", "RSS0 MiB", "RSS MiB", "KiB/connection"
        )
    }
}

/// Opens `n` subscribed connections that receive nothing (no records are produced), and
/// measures the server's resident memory before and with them (after `settle`). Connections
/// come from 127.0.0.1..=127.0.0.32 in turn, so that 20,000+ of them neither run out of source
/// ports nor pass the gateway's default `max_connections_per_ip` (1,000). Must be called inside
/// a `LocalSet`.
pub async fn idle(
    protocol: Protocol,
    addr: SocketAddr,
    topic: &str,
    n: usize,
    server_pid: u32,
    settle: Duration,
    deflate: bool,
) -> anyhow::Result<IdleOutcome> {
    if let Some(limit) = procstat::open_files_limit()
        && (limit as usize) < n + 64
    {
        bail!("the open-files limit is {limit}, too low for {n} connections: raise it (ulimit -n)");
    }
    let shared = Rc::new(Shared {
        protocol,
        // Idle connections: small buffers, so that the tool's own memory stays small.
        read_chunk: 4096,
        stats: RefCell::new(Stats::new()?),
        control: Arc::new(Control::default()),
        scanner: Scanner::default(),
        connecting: Semaphore::new(64),
        deflate,
        scratch: RefCell::new(Scratch::default()),
    });
    let (_, rss_before_kib) = procstat::rss_kib(server_pid)?;
    let t0 = Instant::now();
    let tasks: Vec<JoinHandle<()>> = (0..n)
        .map(|i| {
            let shared = shared.clone();
            let req = subscribe_request(protocol, topic, i, 0, FilterMode::None);
            let local = std::net::IpAddr::from([127, 0, 0, 1 + (i % IDLE_SOURCES) as u8]);
            tokio::task::spawn_local(async move {
                if let Err(e) = client(addr, Some(local), req, false, shared.clone()).await {
                    let mut st = shared.stats.borrow_mut();
                    st.errors += 1;
                    st.first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    let result = loop {
        {
            let st = shared.stats.borrow();
            if st.subscribed == n {
                break Ok(());
            }
            if st.errors > 0 || st.closed > 0 || Instant::now() > deadline {
                break Err(anyhow::anyhow!(
                    "{} of {n} connections subscribed ({} closed); first error: {}",
                    st.subscribed,
                    st.closed,
                    st.first_error.as_deref().unwrap_or("none (timed out)")
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let open_secs = t0.elapsed().as_secs_f64();
    let outcome = match result {
        Ok(()) => {
            tokio::time::sleep(settle).await;
            let (_, rss_after_kib) = procstat::rss_kib(server_pid)?;
            let st = shared.stats.borrow();
            if st.errors > 0 || st.closed > 0 {
                Err(anyhow::anyhow!(
                    "{} errors, {} connections closed while idle; first error: {}",
                    st.errors,
                    st.closed,
                    st.first_error.as_deref().unwrap_or("-")
                ))
            } else {
                Ok(IdleOutcome {
                    protocol,
                    connections: n,
                    open_secs,
                    rss_before_kib,
                    rss_after_kib,
                    deflate_params: st.deflate_params.clone(),
                })
            }
        }
        Err(e) => Err(e),
    };
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    outcome
}
