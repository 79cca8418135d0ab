//! `lakewire tail` against a real gateway: the `lakewire demo` process (in-process broker,
//! synthetic Avro producer), both run as the binary a user runs.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_lakewire");

/// A child process killed when the test ends, whichever way it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `lakewire demo` on a free port; stopped (SIGTERM) on drop.
struct Demo {
    proc: Proc,
    ws: String,
}

impl Demo {
    fn start() -> anyhow::Result<Self> {
        let mut cmd = Command::new(BIN);
        cmd.args(["demo", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("LAKEWIRE_")) {
            cmd.env_remove(k);
        }
        let mut proc = Proc(cmd.spawn()?);
        // Its stdout is read to the end: a demo printing into a closed pipe would fail.
        let lines = lines_of(take_stdout(&mut proc.0)?);
        let ws = loop {
            let line = next_line(&lines, T)?;
            if let Some(url) = line.trim().strip_prefix("WebSocket:") {
                break url.trim().trim_end_matches("/ws").to_string();
            }
        };
        std::thread::spawn(move || while lines.recv().is_ok() {});
        Ok(Self { proc, ws })
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = signal(self.proc.0.id(), "TERM");
        let _ = wait_exit(&mut self.proc.0, Duration::from_secs(10));
    }
}

fn take_stdout(child: &mut Child) -> anyhow::Result<ChildStdout> {
    child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))
}

