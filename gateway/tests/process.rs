//! The `lakewire` process under faults, on its embedded demo (in-process broker): SIGTERM is a
//! graceful shutdown, and connections dropped abruptly leave no file descriptors or memory behind.

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::{start, start_with};

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

fn tls_fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Connects over TLS trusting only the test CA; returns the server certificate it presented and
/// the WebSocket on top.
async fn wss(
    addr: &str,
) -> anyhow::Result<(
    Vec<u8>,
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
)> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(tls_fixture("ca.pem"))? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
    let tls = connector.connect(name, tcp).await?;
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let (ws, _) = tokio_tungstenite::client_async(format!("wss://{addr}/ws"), tls).await?;
    Ok((presented, ws))
}

fn der_of(pem_file: &str) -> anyhow::Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject as _;
    Ok(rustls::pki_types::CertificateDer::from_pem_file(tls_fixture(pem_file))?.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_wss_and_reloads_its_certificate_on_sighup() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::copy(tls_fixture("a.pem"), &cert)?;
    std::fs::copy(tls_fixture("a.key"), &key)?;
    let (cert_s, key_s) = (
        cert.to_string_lossy().to_string(),
        key.to_string_lossy().to_string(),
    );
    let gw = start_with(&[
        ("LAKEWIRE_WEBSOCKET__TLS_CERT_FILE", &cert_s),
        ("LAKEWIRE_WEBSOCKET__TLS_KEY_FILE", &key_s),
    ])?;
    let (presented, mut ws) = wss(&gw.addr).await?;
    assert_eq!(presented, der_of("a.pem")?);
    ws.send(Message::text(
        r#"{"op":"subscribe","id":"s","topic":"trades"}"#,
    ))
    .await?;
    let mut records = 0;
    while records < 3 {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
            Some(Ok(Message::Text(t))) if t.contains("\"records\"") => records += 1,
            Some(Ok(_)) => {}
            other => anyhow::bail!("stream ended: {other:?}"),
        }
    }
    // Plain WebSocket is not served on a TLS listener.
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
            .await
            .is_err()
    );

    // New certificate, SIGHUP: new connections get it; the open one carries on.
    std::fs::copy(tls_fixture("b.pem"), &cert)?;
    std::fs::copy(tls_fixture("b.key"), &key)?;
    let hup = |pid: u32| {
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
    };
    assert!(hup(gw.child.id())?.success());
    let want = der_of("b.pem")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (presented, _) = wss(&gw.addr).await?;
        if presented == want {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "still the old certificate after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken file on reload keeps the certificate that works.
    std::fs::write(&cert, "not a certificate")?;
    assert!(hup(gw.child.id())?.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (presented, _) = wss(&gw.addr).await?;
    assert_eq!(presented, want);
    assert!(gw.child.id() > 0);
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await? {
        Some(Ok(_)) => {}
        other => anyhow::bail!("the first connection broke: {other:?}"),
    }
    Ok(())
}
