//! `lakewire` as a real process: the binary the tests run, a gateway started with a generated
//! configuration on a free loopback port, and `lakewire check` of a configuration text.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, anyhow, bail};

/// The `lakewire` binary: `LAKEWIRE_BIN`, else `lakewire` in the target directory of this test
/// executable (built by `cargo test --workspace`, or `cargo build -p lakewire`). Refused when
/// it is older than a source file of the gateway, so a test never runs yesterday's binary.
pub fn lakewire_bin() -> anyhow::Result<PathBuf> {
    let bin = match std::env::var_os("LAKEWIRE_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe()?;
            // target/<profile>/deps/<test> -> target/<profile>/lakewire
            exe.parent()
                .and_then(Path::parent)
                .map(|d| d.join("lakewire"))
                .ok_or_else(|| anyhow!("no target directory above {}", exe.display()))?
        }
    };
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .with_context(|| {
            format!(
                "{}: build it first (cargo build -p lakewire --bin lakewire) or set LAKEWIRE_BIN",
                bin.display()
            )
        })?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/src");
    if let Some(newest) = newest_mtime(&src)
        && newest > built
    {
        bail!(
            "{} is older than the sources in gateway/src: rebuild it (cargo build -p lakewire --bin lakewire)",
            bin.display()
        );
    }
    Ok(bin)
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().ok()?.modified().ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// A `Command` for the `lakewire` binary with none of this process's `LAKEWIRE_*` variables
/// (every one is a configuration key to `lakewire`, and `LAKEWIRE_BIN` is not one).
pub fn lakewire_command() -> anyhow::Result<Command> {
    let mut cmd = Command::new(lakewire_bin()?);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LAKEWIRE_") {
            cmd.env_remove(k);
        }
    }
    Ok(cmd)
}

/// A fresh file name under the temporary directory.
pub fn temp_path(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "lakewire-it-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// `lakewire check --config <text written to a file>` with `env` set: `Ok(stdout)` when it
/// accepts the configuration, `Err` with its status and message when not.
pub fn lakewire_check(config: &str, env: &[(String, String)]) -> anyhow::Result<String> {
    let path = temp_path("check.toml");
    std::fs::write(&path, config)?;
    let out = lakewire_command()?
        .arg("check")
        .arg("--config")
        .arg(&path)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output();
    let _ = std::fs::remove_file(&path);
    let out = out?;
    if !out.status.success() {
        bail!(
            "lakewire check refused it ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// A `lakewire run` process on a free loopback port. Killed when dropped.
pub struct GatewayProcess {
    child: Child,
    /// Its HTTP/WebSocket address.
    pub addr: SocketAddr,
    config: PathBuf,
    log: PathBuf,
}

impl GatewayProcess {
    /// Starts `lakewire run --config <config> <extra_args>` listening on a port of its choice
    /// (`LAKEWIRE_WEBSOCKET__LISTEN=127.0.0.1:0`) and returns once it logged that address (not
    /// yet ready: see [`crate::wait_ready`]).
    pub async fn start(config: &str, extra_args: &[&str]) -> anyhow::Result<Self> {
        let config_path = temp_path("gateway.toml");
        std::fs::write(&config_path, config)?;
        let log = temp_path("gateway.log");
        let child = lakewire_command()?
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(extra_args)
            .env("LAKEWIRE_WEBSOCKET__LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting lakewire run")?;
        let mut gw = Self {
            child,
            addr: ([127, 0, 0, 1], 0).into(),
            config: config_path,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // `INFO lakewire::app: gateway listening addr=127.0.0.1:40123 topics=1`
            let log = gw.log();
            if let Some(addr) = log
                .lines()
                .filter(|l| l.contains("gateway listening"))
                .find_map(|l| {
                    l.split("addr=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
            {
                gw.addr = addr;
                return Ok(gw);
            }
            if let Some(status) = gw.child.try_wait()? {
                bail!("lakewire run exited ({status}) before listening:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("lakewire run did not log its address within 30 s:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: the replica disappears at once, as on a node failure.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits up to `within` for it to exit; returns its exit status.
    pub fn terminate(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("lakewire did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.log);
    }
}
