//! Listener: accepts the HTTP server's TCP connections and serves them with hyper (HTTP/1.1 with
//! WebSocket upgrades, and HTTP/2), over TLS when configured ([`crate::tls`]). Input: a bound
//! listener and the routes of [`crate::http`]; output: each connection served under the HTTP
//! limits of `[websocket]`:
//!
//! - `header_read_timeout_ms`: the TLS handshake and the first request's head must arrive this
//!   soon after the connection is accepted; hyper's own timer bounds each later request head of
//!   an HTTP/1.1 connection the same way (slowloris);
//! - `http_idle_timeout_ms`: a connection with no byte either way for this long is shut down
//!   gracefully (a request in flight finishes first, within [`DRAIN`]);
//! - `write_timeout_ms`: a connection whose write (an SSE stream to a client that stopped
//!   reading) makes no progress for this long is dropped;
//! - `max_http_connections`: connections open at once; one more is refused at accept;
//!   `max_http_connections_per_ip`: the share of them one client address may hold (429).
//!
//! A connection closed gracefully (shutdown or idleness) that has not finished within [`DRAIN`]
//! is dropped anyway, so its place is freed.
//!
//! An upgraded WebSocket leaves the listener's count: the session has its own limits.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::{Filter, Reply};

use crate::config::WebSocketConfig;
use crate::metrics::{CloseLabels, Metrics};
use crate::tls::Tls;

/// The client's address, put on each request (warp's own `remote()` only knows connections
/// that warp's server accepted).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Put on each request: why the listener cut its connection, once it has (`write_timeout`,
/// `idle_timeout`, `shutdown`). A streamed response (SSE) reads it when it is dropped, to count
/// its ending.
#[derive(Debug, Clone, Default)]
pub struct CutReason(Arc<OnceLock<&'static str>>);

impl CutReason {
    /// The reason, if the listener cut the connection.
    pub fn get(&self) -> Option<&'static str> {
        self.0.get().copied()
    }

    fn set(&self, reason: &'static str) {
        let _ = self.0.set(reason);
    }
}

/// The limits every connection of a listener is served under.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}

impl From<&WebSocketConfig> for HttpLimits {
    fn from(ws: &WebSocketConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(ws.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(ws.http_idle_timeout_ms),
            write_timeout: Duration::from_millis(ws.write_timeout_ms),
            max_connections: ws.max_http_connections,
            max_connections_per_ip: ws.http_connections_per_ip(),
        }
    }
}

/// How long a connection still gets after the listener asked it to stop gracefully (shutdown,
/// or idleness) to finish its requests in flight; then it is dropped.
pub const DRAIN: Duration = Duration::from_secs(1);

/// What a refused plain-HTTP connection is told before it is closed.
const REFUSED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
/// What a plain-HTTP connection over its address's share is told before it is closed.
const REFUSED_PER_IP: &[u8] =
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Connections open per client address, for `max_http_connections_per_ip`.
type PerIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One connection's place in its address's share; dropping it frees the place.
struct IpPlace {
    per_ip: PerIp,
    ip: IpAddr,
}

impl IpPlace {
    /// Takes a place for `ip` if it holds fewer than `max`.
    fn take(per_ip: &PerIp, ip: IpAddr, max: usize) -> Option<Self> {
        let mut open = per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            per_ip: per_ip.clone(),
            ip,
        })
    }
}

