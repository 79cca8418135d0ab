//! The `lakewire` binary's configuration handling, as an operator meets it.

use std::process::Command;

fn lakewire(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(i32, String, String)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lakewire"));
    cmd.args(args);
    // Only the variables a test sets may configure the process under test.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("LAKEWIRE_")) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    ))
}

const GOOD: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"

[[topics]]
name = "trades"
format = "json"

[websocket]
listen = "127.0.0.1:8080"
"#;

fn write(text: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    let f = tempfile::NamedTempFile::new()?;
    std::fs::write(f.path(), text)?;
    Ok(f)
}

#[test]
fn check_accepts_a_good_file() -> anyhow::Result<()> {
    let f = write(GOOD)?;
    let path = f.path().to_string_lossy().to_string();
    let (code, out, err) = lakewire(&["check", "--config", &path], &[])?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK (1 topic(s)"), "{out}");
    Ok(())
}

#[test]
fn check_refuses_a_typo_with_status_64_naming_the_key() -> anyhow::Result<()> {
    let f = write(&GOOD.replace("listen", "lisen"))?;
    let path = f.path().to_string_lossy().to_string();
    let (code, _, err) = lakewire(&["check", "--config", &path], &[])?;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("websocket.lisen: unknown key"), "{err}");
    Ok(())
}

#[test]
fn run_refuses_a_bad_environment_override_with_status_64() -> anyhow::Result<()> {
    let f = write(GOOD)?;
    let path = f.path().to_string_lossy().to_string();
    let (code, _, err) = lakewire(
        &["run", "--config", &path],
        &[("LAKEWIRE_WEBSOCKET__SLOW_CLIENT", "ignore")],
    )?;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("LAKEWIRE_WEBSOCKET__SLOW_CLIENT"), "{err}");
    assert!(err.contains("drop, disconnect"), "{err}");
    Ok(())
}

#[test]
fn missing_file_is_a_config_error() -> anyhow::Result<()> {
    let (code, _, err) = lakewire(&["check", "--config", "/nonexistent/lakewire.toml"], &[])?;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("/nonexistent/lakewire.toml"), "{err}");
    Ok(())
}

#[test]
fn run_reports_a_taken_port() -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let f = write(&GOOD.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}")))?;
    let path = f.path().to_string_lossy().to_string();
    let (code, _, err) = lakewire(&["run", "--config", &path], &[])?;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    Ok(())
}

#[test]
fn the_shipped_example_config_is_valid() -> anyhow::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/lakewire.toml");
    let (code, out, err) = lakewire(&["check", "--config", path], &[])?;
    assert_eq!(code, 0, "{out}{err}");
    Ok(())
}

#[test]
fn role_sink_without_a_sink_section_is_a_configuration_error() -> anyhow::Result<()> {
    let f = write(GOOD)?;
    let path = f.path().display().to_string();
    let (code, _, stderr) = lakewire(&["run", "--role", "sink", "--config", &path], &[])?;
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("[sink]"), "{stderr}");
    let (code, _, stderr) = lakewire(&["run", "--role", "nope", "--config", &path], &[])?;
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("possible values: all, gateway, sink"),
        "{stderr}"
    );
    Ok(())
}