/// The lines of `out`, read by a thread. Dropping the receiver closes the pipe at the next line
/// (as `head` does once it has what it wants).
fn lines_of(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_line(lines: &mpsc::Receiver<String>, within: Duration) -> anyhow::Result<String> {
    lines
        .recv_timeout(within)
        .map_err(|e| anyhow::anyhow!("no line within {within:?}: {e}"))
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()?
        .success();
    anyhow::ensure!(ok, "kill -{sig} {pid} failed");
    Ok(())
}

fn tail(demo: &Demo, args: &[&str]) -> anyhow::Result<Proc> {
    Ok(Proc(
        Command::new(BIN)
            .arg("tail")
            .args(["--url", &demo.ws])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    ))
}

/// Waits at most `within` for the process to exit; kills it and fails when it does not.
fn wait_exit(child: &mut Child, within: Duration) -> anyhow::Result<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code().unwrap_or(-1));
        }
        if Instant::now() > deadline {
            child.kill()?;
            anyhow::bail!("did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How long a test waits for a line.
const T: Duration = Duration::from_secs(30);

#[test]
fn json_lines_with_filter_and_fields_and_head_closing_the_pipe() -> anyhow::Result<()> {
    let demo = Demo::start()?;
    let mut child = tail(
        &demo,
        &[
            "trades",
            "--from",
            "earliest",
            "--filter",
            "value.side == 'buy' && value.price > 0.0",
            "--fields",
            "value.symbol,value.side",
        ],
    )?;
    let lines = lines_of(take_stdout(&mut child.0)?);
    // Like `| head -n 20`: read 20 lines, then close the pipe.
    for _ in 0..20 {
        let line = next_line(&lines, T)?;
        let r: Value = serde_json::from_str(&line)?;
        assert_eq!(r["value"]["side"], "buy", "{line}");
        assert!(r["value"]["symbol"].is_string(), "{line}");
        assert_eq!(
            r["value"].as_object().map(|o| o.len()),
            Some(2),
            "only the projected fields: {line}"
        );
        assert!(r["offset"].is_i64() && r["partition"].is_i64(), "{line}");
    }
    drop(lines);
    let code = wait_exit(&mut child.0, Duration::from_secs(10))?;
    let mut err = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        e.read_to_string(&mut err)?;
    }
    assert_eq!(code, 0, "a closed stdout is a clean exit: {err}");
    assert!(!err.contains("panicked"), "{err}");
    Ok(())
}

#[test]
fn table_output_has_a_header_and_aligned_rows() -> anyhow::Result<()> {
    let demo = Demo::start()?;
    let mut child = tail(
        &demo,
        &[
            "sensors",
            "--table",
            "--fields",
            "value.site,value.location",
        ],
    )?;
    let rx = lines_of(take_stdout(&mut child.0)?);
    let lines: Vec<String> = (0..4)
        .map(|_| next_line(&rx, T))
        .collect::<Result<_, _>>()?;
    signal(child.0.id(), "INT")?;
    assert_eq!(wait_exit(&mut child.0, Duration::from_secs(10))?, 0);
    assert!(
        lines[0].starts_with("partition  offset    timestamp"),
        "{lines:#?}"
    );
    let col = lines[0]
        .find("location.lat")
        .ok_or_else(|| anyhow::anyhow!("no location.lat column: {lines:#?}"))?;
    for row in &lines[1..] {
        assert!(
            !row.contains('\x1b'),
            "no colour when stdout is not a terminal"
        );
        let cell = row.get(col..).unwrap_or_default();
        let lat: f64 = cell.split_whitespace().next().unwrap_or("").parse()?;
        assert!((-90.0..=90.0).contains(&lat), "{row}");
    }
    Ok(())
}

#[test]
fn ctrl_c_exits_cleanly_and_a_bad_filter_exits_1_with_the_servers_message() -> anyhow::Result<()> {
    let demo = Demo::start()?;
    let mut child = tail(&demo, &["trades"])?;
    let lines = lines_of(take_stdout(&mut child.0)?);
    let first = next_line(&lines, T)?;
    assert!(serde_json::from_str::<Value>(&first)?["value"]["price"].is_number());
    signal(child.0.id(), "INT")?;
    assert_eq!(wait_exit(&mut child.0, Duration::from_secs(10))?, 0);

    let out = Command::new(BIN)
        .args([
            "tail",
            "--url",
            &demo.ws,
            "trades",
            "--filter",
            "value.price +",
        ])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bad_filter"), "{err}");
    assert!(err.contains("Syntax error"), "{err}");

    let out = Command::new(BIN)
        .args(["tail", "--url", &demo.ws, "trades", "--from", "yesterday"])
        .output()?;
    assert_eq!(out.status.code(), Some(64));
    Ok(())
}

/// The gateway in this process on librdkafka's mock cluster, so it can be stopped and started
/// again on the same port while the records stay in "Kafka".
mod restart {
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use rdkafka::config::ClientConfig;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use serde_json::Value;

    async fn gateway(brokers: &str, port: u16) -> anyhow::Result<lakewire::app::Running> {
        let toml = format!(
            "[kafka]\nbrokers = \"{brokers}\"\n\n[[topics]]\nname = \"t\"\nformat = \"json\"\n\n[websocket]\nlisten = \"127.0.0.1:{port}\"\n"
        );
        super::common::start_ready(&toml, "t").await
    }

    async fn produce(
        producer: &FutureProducer,
        partition: i32,
        ns: std::ops::Range<i64>,
    ) -> anyhow::Result<()> {
        for n in ns {
            let payload = format!("{{\"n\":{n}}}");
            producer
                .send(
                    FutureRecord::to("t")
                        .partition(partition)
                        .key("k")
                        .payload(&payload),
                    Duration::from_secs(5),
                )
                .await
                .map_err(|(e, _)| e)?;
        }
        Ok(())
    }

    fn recv_lines(rx: &mpsc::Receiver<String>, n: usize) -> anyhow::Result<Vec<(i64, i64)>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .map_err(|e| anyhow::anyhow!("{} of {n} lines: {e}", got.len()))?;
            let r: Value = serde_json::from_str(&line)?;
            got.push((
                r["partition"].as_i64().unwrap_or(-1),
                r["offset"].as_i64().unwrap_or(-1),
            ));
        }
        Ok(got)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resumes_by_offsets_across_a_gateway_restart() -> anyhow::Result<()> {
        let cluster = MockCluster::new(1)?;
        cluster.create_topic("t", 2, 1)?;
        let brokers = cluster.bootstrap_servers();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
        // Before the subscription (`latest`): never printed, not even after the resume.
        produce(&producer, 0, 0..5).await?;
        produce(&producer, 1, 0..5).await?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let gw = gateway(&brokers, port).await?;
        let mut child = super::Proc(
            Command::new(super::BIN)
                .args(["tail", "--url", &format!("ws://127.0.0.1:{port}"), "t"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let rx = super::lines_of(super::take_stdout(&mut child.0)?);
        let deadline = Instant::now() + Duration::from_secs(10);
        while gw.services.metrics.ws_subscriptions.get() < 1 {
            anyhow::ensure!(Instant::now() < deadline, "tail did not subscribe");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Only partition 0 moves before the restart.
        produce(&producer, 0, 5..15).await?;
        let mut got = recv_lines(&rx, 10)?;

        gw.stop().await;
        produce(&producer, 0, 15..25).await?;
        produce(&producer, 1, 5..15).await?;
        let gw = gateway(&brokers, port).await?;
        produce(&producer, 1, 15..18).await?;
        got.extend(recv_lines(&rx, 23)?);
        std::thread::sleep(Duration::from_millis(500));
        while let Ok(extra) = rx.try_recv() {
            got.push((-1, -1));
            eprintln!("extra line: {extra}");
        }
        let mut want: Vec<(i64, i64)> = (5..25).map(|o| (0, o)).collect();
        want.extend((5..18).map(|o| (1, o)));
        got.sort_unstable();
        assert_eq!(got, want, "no record missing, none repeated");

        super::signal(child.0.id(), "INT")?;
        assert_eq!(super::wait_exit(&mut child.0, Duration::from_secs(10))?, 0);
        gw.stop().await;
        Ok(())
    }
}