impl Drop for IpPlace {
    fn drop(&mut self) {
        let mut open = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Binds the HTTP listener with `TCP_NODELAY` set, which Linux passes on to every connection it
/// accepts: a small frame goes out at once instead of waiting (Nagle) for the ACK of the one
/// before, which the client may delay by up to 40 ms. Without it a client of a quiet topic saw
/// p50 11 ms against 1.3 ms for the Kafka leg alone (BENCHMARKS.md, "latency").
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves `routes` on `listener` (over TLS with `tls`) until `shutdown`, then gives each open
/// connection [`DRAIN`] to finish; returns when they have.
pub async fn serve<F>(
    listener: TcpListener,
    routes: F,
    tls: Option<Arc<Tls>>,
    limits: HttpLimits,
    metrics: Metrics,
    shutdown: CancellationToken,
) where
    F: Filter<Error = warp::Rejection> + Clone + Send + Sync + 'static,
    F::Extract: Reply,
{
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = PerIp::default();
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            metrics.refused("max_http_connections");
            if tls.is_none() {
                // Best effort, never waiting: the socket's buffer is empty.
                let _ = tcp.try_write(REFUSED);
            }
            continue;
        };
        let Some(ip_place) = IpPlace::take(&per_ip, peer.ip(), limits.max_connections_per_ip)
        else {
            metrics.refused("max_http_connections_per_ip");
            if tls.is_none() {
                let _ = tcp.try_write(REFUSED_PER_IP);
            }
            continue;
        };
        // Inherited from the listener on Linux (bind); set again for other systems.
        let _ = tcp.set_nodelay(true);
        let conn = Conn {
            peer,
            limits,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            _place: (place, ip_place),
        };
        connections.spawn(conn.run(tcp, tls.clone(), routes.clone()));
    }
    connections.close();
    connections.wait().await;
}

/// One accepted connection and its place under `max_http_connections` and its address's share.
struct Conn {
    peer: SocketAddr,
    limits: HttpLimits,
    metrics: Metrics,
    shutdown: CancellationToken,
    _place: (OwnedSemaphorePermit, IpPlace),
}

