//! The `lakewire` process under faults, on its embedded demo (in-process broker): SIGTERM is a
//! graceful shutdown, and connections dropped abruptly leave no file descriptors or memory behind.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

/// A `lakewire demo` child, killed when dropped.
struct Gateway {
    child: Child,
    addr: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> anyhow::Result<Gateway> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lakewire"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut addr = None;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line?;
        if let Some(rest) = line.trim().strip_prefix("WebSocket:") {
            addr = rest
                .trim()
                .strip_prefix("ws://")
                .and_then(|a| a.strip_suffix("/ws"))
                .map(str::to_string);
            break;
        }
    }
    // Keep reading, so the demo's later lines never meet a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let addr = addr.ok_or_else(|| anyhow::anyhow!("the demo did not print its address"))?;
    Ok(Gateway { child, addr })
}

fn proc_status(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_with_1001_and_exits_0() -> anyhow::Result<()> {
    let mut gw = start()?;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr)).await?;
    ws.send(Message::text(
        r#"{"op":"subscribe","id":"s","topic":"trades"}"#,
    ))
    .await?;
    let status = Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status()?;
    assert!(status.success());
    let started = Instant::now();
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
            Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
            Some(Ok(_)) => continue,
            other => anyhow::bail!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(1001));
    // Exits by itself, with status 0, within the grace period (5 s by default).
    let exit = loop {
        if let Some(s) = gw.child.try_wait()? {
            break s;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(8),
            "still running after 8 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}");
    // No longer accepting.
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_dropped_abruptly_leave_no_descriptors_or_memory_behind() -> anyhow::Result<()>
{
    let gw = start()?;
    let pid = gw.child.id();
    let url = format!("ws://{}/ws", gw.addr);
    // Warm up (first connection, allocator pools), then take the baseline.
    for _ in 0..2 {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
        ws.send(Message::text(
            r#"{"op":"subscribe","id":"s","topic":"trades"}"#,
        ))
        .await?;
        ws.next().await;
        drop(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_before = open_fds(pid);
    let mut rss = Vec::new();
    for round in 0..4 {
        let mut conns = Vec::new();
        for i in 0..500 {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
            ws.send(Message::text(format!(
                r#"{{"op":"subscribe","id":"s{i}","topic":"trades"}}"#
            )))
            .await?;
            conns.push(ws);
        }
        let fds_open = open_fds(pid);
        assert!(
            fds_open >= fds_before + 500,
            "round {round}: {fds_open} fds with 500 open"
        );
        // Abruptly: the sockets are dropped with no close handshake.
        drop(conns);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let fds = open_fds(pid);
            if fds <= fds_before + 2 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "round {round}: file descriptors did not return to baseline: {fds_before} before, {fds} now"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        rss.push(proc_status(pid, "VmRSS:").unwrap_or(0));
    }
    // The first round grows the allocator's pools to hold 500 connections; later rounds reuse
    // them. A leak would grow the resident set round after round.
    assert!(
        rss[3] < rss[1] + 16 * 1024,
        "RSS kept growing across rounds of 500 connections (kB): {rss:?}"
    );
    Ok(())
}
