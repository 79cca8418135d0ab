//! One measured point: N clients connect and subscribe, the producer runs at a rate, and what
//! the clients receive of the records produced inside the measurement window is counted and
//! timed.
//!
//! All clients run as tasks of one current-thread runtime (a `LocalSet`), sharing their
//! counters and one latency histogram without locks: the tool takes at most one core for its
//! clients (plus the producer thread and librdkafka's), leaving the rest to the gateway and the
//! broker that share the machine.
//!
//! With `deflate` every client offers permessage-deflate (RFC 7692, [`ws::DEFLATE_OFFER`]) and
//! a client whose server does not accept it fails (the point fails with it: uncompressed
//! figures are never reported as compressed); compressed messages are inflated
//! ([`crate::inflate`]) and the stamps scanned in the inflated bytes. Either way the bytes read
//! from the sockets (`wire_bytes`) and the payload bytes of the text messages, inflated
//! (`payload_bytes`), are counted while the measurement window is open.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::inflate::{self, Data, Scratch};
use crate::procstat::{self, CpuWindow};
use crate::produce::Control;
use crate::scan::{Kind, Scanner};
use crate::ws::{self, opcode};

/// The server under test and the protocol its clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Lakewire's protocol v1 on `/ws`: `{"op":"subscribe",...}`, `records` frames.
    Lakewire,
    /// Centrifugo's JSON protocol on `/connection/websocket`: `connect`, `subscribe` to a
    /// channel, publications pushed one per reply.
    Centrifugo,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Self::Lakewire => "lakewire",
            Self::Centrifugo => "centrifugo",
        }
    }

    /// The WebSocket path.
    pub fn path(self) -> &'static str {
        match self {
            Self::Lakewire => "/ws",
            Self::Centrifugo => "/connection/websocket",
        }
    }
}

/// The shape of one point.
#[derive(Debug, Clone)]
pub struct Point {
    pub protocol: Protocol,
    pub addr: SocketAddr,
    /// The topic (Lakewire) or channel (Centrifugo) the clients subscribe to.
    pub topic: String,
    pub clients: usize,
    /// Share of the clients that subscribe and then never read.
    pub stalled: f64,
    pub filter: FilterMode,
    /// Records/s to produce.
    pub rate: u64,
    pub warmup: Duration,
    pub duration: Duration,
    /// A point is sustainable only with p99 at most this.
    pub max_p99: Duration,
    /// Offer permessage-deflate, and require it.
    pub deflate: bool,
}

/// Processes whose CPU is reported.
#[derive(Debug, Clone, Copy, Default)]
pub struct Watched {
    pub gateway: Option<u32>,
    pub broker: Option<u32>,
}

/// What one point measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub protocol: Protocol,
    pub rate: u64,
    pub clients: usize,
    pub fast: usize,
    pub stalled: usize,
    pub filter: FilterMode,
    /// permessage-deflate was offered and accepted by every client (else the point failed).
    pub deflate: bool,
    /// What the server answered to the offer (the first client's), e.g.
    /// `permessage-deflate; server_no_context_takeover; client_no_context_takeover`.
    pub deflate_params: Option<String>,
    pub secs: f64,
    /// Records produced (stamped) inside the window.
    pub produced: u64,
    /// Deliveries of those records to fast clients.
    pub deliveries: u64,
    /// `records` frames that carried them (deliveries / frames: how much the gateway batches).
    pub frames: u64,
    /// `produced × fast` when every fast client should get every record (no filter).
    pub expected: Option<u64>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Bytes read from the sockets of all clients (frames: headers and payloads as sent,
    /// compressed or not; no TCP/IP headers) while the window was open.
    pub wire_bytes: u64,
    /// Payload bytes of the text messages the clients received (inflated) while the window
    /// was open.
    pub payload_bytes: u64,
    pub lagged_frames: u64,
    pub dropped: u64,
    /// Frames of other kinds (errors) and connections the server closed.
    pub errors: u64,
    pub closed: u64,
    pub produce_failed: u64,
    pub producer_behind: u64,
    pub gateway_cpu_pct: Option<f64>,
    pub gateway_peak_rss_kib: Option<u64>,
    pub gateway_rss_kib: Option<u64>,
    pub broker_cpu_pct: Option<f64>,
    pub tool_cpu_pct: f64,
    pub machine_busy_pct: f64,
    /// CPU used by every other process (not the gateway, the broker when watched, or this
    /// tool), in percent of one core: the machine is shared.
    pub others_cpu_pct: f64,
    pub cores: usize,
    pub sustainable: bool,
    pub why_not: Vec<String>,
}

