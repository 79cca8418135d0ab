//! The scenarios that are more than one `run`: the Kafka leg alone, connections, decode and the
//! whole suite, with the summary helpers they print through.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use lakewire_wsload::gateway::{self};
use lakewire_wsload::load::{self, IdleOutcome, Outcome, Protocol};
use lakewire_wsload::{procstat, produce};

use crate::setup::Setup;
use crate::summary::{banner, ratio, summary_of};
use crate::{Common, SweepArgs};

pub(crate) async fn kafka_latency(
    brokers: &str,
    rate: u64,
    duration: f64,
    props: &[(String, String)],
) -> anyhow::Result<()> {
    let topic = gateway::unique_topic();
    gateway::create_topic(brokers, &topic, 1).await?;
    let control = Arc::new(produce::Control::default());
    let sink = produce::Sink {
        topic: topic.clone(),
        centrifugo_channel: None,
    };
    let producer = produce::start(brokers, vec![sink], 200, control.clone())?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumers = {
        let (brokers, topic, props) = (brokers.to_string(), topic.clone(), props.to_vec());
        let (stop, ready) = (stop.clone(), ready.clone());
        std::thread::spawn(move || {
            lakewire_wsload::kafkalat::measure(&brokers, &topic, 1, &props, &stop, &ready)
        })
    };
    while !ready.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let both consumers settle on the partition's end before producing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    control.open_window();
    control.rate.store(rate, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs_f64(duration)).await;
    control.rate.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    control.stop.store(true, Ordering::SeqCst);
    let legs = consumers
        .join()
        .map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
    match producer.join() {
        Ok(r) => r?,
        Err(_) => bail!("the producer thread panicked"),
    }
    println!(
        "== kafka latency: {rate} records/s for {duration} s, no server; loadavg {}",
        procstat::loadavg()
    );
    println!(
        "{:>42} {:>8} {:>7} {:>7} {:>7} {:>8}",
        "consumer", "records", "p50ms", "p90ms", "p99ms", "maxms"
    );
    for l in &legs {
        println!(
            "{:>42} {:>8} {:>7.1} {:>7.1} {:>7.1} {:>8.1}",
            l.name, l.records, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        );
        println!(
            "{}",
            serde_json::json!({"wsload": "kafka_latency", "consumer": l.name, "rate": rate,
                "records": l.records, "latency_ms": {"p50": l.p50_ms, "p90": l.p90_ms,
                "p99": l.p99_ms, "max": l.max_ms}, "loadavg": procstat::loadavg()})
        );
    }
    Ok(())
}

pub(crate) async fn connections(setup: &Setup, c: &Common, settle: Duration) -> anyhow::Result<()> {
    println!(
        "== connections: {} idle subscribed connections per server; loadavg {}",
        c.clients,
        procstat::loadavg()
    );
    println!("{}", IdleOutcome::table_header());
    let mut outs = Vec::new();
    for t in &setup.targets {
        let pid = t
            .pid
            .context("the server's pid is unknown (--gateway-pid)")?;
        let o = load::idle(
            t.protocol,
            t.addr,
            &t.subscribe_to,
            c.clients,
            pid,
            settle,
            c.deflate,
        )
        .await?;
        println!("{}", o.table_row());
        println!("{}", o.json());
        outs.push(o);
        // Let the server close them before the next one is measured.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if let [a, b] = &outs[..] {
        println!(
            "{}",
            serde_json::json!({"wsload": "summary", "scenario": "connections",
                "lakewire_kib_per_connection": (a.per_connection_kib() * 10.0).round() / 10.0,
                "centrifugo_kib_per_connection": (b.per_connection_kib() * 10.0).round() / 10.0,
                "ratio_lakewire_to_centrifugo": ratio(a.per_connection_kib(), b.per_connection_kib())})
        );
    }
    Ok(())
}

/// The Prometheus counter of records a server has read from Kafka.
pub(crate) fn read_counter(p: Protocol) -> &'static str {
    match p {
        Protocol::Lakewire => "lakewire_kafka_records_total",
        Protocol::Centrifugo => "centrifugo_consumers_messages_processed_total",
    }
}