impl Conn {
    async fn run<F>(self, tcp: TcpStream, tls: Option<Arc<Tls>>, routes: F)
    where
        F: Filter<Error = warp::Rejection> + Clone + Send + Sync + 'static,
        F::Extract: Reply,
    {
        let _open = GaugeGuard::inc(&self.metrics);
        let activity = Arc::new(Activity::new());
        let io = Counted {
            inner: tcp,
            activity: activity.clone(),
        };
        match tls {
            None => self.serve(io, activity, routes).await,
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                let handshake =
                    tokio::time::timeout(self.limits.header_read_timeout, acceptor.accept(io));
                let stream = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    r = handshake => r,
                };
                match stream {
                    Ok(Ok(stream)) => self.serve(stream, activity, routes).await,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed")
                    }
                    Err(_) => {
                        self.closed("header_timeout");
                        tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                    }
                }
            }
        }
    }

    fn closed(&self, reason: &'static str) {
        self.metrics
            .http_closed
            .get_or_create(&CloseLabels { reason })
            .inc();
    }

    /// Serves HTTP on `io` until the client or a limit ends it, or shutdown.
    async fn serve<I, F>(&self, io: I, activity: Arc<Activity>, routes: F)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Filter<Error = warp::Rejection> + Clone + Send + Sync + 'static,
        F::Extract: Reply,
    {
        let peer = self.peer;
        let service = warp::service(routes);
        let svc = hyper::service::service_fn({
            let activity = activity.clone();
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                activity.requested.store(true, Ordering::Relaxed);
                req.extensions_mut().insert(ClientAddr(peer));
                req.extensions_mut().insert(activity.cut.clone());
                let mut service = service.clone();
                tower_service::Service::call(&mut service, req)
            }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let accepted = tokio::time::Instant::now();
        // Idleness is checked a few times per `idle_timeout`; it is noticed up to a quarter late.
        // A stalled write is noticed up to a quarter of `write_timeout` late.
        let period = (self.limits.idle_timeout / 4)
            .min(self.limits.write_timeout / 4)
            .min(self.limits.header_read_timeout)
            .max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = activity.bytes.load(Ordering::Relaxed);
        let mut last_active = accepted;
        // Set once the connection was asked to stop (shutdown, idleness): it has until this to
        // finish, and why it was asked.
        let mut draining: Option<(tokio::time::Instant, &'static str)> = None;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        let timed_out = e
                            .downcast_ref::<hyper::Error>()
                            .is_some_and(hyper::Error::is_timeout);
                        if timed_out {
                            self.closed("header_timeout");
                        }
                        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                    }
                    return;
                }
                _ = self.shutdown.cancelled(), if draining.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    draining = Some((tokio::time::Instant::now() + DRAIN, "shutdown"));
                }
                _ = tick.tick() => {
                    let now = tokio::time::Instant::now();
                    if let Some((until, why)) = draining {
                        if now >= until {
                            // Graceful was not enough (a response stream that does not end, a
                            // client that does not read): the place is freed anyway.
                            activity.cut.set(why);
                            return;
                        }
                    }
                    if activity
                        .write_stalled_since()
                        .is_some_and(|t| now.duration_since(t) >= self.limits.write_timeout)
                    {
                        self.closed("write_timeout");
                        activity.cut.set("write_timeout");
                        tracing::debug!(%peer, "HTTP write made no progress; connection dropped");
                        return;
                    }
                    // No request yet: the head (and the protocol preface) is late. Hyper's own
                    // timer only starts once it knows the connection speaks HTTP/1.
                    if !activity.requested.load(Ordering::Relaxed)
                        && now.duration_since(accepted) >= self.limits.header_read_timeout
                    {
                        self.closed("header_timeout");
                        return;
                    }
                    let bytes = activity.bytes.load(Ordering::Relaxed);
                    if bytes != seen {
                        seen = bytes;
                        last_active = now;
                    } else if draining.is_none()
                        && now.duration_since(last_active) >= self.limits.idle_timeout
                    {
                        // Graceful: an idle HTTP/1.1 connection closes at once, an HTTP/2 one
                        // after its streams; a request in flight gets `DRAIN` to finish.
                        self.closed("idle");
                        draining = Some((now + DRAIN, "idle_timeout"));
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// `lakewire_http_connections` for as long as a connection is served.
struct GaugeGuard(Metrics);

impl GaugeGuard {
    fn inc(metrics: &Metrics) -> Self {
        metrics.http_connections.inc();
        Self(metrics.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.http_connections.dec();
    }
}

/// What the idle, header and write checks look at: bytes moved, whether a request has arrived,
/// since when a write has been waiting for the socket.
#[derive(Debug)]
struct Activity {
    bytes: AtomicU64,
    requested: AtomicBool,
    /// What `write_stalled` counts from.
    epoch: tokio::time::Instant,
    /// Milliseconds after `epoch` (plus 1) since which writes have been pending; 0: none is.
    write_stalled: AtomicU64,
    cut: CutReason,
}

impl Activity {
    fn new() -> Self {
        Self {
            bytes: AtomicU64::new(0),
            requested: AtomicBool::new(false),
            epoch: tokio::time::Instant::now(),
            write_stalled: AtomicU64::new(0),
            cut: CutReason::default(),
        }
    }

    /// Records how a write went: a pending one starts (or continues) a stall, a done one ends it.
    fn wrote<T>(&self, r: &Poll<std::io::Result<T>>) {
        match r {
            Poll::Pending => {
                let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
                let _ = self.write_stalled.compare_exchange(
                    0,
                    ms + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Poll::Ready(_) => self.write_stalled.store(0, Ordering::Relaxed),
        }
    }

    /// Since when writes have been pending, if they are.
    fn write_stalled_since(&self) -> Option<tokio::time::Instant> {
        match self.write_stalled.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.epoch + Duration::from_millis(ms - 1)),
        }
    }
}

/// A stream that counts the bytes read and written through it.
struct Counted<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.activity.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.wrote(&r);
        if let Poll::Ready(Ok(n)) = r {
            self.activity.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.wrote(&r);
        if let Poll::Ready(Ok(n)) = r {
            self.activity.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn accepted_connections_have_nodelay() -> std::io::Result<()> {
        let listener = super::bind(([127, 0, 0, 1], 0).into())?;
        let addr = listener.local_addr()?;
        let (_client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        assert!(
            accepted?.0.nodelay()?,
            "an accepted socket without TCP_NODELAY"
        );
        Ok(())
    }
}