impl Outcome {
    pub fn deliveries_per_s(&self) -> f64 {
        self.deliveries as f64 / self.secs
    }

    /// Deliveries per second per fast client.
    pub fn per_fast_client(&self) -> f64 {
        self.deliveries_per_s() / self.fast.max(1) as f64
    }

    /// Bytes on the wire per delivered record (`wire_bytes / deliveries`, the two counted over
    /// the same window: bytes read while it was open, records stamped inside it).
    pub fn wire_bytes_per_delivery(&self) -> Option<f64> {
        (self.deliveries > 0).then(|| self.wire_bytes as f64 / self.deliveries as f64)
    }

    /// Inflated payload bytes per delivered record.
    pub fn payload_bytes_per_delivery(&self) -> Option<f64> {
        (self.deliveries > 0).then(|| self.payload_bytes as f64 / self.deliveries as f64)
    }

    /// The JSON line.
    pub fn json(&self, scenario: &str) -> serde_json::Value {
        serde_json::json!({
            "wsload": "point",
            "scenario": scenario,
            "server": self.protocol.name(),
            "rate": self.rate,
            "clients": self.clients,
            "fast_clients": self.fast,
            "stalled_clients": self.stalled,
            "filter": format!("{:?}", self.filter).to_lowercase(),
            "deflate": self.deflate,
            "deflate_params": self.deflate_params,
            "window_s": self.secs,
            "produced": self.produced,
            "deliveries": self.deliveries,
            "records_per_frame": (self.deliveries as f64 / self.frames.max(1) as f64 * 10.0).round() / 10.0,
            "expected": self.expected,
            "deliveries_per_s": self.deliveries_per_s().round(),
            "per_fast_client_per_s": (self.per_fast_client() * 10.0).round() / 10.0,
            "latency_ms": {"p50": self.p50_ms, "p90": self.p90_ms, "p99": self.p99_ms, "max": self.max_ms},
            "wire_bytes": self.wire_bytes,
            "payload_bytes": self.payload_bytes,
            "wire_bytes_per_delivery": self.wire_bytes_per_delivery().map(|b| (b * 10.0).round() / 10.0),
            "payload_bytes_per_delivery": self.payload_bytes_per_delivery().map(|b| (b * 10.0).round() / 10.0),
            "wire_to_payload": (self.payload_bytes > 0).then(|| (self.wire_bytes as f64 / self.payload_bytes as f64 * 1000.0).round() / 1000.0),
            "lagged_frames": self.lagged_frames,
            "dropped": self.dropped,
            "errors": self.errors,
            "closed": self.closed,
            "produce_failed": self.produce_failed,
            "producer_behind": self.producer_behind,
            "gateway_cpu_pct": self.gateway_cpu_pct.map(|c| c.round()),
            "gateway_peak_rss_mib": self.gateway_peak_rss_kib.map(|k| (k as f64 / 1024.0).round()),
            "gateway_rss_mib": self.gateway_rss_kib.map(|k| (k as f64 / 1024.0).round()),
            "broker_cpu_pct": self.broker_cpu_pct.map(|c| c.round()),
            "tool_cpu_pct": self.tool_cpu_pct.round(),
            "machine_busy_pct": self.machine_busy_pct.round(),
            "others_cpu_pct": self.others_cpu_pct.round(),
            "cores": self.cores,
            "shared_machine": "load tool, gateway and Kafka broker all run on this machine",
            "sustainable": self.sustainable,
            "why_not": self.why_not,
        })
    }
}

/// Counters shared by the client tasks (one thread: no locks).
pub(crate) struct Stats {
    pub(crate) hist: Histogram<u64>,
    pub(crate) deliveries: u64,
    pub(crate) frames: u64,
    pub(crate) lagged_frames: u64,
    pub(crate) dropped: u64,
    pub(crate) errors: u64,
    pub(crate) closed: u64,
    pub(crate) subscribed: usize,
    pub(crate) first_error: Option<String>,
    /// Bytes read from the sockets, and payload bytes of text messages (inflated), since the
    /// start.
    pub(crate) wire_bytes: u64,
    pub(crate) payload_bytes: u64,
    /// The first accepted permessage-deflate, as the server wrote it.
    pub(crate) deflate_params: Option<String>,
}

impl Stats {
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            // 1 µs .. 10 min, 3 significant digits.
            hist: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            deliveries: 0,
            frames: 0,
            lagged_frames: 0,
            dropped: 0,
            errors: 0,
            closed: 0,
            subscribed: 0,
            first_error: None,
            wire_bytes: 0,
            payload_bytes: 0,
            deflate_params: None,
        })
    }
}

