//! Costly filters on the embedded demo (`lakewire demo`, a child process): `/healthz` and the
//! other sessions are unaffected. In a test binary of its own: the filters keep two cores busy,
//! which would disturb the timing of tests running beside it.

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

mod common;

/// The costliest filter shape the grammar still accepts, near its step budget: every record is
/// checked against 80 × 80 products that never match. `n` makes each one a distinct filter.
fn costly_filter(n: usize) -> String {
    let list: Vec<String> = (1..=80).map(|i| i.to_string()).collect();
    format!(
        "[{l}].exists(key, [{l}].exists(offset, key * offset == -{n}))",
        l = list.join(",")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costly_filters_leave_healthz_and_other_sessions_unaffected() -> anyhow::Result<()> {
    let gw = common::start()?;
    // Costly filters on two of the demo's topics (before the fix, each topic's evaluation held
    // one of the gateway's two runtime threads, and the topic's lock, for as long as it ran).
    let mut costly = Vec::new();
    for (c, topic) in ["trades", "orders"].iter().cycle().take(8).enumerate() {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr)).await?;
        for s in 0..4 {
            let sub = serde_json::json!({
                "op": "subscribe", "id": format!("s{s}"), "topic": topic,
                "filter": costly_filter(c * 10 + s + 1),
            });
            ws.send(Message::text(sub.to_string())).await?;
            let reply = tokio::time::timeout(Duration::from_secs(10), ws.next()).await?;
            let text = match reply {
                Some(Ok(Message::Text(t))) => t.to_string(),
                other => anyhow::bail!("no reply to subscribe: {other:?}"),
            };
            anyhow::ensure!(text.contains("\"subscribed\""), "{text}");
        }
        costly.push(ws);
    }
    // Another session, on a topic of its own, keeps receiving.
    let (mut other, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr)).await?;
    other
        .send(Message::text(
            r#"{"op":"subscribe","id":"plain","topic":"sensors"}"#,
        ))
        .await?;
    let client = reqwest::Client::new();
    let mut probes = Vec::new();
    let mut records = 0usize;
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let started = Instant::now();
        let status = client
            .get(format!("http://{}/healthz", gw.addr))
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .status();
        probes.push(started.elapsed());
        anyhow::ensure!(status.is_success(), "/healthz answered {status}");
        // Drain what the plain session received meanwhile.
        let drain = Instant::now() + Duration::from_millis(200);
        while let Ok(Some(m)) = tokio::time::timeout_at(drain.into(), other.next()).await {
            if let Message::Text(t) = m? {
                if t.contains("\"records\"") {
                    records += t.matches("\"offset\"").count();
                }
            }
        }
    }
    probes.sort();
    let p90 = probes[probes.len() * 9 / 10];
    let worst = probes[probes.len() - 1];
    // Every probe is expected well under 100 ms; p90 is asserted so that one scheduling hiccup
    // of this shared 2-core machine does not fail the test, and the worst must stay under 1 s.
    assert!(
        p90 < Duration::from_millis(100) && worst < Duration::from_secs(1),
        "/healthz p90 {p90:?}, worst {worst:?} over {} probes",
        probes.len()
    );
    // The demo writes 10 sensor readings a second: at least half of 6 s worth arrive.
    assert!(
        records >= 30,
        "the plain session got {records} records in 6 s"
    );
    drop(costly);
    Ok(())
}