pub(crate) async fn decode(setup: &Setup, c: &Common, records: u64) -> anyhow::Result<()> {
    println!(
        "== decode: {records} records of {} B, no clients; records/s per core of the server's CPU; loadavg {}",
        c.record_bytes,
        procstat::loadavg()
    );
    println!(
        "{:>10} {:>9} {:>8} {:>8} {:>12} {:>14}",
        "server", "records", "wall s", "CPU s", "records/s", "records/s/core"
    );
    let mut per_core = Vec::new();
    for t in &setup.targets {
        let pid = t
            .pid
            .context("the server's pid is unknown (--gateway-pid)")?;
        let counter = read_counter(t.protocol);
        let read = || async {
            let (status, body) = gateway::http_get(t.addr, "/metrics").await?;
            if status != 200 {
                bail!("GET /metrics: {status}");
            }
            Ok(gateway::metric_sum(&body, counter))
        };
        let before = read().await?;
        let ticks0 = procstat::cpu_ticks(pid)?;
        let t0 = std::time::Instant::now();
        let sink = setup.sinks[t.sink].clone();
        let brokers = c.brokers.clone();
        let bytes = c.record_bytes;
        let producing = std::thread::spawn(move || produce::burst(&brokers, &sink, records, bytes));
        let deadline = t0 + Duration::from_secs(300);
        let mut done = before;
        while done - before < records as f64 {
            if std::time::Instant::now() > deadline {
                bail!(
                    "{} read {} of {records} records in 300 s",
                    t.protocol.name(),
                    done - before
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            done = read().await?;
        }
        let wall = t0.elapsed().as_secs_f64();
        let cpu = (procstat::cpu_ticks(pid)? - ticks0) as f64 / procstat::TICKS_PER_SEC;
        match producing.join() {
            Ok(r) => r?,
            Err(_) => bail!("the producer thread panicked"),
        }
        let rate_core = records as f64 / cpu.max(0.01);
        println!(
            "{:>10} {:>9} {:>8.2} {:>8.2} {:>12.0} {:>14.0}",
            t.protocol.name(),
            records,
            wall,
            cpu,
            records as f64 / wall,
            rate_core
        );
        println!(
            "{}",
            serde_json::json!({"wsload": "decode", "server": t.protocol.name(), "records": records,
                "record_bytes": c.record_bytes, "wall_s": (wall * 100.0).round() / 100.0,
                "cpu_s": (cpu * 100.0).round() / 100.0, "records_per_s": (records as f64 / wall).round(),
                "records_per_s_per_core": rate_core.round(), "loadavg": procstat::loadavg()})
        );
        per_core.push(rate_core);
    }
    if let [a, b] = &per_core[..] {
        println!(
            "{}",
            serde_json::json!({"wsload": "summary", "scenario": "decode",
                "ratio_lakewire_to_centrifugo": ratio(*a, *b)})
        );
    }
    Ok(())
}

pub(crate) async fn suite(
    setup: &Setup,
    c: &Common,
    s: &SweepArgs,
    stalled_share: f64,
) -> anyhow::Result<()> {
    println!(
        "== (a) fan-out: {} clients, no stalled clients, rate stepped up",
        c.clients
    );
    let fanout = setup.sweep_all("fanout", c, s, 0.0).await?;
    let Some(Some(best)) = fanout.first() else {
        bail!(
            "no sustainable fan-out rate from {} records/s",
            s.start_rate
        );
    };
    // Each server at its own maximum (stalled) and at half of it (latency); a server with no
    // sustainable point is measured at lakewire's.
    let own = |i: usize| fanout[i].as_ref().map_or(best.rate, |o| o.rate);
    println!(
        "== (b) stalled: {:.0}% of the clients stalled, each server at its fan-out maximum",
        stalled_share * 100.0
    );
    banner(c, stalled_share);
    let mut stalled = Vec::new();
    for (i, t) in setup.targets.iter().enumerate() {
        stalled.push(
            setup
                .run("stalled", t, &setup.point(c, t, own(i), stalled_share))
                .await?,
        );
    }
    println!("== (c) latency: each server at half its fan-out maximum");
    banner(c, 0.0);
    let mut latency = Vec::new();
    for (i, t) in setup.targets.iter().enumerate() {
        let half = (own(i) / 2).max(1);
        latency.push(
            setup
                .run("latency", t, &setup.point(c, t, half, 0.0))
                .await?,
        );
    }
    let change = |fan: &Option<Outcome>, st: &Outcome| {
        fan.as_ref().filter(|f| f.rate == st.rate).map(|f| {
            ((st.per_fast_client() - f.per_fast_client()) / f.per_fast_client() * 1000.0).round()
                / 10.0
        })
    };
    let mut summary = serde_json::json!({
        "wsload": "summary",
        "scenario": "suite",
        "clients": c.clients,
        "cores": procstat::cores(),
        "loadavg": procstat::loadavg(),
        "shared_machine": "load tool, servers and Kafka broker all run on this machine",
    });
    for (i, t) in setup.targets.iter().enumerate() {
        let n = t.protocol.name();
        summary[n] = serde_json::json!({
            "fanout_max": summary_of(&fanout[i]),
            "stalled_at_fanout_max": summary_of(&Some(stalled[i].clone())),
            "fast_client_throughput_change_pct": change(&fanout[i], &stalled[i]),
            "latency_at_half": summary_of(&Some(latency[i].clone())),
        });
    }
    if let ([Some(fa), fb], [sa, sb], [la, lb]) = (&fanout[..], &stalled[..], &latency[..]) {
        summary["ratios_lakewire_to_centrifugo"] = serde_json::json!({
            "fanout_max_deliveries": fb.as_ref().map(|fb| ratio(fa.deliveries_per_s(), fb.deliveries_per_s())),
            "stalled_fast_deliveries": ratio(sa.deliveries_per_s(), sb.deliveries_per_s()),
            "latency_p99_at_own_half": ratio(la.p99_ms, lb.p99_ms),
            "latency_cpu": ratio(la.gateway_cpu_pct.unwrap_or(0.0), lb.gateway_cpu_pct.unwrap_or(0.0)),
        });
    }
    println!("{summary}");
    Ok(())
}