pub(crate) struct Shared {
    pub(crate) protocol: Protocol,
    /// Room made in a connection's read buffer before each read.
    pub(crate) read_chunk: usize,
    pub(crate) stats: RefCell<Stats>,
    pub(crate) control: Arc<Control>,
    pub(crate) scanner: Scanner,
    /// Bounds how many clients connect at once.
    pub(crate) connecting: Semaphore,
    /// Offer permessage-deflate, and fail a client whose server does not accept it.
    pub(crate) deflate: bool,
    /// The inflater and output buffer all connections of the thread share (messages of a
    /// server without context takeover).
    pub(crate) scratch: RefCell<Scratch>,
}

/// Drives one connection until it closes or the task is aborted.
pub(crate) async fn client(
    addr: SocketAddr,
    local: Option<std::net::IpAddr>,
    request: String,
    stalled: bool,
    shared: Rc<Shared>,
) -> anyhow::Result<()> {
    let mut permit = Some(shared.connecting.acquire().await?);
    let conn = ws::connect(addr, shared.protocol.path(), local, shared.deflate).await?;
    let (mut sock, mut buf): (TcpStream, Vec<u8>) = (conn.stream, conn.rest);
    let mut inflating = match (shared.deflate, conn.deflate) {
        (false, _) => None,
        (true, None) => bail!(
            "the server did not accept permessage-deflate (offered {:?}): refusing to measure \
             uncompressed traffic as compressed",
            ws::DEFLATE_OFFER
        ),
        (true, Some(d)) => {
            shared
                .stats
                .borrow_mut()
                .deflate_params
                .get_or_insert_with(|| d.describe());
            Some(inflate::Message::new(&d))
        }
    };
    shared.stats.borrow_mut().wire_bytes += buf.len() as u64;
    let mut out = Vec::with_capacity(256);
    ws::write_frame(&mut out, opcode::TEXT, request.as_bytes());
    sock.write_all(&out).await?;
    let mut subscribed = false;
    loop {
        let mut at = 0;
        while let Some(h) = ws::parse_header(&buf[at..])? {
            if buf.len() - at < h.total_len() {
                break;
            }
            let (p0, p1) = (at + h.payload_start, at + h.total_len());
            if let Some(m) = h.mask {
                ws::unmask(&mut buf[p0..p1], m);
            }
            let payload = &buf[p0..p1];
            match h.opcode {
                opcode::TEXT | opcode::CONTINUATION => {
                    let (sub, ping) = match &mut inflating {
                        None if h.rsv1 => {
                            bail!("a frame with RSV1 set, but no permessage-deflate was agreed")
                        }
                        None => on_text(&shared, payload),
                        Some(m) => {
                            let mut scratch = shared.scratch.borrow_mut();
                            match m.frame(&h, payload, &mut scratch)? {
                                Data::Plain(p) | Data::Inflated(p) => on_text(&shared, p),
                                Data::Partial => (false, false),
                            }
                        }
                    };
                    subscribed |= sub;
                    if ping {
                        out.clear();
                        ws::write_frame(&mut out, opcode::TEXT, b"{}");
                        sock.write_all(&out).await?;
                    }
                }
                opcode::PING => {
                    out.clear();
                    ws::write_frame(&mut out, opcode::PONG, payload);
                    sock.write_all(&out).await?;
                }
                opcode::CLOSE => {
                    shared.stats.borrow_mut().closed += 1;
                    return Ok(());
                }
                _ => {}
            }
            at += h.total_len();
        }
        buf.drain(..at);
        if subscribed && permit.is_some() {
            permit = None;
            if stalled {
                // Never read again; the socket stays open until the point ends.
                std::future::pending::<()>().await;
            }
        }
        buf.reserve(shared.read_chunk);
        let n = sock.read_buf(&mut buf).await?;
        if n == 0 {
            shared.stats.borrow_mut().closed += 1;
            return Ok(());
        }
        shared.stats.borrow_mut().wire_bytes += n as u64;
    }
}

/// Accounts for one text frame (or whole inflated message); (it was the `subscribed` reply, it
/// was a ping to answer).
fn on_text(shared: &Shared, payload: &[u8]) -> (bool, bool) {
    shared.stats.borrow_mut().payload_bytes += payload.len() as u64;
    match shared.protocol {
        Protocol::Lakewire => (
            on_reply(shared, payload, shared.scanner.kind(payload)),
            false,
        ),
        Protocol::Centrifugo => {
            let (mut sub, mut ping) = (false, false);
            for reply in payload.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
                let kind = shared.scanner.centrifugo_kind(reply);
                ping |= kind == Kind::Ping;
                sub |= on_reply(shared, reply, kind);
            }
            (sub, ping)
        }
    }
}

