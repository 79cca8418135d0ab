use super::*;

const GOOD: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"

[[topics]]
name = "trades"
format = "json"

[websocket]
listen = "127.0.0.1:0"
queue_size = 16
"#;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn err(text: &str, pairs: &[(&str, &str)]) -> String {
    match Config::from_toml_and_env(text, &env(pairs), "test.toml") {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn good_file_loads_with_defaults() -> anyhow::Result<()> {
    let c = Config::from_toml_and_env(GOOD, &[], "test.toml")?;
    assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(c.topics[0].format, PayloadFormat::Json);
    assert_eq!(c.websocket.queue_size, 16);
    assert_eq!(c.websocket.max_subscriptions, 64);
    assert_eq!(c.websocket.slow_client, SlowClientPolicy::Drop);
    assert_eq!(c.auth.mode, AuthMode::None);
    Ok(())
}

#[test]
fn typo_in_key_is_named() {
    let text = GOOD.replace("queue_size", "queue_sise");
    let msg = err(&text, &[]);
    assert!(
        msg.starts_with("websocket.queue_sise: unknown key"),
        "{msg}"
    );
    assert!(msg.contains("test.toml"), "{msg}");
}

#[test]
fn bad_value_is_named() {
    let msg = err(&GOOD.replace("16", "\"lots\""), &[]);
    assert!(msg.starts_with("websocket.queue_size:"), "{msg}");
    let msg = err(&GOOD.replace("\"json\"", "\"xml\""), &[]);
    assert!(
        msg.contains("topics.0.format") || msg.contains("format"),
        "{msg}"
    );
    assert!(msg.contains("xml"), "{msg}");
    let msg = err(&GOOD.replace("16", "0"), &[]);
    assert_eq!(msg, "websocket.queue_size: must be at least 1");
}

#[test]
fn plain_http_jwks_is_refused_unless_allowed() -> anyhow::Result<()> {
    let jwt = |url: &str| {
        vec![
            ("LAKEWIRE_AUTH__MODE".to_string(), "jwt".to_string()),
            ("LAKEWIRE_AUTH__JWKS_URL".to_string(), url.to_string()),
        ]
    };
    let http = jwt("http://idp.example/jwks.json");
    let msg = match Config::from_toml_and_env(GOOD, &http, "test.toml") {
        Ok(c) => panic!("an http:// JWKS URL was accepted: {c:?}"),
        Err(e) => e.to_string(),
    };
    assert!(msg.starts_with("auth.jwks_url: is an http:// URL"), "{msg}");
    assert!(msg.contains("auth.jwks_allow_http"), "{msg}");
    let mut allowed = http.clone();
    allowed.push(("LAKEWIRE_AUTH__JWKS_ALLOW_HTTP".into(), "true".into()));
    assert!(
        Config::from_toml_and_env(GOOD, &allowed, "test.toml")?
            .auth
            .jwks_allow_http
    );
    Config::from_toml_and_env(GOOD, &jwt("https://idp.example/jwks.json"), "test.toml")?;
    let msg = match Config::from_toml_and_env(GOOD, &jwt("ftp://idp/jwks"), "test.toml") {
        Ok(c) => panic!("an ftp:// JWKS URL was accepted: {c:?}"),
        Err(e) => e.to_string(),
    };
    assert_eq!(msg, "auth.jwks_url: must be an https:// URL");
    Ok(())
}

#[test]
fn missing_key_is_named() {
    let msg = err("[kafka]\n", &[]);
    assert!(msg.contains("kafka.brokers: missing required key"), "{msg}");
}

#[test]
fn duplicate_topics_and_bad_names_are_refused() {
    let text = format!("{GOOD}\n[[topics]]\nname = \"trades\"\nformat = \"json\"\n");
    assert!(err(&text, &[]).contains("listed twice"));
    let msg = err(&GOOD.replace("\"trades\"", "\"tr ades\""), &[]);
    assert!(msg.starts_with("topics[0].name:"), "{msg}");
}

#[test]
fn env_overrides_file() -> anyhow::Result<()> {
    let c = Config::from_toml_and_env(
        GOOD,
        &env(&[
            ("LAKEWIRE_KAFKA__BROKERS", "kafka-1:9092,kafka-2:9092"),
            ("LAKEWIRE_WEBSOCKET__QUEUE_SIZE", "99"),
            ("LAKEWIRE_WEBSOCKET__SLOW_CLIENT", "disconnect"),
            ("UNRELATED", "x"),
        ]),
        "test.toml",
    )?;
    assert_eq!(c.kafka.brokers, "kafka-1:9092,kafka-2:9092");
    assert_eq!(c.websocket.queue_size, 99);
    assert_eq!(c.websocket.slow_client, SlowClientPolicy::Disconnect);
    Ok(())
}

#[test]
fn bad_env_override_names_the_variable() {
    let msg = err(GOOD, &[("LAKEWIRE_WEBSOCKET__QUEUE_SIZE", "many")]);
    assert!(msg.contains("LAKEWIRE_WEBSOCKET__QUEUE_SIZE"), "{msg}");
    let msg = err(GOOD, &[("LAKEWIRE_WEBSOCKET__QUEUE_SISE", "5")]);
    assert!(
        msg.starts_with("websocket.queue_sise: unknown key"),
        "{msg}"
    );
}

#[test]
fn in_code_config_takes_env() -> anyhow::Result<()> {
    let base = Config::from_toml_and_env(GOOD, &[], "test.toml")?;
    let c = base.with_env(&env(&[("LAKEWIRE_WEBSOCKET__LISTEN", "127.0.0.1:9999")]))?;
    assert_eq!(c.websocket.listen.port(), 9999);
    Ok(())
}

const SINK: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"

[[topics]]
name = "or.ders-v1"
format = "raw"
schema = "../schemas/order.avsc"

[[topics]]
name = "trades"
format = "json"

[sink]
root = "/tmp/lake"

[[sink.tables]]
topic = "or.ders-v1"
"#;

#[test]
fn sink_section_loads_with_defaults() -> anyhow::Result<()> {
    let c = Config::from_toml_and_env(SINK, &[], "test.toml")?;
    let s = c.sink.as_ref().ok_or_else(|| anyhow::anyhow!("no sink"))?;
    assert_eq!(s.group_id, "lakewire-sink");
    assert_eq!(s.compression, SinkCompression::Zstd);
    assert_eq!(
        (s.roll_rows, s.roll_bytes, s.roll_interval_ms),
        (1_000_000, 128 << 20, 600_000)
    );
    assert_eq!((s.max_open_files, s.max_open_bytes), (64, 256 << 20));
    assert_eq!(s.database, "default");
    assert_eq!(s.tables[0].table_name(), "or_ders_v1");
    assert_eq!(s.tables[0].partition_by, ["dt", "hr"]);
    let c = Config::from_toml_and_env(
        SINK,
        &env(&[("LAKEWIRE_SINK__COMPRESSION", "snappy")]),
        "test.toml",
    )?;
    assert_eq!(c.sink.map(|s| s.compression), Some(SinkCompression::Snappy));
    Ok(())
}

#[test]
fn sink_topics_starting_with_underscore_or_dot_are_refused() {
    for name in ["_orders", ".orders"] {
        let e = err(&SINK.replace("or.ders-v1", name), &[]);
        assert!(
            e.starts_with("sink.tables[0].topic:") && e.contains("readers skip files"),
            "{name}: {e}"
        );
    }
}

#[test]
fn bad_sink_settings_name_the_key() {
    let with = |extra: &str| SINK.replace("root = \"/tmp/lake\"", extra);
    for (text, key) in [
        (with("root = \"\""), "sink.root"),
        (with("root = \"/tmp/l\"\nroll_rows = 0"), "sink.roll_rows"),
        (
            with("root = \"/tmp/l\"\nmax_open_files = 0"),
            "sink.max_open_files",
        ),
        (
            with("root = \"/tmp/l\"\nmax_open_bytes = 10"),
            "sink.max_open_bytes",
        ),
        (
            with("root = \"/tmp/l\"\ncompression = \"lz4\""),
            "compression",
        ),
        (
            with("root = \"/tmp/l\"\nmetastore_uri = \"http://hms\""),
            "sink.metastore_uri",
        ),
        (
            with("root = \"/tmp/l\"\n[sink.s3]\nregion = \"x\""),
            "sink.s3",
        ),
        (
            SINK.replace("topic = \"or.ders-v1\"", "topic = \"nope\""),
            "sink.tables[0].topic",
        ),
        (
            SINK.replace("topic = \"or.ders-v1\"", "topic = \"trades\""),
            "sink.tables[0].topic",
        ),
        (
            format!("{SINK}partition_by = [\"dt\", \"a/b\"]\n"),
            "sink.tables[0].partition_by",
        ),
        (format!("{SINK}table = \"_x\"\n"), "sink.tables[0].table"),
    ] {
        let e = err(&text, &[]);
        assert!(e.contains(key), "{key}: {e}");
    }
}

#[test]
fn http_limits_and_admin_listener_have_defaults_and_are_checked() -> anyhow::Result<()> {
    let c = Config::from_toml_and_env(GOOD, &[], "test.toml")?;
    assert_eq!(c.websocket.header_read_timeout_ms, 10_000);
    assert_eq!(c.websocket.http_idle_timeout_ms, 60_000);
    assert_eq!(c.websocket.max_http_connections, 10_000);
    // A quarter of max_http_connections, at least 1.
    assert_eq!(c.websocket.http_connections_per_ip(), 2_500);
    let small = GOOD.replace("queue_size = 16", "max_http_connections = 2");
    let small = Config::from_toml_and_env(&small, &[], "test.toml")?;
    assert_eq!(small.websocket.http_connections_per_ip(), 1);
    assert_eq!(c.websocket.admin_listen, None);
    assert!(c.websocket.public_metrics);
    assert_eq!(c.kafka.readiness_check_ms, 5_000);
    assert_eq!(c.kafka.partition_refresh_ms, 30_000);
    let ws = |extra: &str| GOOD.replace("queue_size = 16", extra);
    for (extra, want) in [
        (
            "header_read_timeout_ms = 0",
            "websocket.header_read_timeout_ms: must be greater than 0",
        ),
        (
            "http_idle_timeout_ms = 0",
            "websocket.http_idle_timeout_ms: must be greater than 0",
        ),
        (
            "max_http_connections = 0",
            "websocket.max_http_connections: must be at least 1",
        ),
        (
            "max_http_connections_per_ip = 0",
            "websocket.max_http_connections_per_ip: must be at least 1",
        ),
        (
            "max_http_connections = 4\nmax_http_connections_per_ip = 5",
            "websocket.max_http_connections_per_ip: must not exceed websocket.max_http_connections",
        ),
        (
            "admin_listen = \"127.0.0.1:8080\"\nlisten = \"127.0.0.1:8080\"",
            "websocket.admin_listen: must differ",
        ),
        (
            "public_metrics = false",
            "websocket.public_metrics: false would leave /metrics served nowhere",
        ),
    ] {
        let text = ws(extra).replace(
            "listen = \"127.0.0.1:0\"\n",
            if extra.contains("8080") {
                ""
            } else {
                "listen = \"127.0.0.1:0\"\n"
            },
        );
        let msg = err(&text, &[]);
        assert!(msg.starts_with(want), "{extra}: {msg}");
    }
    let c = Config::from_toml_and_env(
        &ws("admin_listen = \"127.0.0.1:9100\"\npublic_metrics = false"),
        &[],
        "test.toml",
    )?;
    assert_eq!(
        c.websocket.admin_listen,
        Some(([127, 0, 0, 1], 9100).into())
    );
    for (key, want) in [
        (
            "readiness_check_ms",
            "kafka.readiness_check_ms: must be greater than 0",
        ),
        (
            "partition_refresh_ms",
            "kafka.partition_refresh_ms: must be greater than 0",
        ),
    ] {
        let text = GOOD.replace(
            "brokers = \"127.0.0.1:9092\"",
            &format!("brokers = \"127.0.0.1:9092\"\n{key} = 0"),
        );
        let msg = err(&text, &[]);
        assert!(msg.starts_with(want), "{msg}");
    }
    Ok(())
}
