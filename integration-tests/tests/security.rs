//! Authentication, authorization, origins and limits, as a client meets them: real HTTP and
//! WebSocket on loopback against the demo's gateway (in-process broker). Each refused case and
//! each allowed case is asserted.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lakewire_integration_tests::{Frame, connect_with, http_get_with, serve_json};
use serde_json::{Value, json};

const SECRET: &str = "integration-test-secret-0123456789abcdef";
const T: Duration = Duration::from_secs(10);

fn fixture(name: &str) -> String {
    format!("{}/fixtures/auth/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn demo(pairs: &[(&str, &str)]) -> anyhow::Result<lakewire::demo::Demo> {
    let listen: SocketAddr = "127.0.0.1:0".parse()?;
    Ok(lakewire::demo::start(listen, &env(pairs)).await?)
}

fn jwt_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("LAKEWIRE_AUTH__MODE", "jwt"),
        ("LAKEWIRE_AUTH__HS256_SECRET", SECRET),
        ("LAKEWIRE_AUTH__LEEWAY_SECONDS", "0"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_is_required_checked_and_scoped_to_its_topics() -> anyhow::Result<()> {
    let demo = demo(&jwt_env()).await?;
    let addr = demo.running.addr;
    let good = hs256(json!({"exp": now() + 600, "topics": ["trades"]}));
    let bearer = format!("Bearer {good}");

    // Refused before any WebSocket exists.
    assert_eq!(
        connect_with(addr, "", &[]).await.err(),
        Some(401),
        "no token"
    );
    let expired = hs256(json!({"exp": now() - 60, "topics": ["trades"]}));
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": now() + 600, "topics": ["trades"]}),
        &EncodingKey::from_secret(b"not-the-secret-not-the-secret-not-the-secret"),
    )?;
    let none_granted = hs256(json!({"exp": now() + 600, "topics": []}));
    for (token, status) in [(&expired, 401), (&forged, 401), (&none_granted, 403)] {
        let h = format!("Bearer {token}");
        assert_eq!(
            connect_with(addr, "", &[("authorization", &h)]).await.err(),
            Some(status)
        );
    }

    // Allowed, by header; the token's topics bound what may be subscribed.
    let (mut ws, _) = connect_with(addr, "", &[("authorization", &bearer)])
        .await
        .map_err(|s| anyhow::anyhow!("refused: {s}"))?;
    ws.subscribe(json!({"op":"subscribe","id":"t","topic":"trades"}))
        .await?;
    ws.send(json!({"op":"subscribe","id":"s","topic":"sensors"}))
        .await?;
    let e = ws.next_reply(T).await?;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("forbidden"), Some("s")),
        "{e}"
    );

    // By query parameter, and by subprotocol (the server answers with one the client offered).
    let (_, proto) = connect_with(addr, &format!("?token={good}"), &[])
        .await
        .map_err(|s| anyhow::anyhow!("query token refused: {s}"))?;
    assert_eq!(proto, None);
    let offered = format!("lakewire.v1, bearer.{good}");
    let (_, proto) = connect_with(addr, "", &[("sec-websocket-protocol", &offered)])
        .await
        .map_err(|s| anyhow::anyhow!("subprotocol token refused: {s}"))?;
    assert_eq!(proto.as_deref(), Some("lakewire.v1"));

    // /api/topics lists only what the token grants; without a token it is refused.
    let (status, body) = http_get_with(addr, "/api/topics", &[("authorization", &bearer)]).await?;
    assert_eq!(status, 200);
    let names: Vec<Value> = serde_json::from_str::<Value>(&body)?
        .as_array()
        .map(|a| a.iter().map(|t| t["name"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(names, vec![json!("trades")]);
    assert_eq!(http_get_with(addr, "/api/topics", &[]).await?.0, 401);
    // And /sse likewise.
    assert_eq!(http_get_with(addr, "/sse?topic=trades", &[]).await?.0, 401);
    let sse_forbidden = format!("/sse?topic=sensors&token={good}");
    assert_eq!(http_get_with(addr, &sse_forbidden, &[]).await?.0, 403);

    let (_, metrics) = http_get_with(addr, "/metrics", &[]).await?;
    assert!(
        metrics.contains("lakewire_auth_refused_total{reason=\"missing_token\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lakewire_auth_refused_total{reason=\"invalid_token\"} 2"),
        "{metrics}"
    );
    demo.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_token_closes_4001_unless_renewed() -> anyhow::Result<()> {
    let demo = demo(&jwt_env()).await?;
    let addr = demo.running.addr;
    // Renewed in time: lives past the first token's expiry.
    let short = hs256(json!({"exp": now() + 2, "topics": ["trades", "sensors"]}));
    let (mut renewed, _) = connect_with(addr, &format!("?token={short}"), &[])
        .await
        .map_err(|s| anyhow::anyhow!("refused: {s}"))?;
    renewed
        .subscribe(json!({"op":"subscribe","id":"s","topic":"sensors"}))
        .await?;
    renewed
        .subscribe(json!({"op":"subscribe","id":"t","topic":"trades"}))
        .await?;
    let longer = hs256(json!({"exp": now() + 600, "topics": ["trades"]}));
    renewed.send(json!({"op":"auth","token":longer})).await?;
    let a = renewed.next_reply(T).await?;
    assert_eq!(a["type"], "authenticated", "{a}");
    // The new token no longer grants sensors: that subscription ends.
    let e = renewed.next_reply(T).await?;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("forbidden"), Some("s")),
        "{e}"
    );
    // A bad token is refused and the connection keeps the one it has.
    renewed.send(json!({"op":"auth","token":"garbage"})).await?;
    assert_eq!(renewed.next_reply(T).await?["code"], "forbidden");

    // Not renewed: closed with 4001.
    let (mut lapsed, _) = connect_with(addr, &format!("?token={short}"), &[])
        .await
        .map_err(|s| anyhow::anyhow!("refused: {s}"))?;
    let code = loop {
        match lapsed.next(T).await? {
            Frame::Json(_) => continue,
            Frame::Closed(c) => break c.map(|c| c.0),
        }
    };
    assert_eq!(code, Some(4001));
    // The renewed one still works after the short token's expiry.
    renewed.send(json!({"op":"ping"})).await?;
    assert_eq!(renewed.next_reply(T).await?, json!({"type":"pong"}));
    demo.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_from_a_key_file_and_from_a_jwks_url() -> anyhow::Result<()> {
    let private = std::fs::read(fixture("rsa-private.pem"))?;
    let key = EncodingKey::from_rsa_pem(&private)?;
    let mut header = Header::new(Algorithm::RS256);
    let claims = json!({"exp": now() + 600, "topics": ["trades"], "aud": "lakewire"});

    let public = fixture("rsa-public.pem");
    let demo1 = demo(&[
        ("LAKEWIRE_AUTH__MODE", "jwt"),
        ("LAKEWIRE_AUTH__RS256_PUBLIC_KEY_FILE", &public),
        ("LAKEWIRE_AUTH__AUDIENCE", "lakewire"),
    ])
    .await?;
    let token = jsonwebtoken::encode(&header, &claims, &key)?;
    assert!(
        connect_with(demo1.running.addr, &format!("?token={token}"), &[])
            .await
            .is_ok()
    );
    let wrong_aud = jsonwebtoken::encode(
        &header,
        &json!({"exp": now() + 600, "topics": ["trades"], "aud": "x"}),
        &key,
    )?;
    assert_eq!(
        connect_with(demo1.running.addr, &format!("?token={wrong_aud}"), &[])
            .await
            .err(),
        Some(401)
    );
    // An HS256 token cannot pass where RS256 is configured (no algorithm confusion).
    let hs = hs256(claims.clone());
    assert_eq!(
        connect_with(demo1.running.addr, &format!("?token={hs}"), &[])
            .await
            .err(),
        Some(401)
    );
    demo1.stop().await;

    let jwks = serve_json(std::fs::read_to_string(fixture("jwks.json"))?).await?;
    let url = format!("http://{jwks}/.well-known/jwks.json");
    let demo2 = demo(&[
        ("LAKEWIRE_AUTH__MODE", "jwt"),
        ("LAKEWIRE_AUTH__JWKS_URL", &url),
        // The test's JWKS server is plain HTTP on loopback.
        ("LAKEWIRE_AUTH__JWKS_ALLOW_HTTP", "true"),
    ])
    .await?;
    header.kid = Some("test-1".into());
    let token = jsonwebtoken::encode(&header, &claims, &key)?;
    assert!(
        connect_with(demo2.running.addr, &format!("?token={token}"), &[])
            .await
            .is_ok()
    );
    header.kid = Some("rotated-away".into());
    let unknown_kid = jsonwebtoken::encode(&header, &claims, &key)?;
    assert_eq!(
        connect_with(demo2.running.addr, &format!("?token={unknown_kid}"), &[])
            .await
            .err(),
        Some(401)
    );
    demo2.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_from_a_key_file() -> anyhow::Result<()> {
    let key = EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-private.pem"))?)?;
    let public = fixture("ec-public.pem");
    let demo = demo(&[
        ("LAKEWIRE_AUTH__MODE", "jwt"),
        ("LAKEWIRE_AUTH__ES256_PUBLIC_KEY_FILE", &public),
    ])
    .await?;
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &json!({"exp": now() + 600, "topics": ["*"]}),
        &key,
    )?;
    let (mut ws, _) = connect_with(demo.running.addr, &format!("?token={token}"), &[])
        .await
        .map_err(|s| anyhow::anyhow!("refused: {s}"))?;
    ws.subscribe(json!({"op":"subscribe","id":"s","topic":"sensors"}))
        .await?;
    demo.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_origins_may_connect() -> anyhow::Result<()> {
    let demo = demo(&[(
        "LAKEWIRE_AUTH__ALLOWED_ORIGINS",
        "[\"https://dash.example.com\"]",
    )])
    .await?;
    let addr = demo.running.addr;
    assert!(
        connect_with(addr, "", &[("origin", "https://dash.example.com")])
            .await
            .is_ok()
    );
    assert_eq!(
        connect_with(addr, "", &[("origin", "https://evil.example")])
            .await
            .err(),
        Some(403)
    );
    assert!(
        connect_with(addr, "", &[]).await.is_ok(),
        "non-browser clients send no Origin"
    );
    demo.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_refuse_with_429_and_503() -> anyhow::Result<()> {
    let demo = demo(&[("LAKEWIRE_WEBSOCKET__MAX_CONNECTIONS_PER_IP", "2")]).await?;
    let addr = demo.running.addr;
    let a = connect_with(addr, "", &[]).await;
    let b = connect_with(addr, "", &[]).await;
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(connect_with(addr, "", &[]).await.err(), Some(429));
    // A place frees when a connection ends.
    if let Ok((ws, _)) = a {
        ws.close().await?;
    }
    let mut admitted = false;
    for _ in 0..50 {
        if connect_with(addr, "", &[]).await.is_ok() {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "the closed connection's place was not freed");
    demo.stop().await;

    let demo = demo_with_max(1).await?;
    let addr = demo.running.addr;
    let _first = connect_with(addr, "", &[])
        .await
        .map_err(|s| anyhow::anyhow!("{s}"))?;
    assert_eq!(connect_with(addr, "", &[]).await.err(), Some(503));
    let (_, metrics) = http_get_with(addr, "/metrics", &[]).await?;
    assert!(
        metrics.contains("lakewire_ws_refused_total{reason=\"max_connections\"} 1"),
        "{metrics}"
    );
    demo.stop().await;
    Ok(())
}

async fn demo_with_max(n: usize) -> anyhow::Result<lakewire::demo::Demo> {
    let n = n.to_string();
    demo(&[("LAKEWIRE_WEBSOCKET__MAX_CONNECTIONS", &n)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_messages_is_closed_and_others_carry_on() -> anyhow::Result<()> {
    let demo = demo(&[("LAKEWIRE_WEBSOCKET__MAX_MESSAGES_PER_SECOND", "20")]).await?;
    let addr = demo.running.addr;
    let (mut calm, _) = connect_with(addr, "", &[])
        .await
        .map_err(|s| anyhow::anyhow!("{s}"))?;
    calm.subscribe(json!({"op":"subscribe","id":"t","topic":"trades"}))
        .await?;
    let (mut flood, _) = connect_with(addr, "", &[])
        .await
        .map_err(|s| anyhow::anyhow!("{s}"))?;
    let mut closed = None;
    for i in 0..10_000 {
        if flood.send_text(&format!("garbage {i} {{{{")).await.is_err() {
            break;
        }
    }
    while closed.is_none() {
        match flood.next(T).await {
            Ok(Frame::Closed(c)) => closed = Some(c.map(|c| c.0)),
            Ok(Frame::Json(_)) => {}
            Err(_) => break,
        }
    }
    assert_eq!(
        closed,
        Some(Some(1008)),
        "the flooding client is closed with 1008"
    );
    let (records, _) = calm.records("t", 3, T).await?;
    assert!(records.len() >= 3, "the other client still receives");
    demo.stop().await;
    Ok(())
}