/// Accounts for one reply of kind `kind`; true when it was the `subscribed` reply.
fn on_reply(shared: &Shared, payload: &[u8], kind: Kind) -> bool {
    let mut st = shared.stats.borrow_mut();
    match kind {
        Kind::Records => {
            let now = crate::now_us();
            let control = &shared.control;
            let st = &mut *st;
            let mut counted = false;
            shared.scanner.stamps(payload, |t| {
                if control.in_window(t) {
                    st.deliveries += 1;
                    st.hist.saturating_record(now.saturating_sub(t).max(1));
                    counted = true;
                }
            });
            st.frames += u64::from(counted);
            false
        }
        Kind::Lagged(n) => {
            st.lagged_frames += 1;
            st.dropped += n;
            false
        }
        Kind::Subscribed => {
            st.subscribed += 1;
            true
        }
        Kind::Ping | Kind::Ignore => false,
        Kind::Other => {
            st.errors += 1;
            if st.first_error.is_none() {
                st.first_error = Some(String::from_utf8_lossy(payload).chars().take(300).collect());
            }
            false
        }
    }
}

/// Runs one point. Must be called inside a `LocalSet`.
pub async fn run(
    point: &Point,
    control: &Arc<Control>,
    watched: Watched,
) -> anyhow::Result<Outcome> {
    if let Some(limit) = procstat::open_files_limit()
        && (limit as usize) < point.clients + 64
    {
        bail!(
            "the open-files limit is {limit}, too low for {} clients: raise it (ulimit -n 65536; the wrapper integration-tests/bin/wsload does)",
            point.clients
        );
    }
    let shared = Rc::new(Shared {
        protocol: point.protocol,
        read_chunk: 64 * 1024,
        stats: RefCell::new(Stats::new()?),
        control: control.clone(),
        scanner: Scanner::default(),
        connecting: Semaphore::new(64),
        deflate: point.deflate,
        scratch: RefCell::new(Scratch::default()),
    });
    // Nothing stamped yet counts.
    control.window_start.store(u64::MAX, Ordering::SeqCst);
    let n_stalled = (point.clients as f64 * point.stalled).round() as usize;
    let fast = point.clients - n_stalled;
    // Stalled clients spread evenly among the fast ones.
    let is_stalled = |i: usize| n_stalled > 0 && (i * n_stalled) % point.clients < n_stalled;
    let tasks: Vec<JoinHandle<()>> = (0..point.clients)
        .map(|i| {
            let shared = shared.clone();
            let req =
                subscribe_request(point.protocol, &point.topic, i, point.clients, point.filter);
            let addr = point.addr;
            let stalled = is_stalled(i);
            tokio::task::spawn_local(async move {
                if let Err(e) = client(addr, None, req, stalled, shared.clone()).await {
                    let mut st = shared.stats.borrow_mut();
                    st.errors += 1;
                    st.first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            })
        })
        .collect();
    let result = measure(point, control, watched, &shared, fast, n_stalled).await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    control.rate.store(0, Ordering::SeqCst);
    result
}

async fn measure(
    point: &Point,
    control: &Arc<Control>,
    watched: Watched,
    shared: &Rc<Shared>,
    fast: usize,
    n_stalled: usize,
) -> anyhow::Result<Outcome> {
    // Every client subscribed (or failed).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        {
            let st = shared.stats.borrow();
            if st.subscribed == point.clients {
                break;
            }
            if st.errors > 0 || Instant::now() > deadline {
                bail!(
                    "{} of {} clients subscribed; first error: {}",
                    st.subscribed,
                    point.clients,
                    st.first_error.as_deref().unwrap_or("none (timed out)")
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    control.rate.store(point.rate, Ordering::SeqCst);
    tokio::time::sleep(point.warmup).await;
    let failed0 = control.failed.load(Ordering::Relaxed);
    let behind0 = control.behind.load(Ordering::Relaxed);
    let gw_cpu = watched.gateway.map(CpuWindow::start).transpose()?;
    let broker_cpu = watched.broker.and_then(|p| CpuWindow::start(p).ok());
    let tool_cpu = CpuWindow::start(std::process::id())?;
    let (busy0, total0) = procstat::machine_ticks()?;
    let t0 = Instant::now();
    let bytes0 = {
        let st = shared.stats.borrow();
        (st.wire_bytes, st.payload_bytes)
    };
    let w0 = control.open_window();
    tokio::time::sleep(point.duration).await;
    let w1 = control.close_window();
    let bytes1 = {
        let st = shared.stats.borrow();
        (st.wire_bytes, st.payload_bytes)
    };
    let secs = (w1 - w0) as f64 / 1e6;
    let wall = t0.elapsed().as_secs_f64();
    let gateway_cpu_pct = gw_cpu.map(|c| c.percent(wall)).transpose()?;
    let broker_cpu_pct = broker_cpu.and_then(|c| c.percent(wall).ok());
    let tool_cpu_pct = tool_cpu.percent(wall)?;
    let (busy1, total1) = procstat::machine_ticks()?;
    let machine_busy_pct = (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64 * 100.0;
    // Keep producing while the window's last records arrive (so the tail sees the same load);
    // wait until deliveries stop growing.
    let mut last = shared.stats.borrow().deliveries;
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    let mut quiet = 0;
    while quiet < 5 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = shared.stats.borrow().deliveries;
        if now == last {
            quiet += 1;
        } else {
            quiet = 0;
            last = now;
        }
    }
    control.rate.store(0, Ordering::SeqCst);
    let (peak, rss) = match watched.gateway {
        Some(pid) => {
            let (p, r) = procstat::rss_kib(pid)?;
            (Some(p), Some(r))
        }
        None => (None, None),
    };
    let st = shared.stats.borrow();
    let produced = control.produced_in_window.load(Ordering::SeqCst);
    let q = |p: f64| st.hist.value_at_quantile(p) as f64 / 1000.0;
    // Unfiltered, every fast client gets every record; with device filters, each record's
    // device is one client's (`Spread::devices` is the number of clients), so with no stalled
    // client every record is delivered once. A server that falls behind its window then shows.
    let expected = match point.filter {
        FilterMode::None => Some(produced * fast as u64),
        FilterMode::Device if n_stalled == 0 => Some(produced),
        _ => None,
    };
    let p99_ms = q(0.99);
    let mut why_not = Vec::new();
    if st.lagged_frames > 0 {
        why_not.push(format!(
            "{} lagged frames ({} records dropped) at fast clients",
            st.lagged_frames, st.dropped
        ));
    }
    if let Some(e) = expected
        && (st.deliveries as f64) < e as f64 * 0.999
    {
        why_not.push(format!("{} of {} deliveries", st.deliveries, e));
    }
    if p99_ms > point.max_p99.as_secs_f64() * 1000.0 {
        why_not.push(format!(
            "p99 {p99_ms:.1} ms > {} ms",
            point.max_p99.as_millis()
        ));
    }
    let behind = control.behind.load(Ordering::Relaxed) - behind0;
    if behind > 0 {
        why_not.push(format!("the producer fell behind its rate {behind} times"));
    }
    if st.closed > 0 || st.errors > 0 {
        why_not.push(format!(
            "{} connections closed, {} errors (first: {})",
            st.closed,
            st.errors,
            st.first_error.as_deref().unwrap_or("-")
        ));
    }
    Ok(Outcome {
        protocol: point.protocol,
        rate: point.rate,
        clients: point.clients,
        fast,
        stalled: n_stalled,
        filter: point.filter,
        deflate: point.deflate,
        deflate_params: st.deflate_params.clone(),
        secs,
        produced,
        deliveries: st.deliveries,
        frames: st.frames,
        expected,
        p50_ms: q(0.50),
        p90_ms: q(0.90),
        p99_ms,
        max_ms: st.hist.max() as f64 / 1000.0,
        wire_bytes: bytes1.0 - bytes0.0,
        payload_bytes: bytes1.1 - bytes0.1,
        lagged_frames: st.lagged_frames,
        dropped: st.dropped,
        errors: st.errors,
        closed: st.closed,
        produce_failed: control.failed.load(Ordering::Relaxed) - failed0,
        producer_behind: behind,
        gateway_cpu_pct,
        gateway_peak_rss_kib: peak,
        gateway_rss_kib: rss,
        broker_cpu_pct,
        tool_cpu_pct,
        machine_busy_pct,
        others_cpu_pct: (machine_busy_pct * procstat::cores() as f64
            - gateway_cpu_pct.unwrap_or(0.0)
            - broker_cpu_pct.unwrap_or(0.0)
            - tool_cpu_pct)
            .max(0.0),
        cores: procstat::cores(),
        sustainable: why_not.is_empty(),
        why_not,
    })
}

pub use crate::idle::{IdleOutcome, idle};
pub use crate::report::{table_header, table_row};
pub use crate::subscribe::{FilterMode, subscribe_request};
