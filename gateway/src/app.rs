//! App: the one place that wires the stages together and creates their channels. Input: a
//! validated [`Config`]; output: a running gateway (sources, hub, HTTP/WebSocket server) and a
//! handle to stop it.
//!
//! Shutdown is one cancellation tree: the root token stops the HTTP listener (no new
//! connections), the sources (no more consuming) and the sessions (close 1001), which get
//! `websocket.shutdown_grace_ms` to finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::listener::{self, HttpLimits};
use crate::services::{BuildError, Services};
use crate::source;

/// The gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The listen address could not be bound (taken, or not an address of this host).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// A component named by the configuration could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The sink could not start.
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    /// `--role sink` without a `[sink]` section.
    #[error("--role sink: the configuration has no [sink] section")]
    NoSink,
}

/// What a `lakewire run` process does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    /// The WebSocket gateway, and the sink when `[sink]` is configured.
    #[default]
    All,
    /// The WebSocket gateway only.
    Gateway,
    /// The sink only; the listener serves `/healthz`, `/readyz` and `/metrics`.
    Sink,
}

/// A started gateway.
pub struct Running {
    /// The address the HTTP server listens on (useful with port 0).
    pub addr: SocketAddr,
    /// The address of the admin listener (`websocket.admin_listen`), when there is one.
    pub admin_addr: Option<SocketAddr>,
    /// Cancel to shut down.
    pub shutdown: CancellationToken,
    pub services: Arc<Services>,
    task: JoinHandle<()>,
}

impl Running {
    /// Waits for the gateway to finish after `shutdown` was cancelled.
    pub async fn wait(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "gateway task failed");
        }
    }

    /// Cancels and waits.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

/// Every component a configuration names, built and not started: see [`build`].
pub struct Built(Arc<Services>);

impl Built {
    /// The configuration it was built from.
    pub fn config(&self) -> &Config {
        &self.0.config
    }
}

/// Builds every component `config` names, dry: reads the schema, key, CA and certificate files,
/// and builds the decoders, the Kafka and registry clients and the authenticator, but connects
/// to nothing and starts nothing. `lakewire check` runs it and drops the result; `lakewire run`
/// runs it (a failure is a configuration error, exit status 64) and starts what it built with
/// [`start_built`], so nothing is built twice.
pub fn build(config: Config) -> Result<Built, AppError> {
    let services = Services::new(config)?;
    let ws = &services.config.websocket;
    if let (Some(cert), Some(key)) = (&ws.tls_cert_file, &ws.tls_key_file) {
        crate::tls::load(cert, key)
            .map_err(|e| AppError::Tls(format!("websocket.tls_cert_file / tls_key_file: {e}")))?;
    }
    Ok(Built(services))
}

/// [`build`], the result dropped: whether `config` can be served.
pub fn check(config: &Config) -> Result<(), AppError> {
    build(config.clone()).map(drop)
}

/// Starts the sources and the HTTP server; returns once the listener is bound.
pub async fn start(config: Config) -> Result<Running, AppError> {
    start_role(config, Role::All).await
}

/// Starts what `role` runs (see [`Role`]); returns once the listener is bound.
pub async fn start_role(config: Config, role: Role) -> Result<Running, AppError> {
    if role == Role::Sink && config.sink.is_none() {
        return Err(AppError::NoSink);
    }
    start_built(Built(Services::new(config)?), role).await
}

