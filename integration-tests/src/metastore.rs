//! A Hive Metastore of a test's own (`integration-tests/bin/metastore` with its own port and
//! run dir), for tests that stop it: never the shared one `run-all` starts ([`shared_uri`]).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// A metastore of the test's own, stopped and its files removed when dropped.
pub struct OwnMetastore {
    port: u16,
    run_dir: tempfile::TempDir,
}

impl OwnMetastore {
    /// Starts one on a free port (`bin/metastore up`: a few seconds).
    pub fn start() -> anyhow::Result<Self> {
        let own = Self {
            port: free_port()?,
            run_dir: tempfile::tempdir()?,
        };
        own.command("up")?;
        Ok(own)
    }

    /// Runs `bin/metastore <verb>` (`up`, `stop` (keeps Derby), `down`) on this instance.
    pub fn command(&self, verb: &str) -> anyhow::Result<String> {
        let started = Instant::now();
        let out = run(Command::new(script())
            .arg(verb)
            .env("METASTORE_PORT", self.port.to_string())
            .env("METASTORE_RUN_DIR", self.run_dir.path()))?;
        println!(
            "metastore {verb}: {:.1}s (run dir {})",
            started.elapsed().as_secs_f64(),
            self.run_dir.path().display()
        );
        Ok(out)
    }

    /// `thrift://127.0.0.1:<port>`.
    pub fn uri(&self) -> String {
        format!("thrift://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnMetastore {
    fn drop(&mut self) {
        if let Err(e) = self.command("down") {
            eprintln!("could not stop the test's metastore: {e}");
        }
    }
}

/// Runs `cmd`; its standard output, or an error with both outputs when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().map_err(|e| anyhow::anyhow!("{cmd:?}: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The shared metastore of the real-metastore tests (`TEST_HIVE_METASTORE`); panics, with how
/// to start one, when it is not set.
pub fn shared_uri() -> String {
    match std::env::var("TEST_HIVE_METASTORE") {
        Ok(uri) if !uri.is_empty() => uri,
        _ => panic!(
            "TEST_HIVE_METASTORE is not set: the real-metastore tests need a running Hive \
             Metastore; start one with `integration-tests/bin/metastore up` and set \
             TEST_HIVE_METASTORE=thrift://127.0.0.1:9083 (integration-tests/run-all does both)"
        ),
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bin/metastore")
}

/// A free port below the kernel's ephemeral range (which starts at 32768) and apart from the
/// fixed ports of the other tests (the faults test's broker: 29192/29193): 22000-28999.
fn free_port() -> anyhow::Result<u16> {
    let base = 22000 + (std::process::id() % 3000) as u16;
    (0..4000u16)
        .map(|i| base + i)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .ok_or_else(|| anyhow::anyhow!("no free port"))
}

/// The `(name, type)` of every column in a `spark_read.py` answer, in table order.
pub fn spark_columns(v: &serde_json::Value) -> Vec<(String, String)> {
    v["columns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}