/// Starts what `role` runs of what [`build`] built; returns once the listener is bound.
pub async fn start_built(built: Built, role: Role) -> Result<Running, AppError> {
    let Built(services) = built;
    if role == Role::Sink && services.config.sink.is_none() {
        return Err(AppError::NoSink);
    }
    let listen = services.config.websocket.listen;
    let (listener, addr) = bind(listen)?;
    let admin = services
        .config
        .websocket
        .admin_listen
        .map(bind)
        .transpose()?;
    let admin_addr = admin.as_ref().map(|(_, a)| *a);
    let shutdown = CancellationToken::new();
    let sources = TaskTracker::new();
    // The sink lands its open files on shutdown: it gets `sink.shutdown_timeout_ms` for that,
    // not the sessions' grace period.
    let sink_tasks = TaskTracker::new();
    let sink = if role == Role::Gateway {
        None
    } else {
        crate::sink::check_schema_types(&services.config, &services.decoders).await?;
        crate::sink::start(
            &services.config,
            &services.decoders,
            services.metrics.clone(),
            shutdown.child_token(),
            &sink_tasks,
        )?
    };
    let gateway_topics = if role == Role::Sink {
        Vec::new()
    } else {
        services.hub.topics().cloned().collect()
    };
    for topic in gateway_topics {
        let Some(decoder) = services.decoders.get(&**topic.name()).cloned() else {
            continue;
        };
        // In `--role all` a topic the sink writes is dead-lettered by the sink alone.
        let sink_reads = role == Role::All
            && services
                .config
                .sink
                .as_ref()
                .is_some_and(|sink| sink.tables.iter().any(|t| t.topic == **topic.name()));
        sources.spawn(source::run_live(
            services.kafka.clone(),
            decoder,
            topic.clone(),
            services.followers.clone(),
            !sink_reads,
            shutdown.child_token(),
        ));
        sources.spawn(source::report_lag(
            services.kafka.clone(),
            topic.clone(),
            shutdown.child_token(),
        ));
    }
    if role != Role::Sink {
        sources.spawn(services.kafka.clone().check_reachable(
            Duration::from_millis(services.config.kafka.readiness_check_ms),
            shutdown.child_token(),
        ));
    }
    if let Some(jwks) = services.jwks.clone() {
        sources.spawn(jwks.run(shutdown.child_token()));
    }
    let (routes, admin_routes) = match (role, sink) {
        (Role::Sink, Some(sink)) => {
            let routes = crate::http::sink_routes(services.clone(), sink);
            (
                warp::Filter::boxed(warp::Filter::map(routes.clone(), boxed)),
                warp::Filter::boxed(warp::Filter::map(routes, boxed)),
            )
        }
        _ => (
            warp::Filter::boxed(warp::Filter::map(
                crate::http::routes(services.clone(), shutdown.clone()),
                boxed,
            )),
            warp::Filter::boxed(warp::Filter::map(
                crate::http::admin_routes(services.clone()),
                boxed,
            )),
        ),
    };
    let ws = &services.config.websocket;
    let tls = match (&ws.tls_cert_file, &ws.tls_key_file) {
        (Some(cert), Some(key)) => {
            let tls = crate::tls::Tls::new(cert, key, &services.metrics).map_err(AppError::Tls)?;
            sources.spawn(tls.clone().reload_on_sighup(shutdown.child_token()));
            Some(tls)
        }
        _ => None,
    };
    let limits = HttpLimits::from(ws);
    let public = listener::serve(
        listener,
        routes,
        tls,
        limits,
        services.metrics.clone(),
        shutdown.clone(),
    );
    let admin = admin.map(|(admin, _)| {
        listener::serve(
            admin,
            admin_routes,
            None,
            limits,
            services.metrics.clone(),
            shutdown.clone(),
        )
    });
    let server = async move {
        match admin {
            Some(admin) => drop(tokio::join!(public, admin)),
            None => public.await,
        }
    };
    sources.close();
    let grace = Duration::from_millis(services.config.websocket.shutdown_grace_ms);
    let sink_grace = Duration::from_millis(
        services
            .config
            .sink
            .as_ref()
            .map_or(0, |s| s.shutdown_timeout_ms),
    );
    let task = tokio::spawn({
        let services = services.clone();
        let shutdown = shutdown.clone();
        async move {
            let server = tokio::spawn(server);
            shutdown.cancelled().await;
            services.sessions.close();
            sink_tasks.close();
            let done = async {
                sources.wait().await;
                services.sessions.wait().await;
            };
            let (sessions, sink) = tokio::join!(
                tokio::time::timeout(grace, done),
                tokio::time::timeout(sink_grace, sink_tasks.wait())
            );
            if sessions.is_err() {
                tracing::warn!(
                    sessions = services.sessions.len(),
                    "shutdown grace period over; closing the remaining connections"
                );
            }
            if sink.is_err() {
                tracing::warn!(
                    "sink.shutdown_timeout_ms over with files still open; their records will be read again"
                );
            }
            // The server future ends when its connections end (each gets a second after
            // shutdown); upgraded WebSocket connections are the sessions' own and were handled
            // above.
            if tokio::time::timeout(Duration::from_secs(1), server)
                .await
                .is_err()
            {
                tracing::debug!("HTTP server did not stop within 1 s");
            }
        }
    });
    tracing::info!(%addr, topics = services.config.topics.len(), "gateway listening");
    Ok(Running {
        addr,
        admin_addr,
        shutdown,
        services,
        task,
    })
}

/// A route's reply as one type, so routes of different roles fit one listener.
fn boxed(r: impl warp::Reply + 'static) -> Box<dyn warp::Reply> {
    Box::new(r)
}

/// Binds `addr` (see [`listener::bind`]); returns the listener and the address it is bound to.
fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), AppError> {
    let failed = |source| AppError::Bind { addr, source };
    let listener = listener::bind(addr).map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    Ok((listener, bound))
}

/// Resolves on SIGINT (ctrl-c) or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled, so a signal that arrives while the gateway starts is not
/// lost (and does not kill the process). Call it inside the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (mut term, mut int) = match (term, int) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT; stop with SIGKILL");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    }
}
