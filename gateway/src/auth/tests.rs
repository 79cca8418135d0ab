//! Tests of the authenticator: tokens, refusals and their statuses, origins, token sources,
//! static keys.

use super::*;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

fn config(extra: impl FnOnce(&mut AuthConfig)) -> AuthConfig {
    let mut c = AuthConfig {
        mode: AuthMode::Jwt,
        hs256_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    };
    extra(&mut c);
    c
}

fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

fn auth(c: &AuthConfig) -> Authenticator {
    match Authenticator::new(c, &Metrics::default()) {
        Ok((a, _)) => a,
        Err(e) => panic!("{e}"),
    }
}

fn exp(in_secs: i64) -> u64 {
    (now_secs() as i64 + in_secs) as u64
}

#[tokio::test]
async fn a_valid_token_grants_its_topics_and_patterns() -> Result<(), AuthError> {
    let a = auth(&config(|_| {}));
    let access = a
        .authenticate(Some(&token(
            json!({"exp": exp(60), "topics": ["trades", "orders.*"]}),
        )))
        .await?;
    assert!(access.allows("trades"));
    assert!(access.allows("orders.eu"));
    assert!(!access.allows("orders"));
    assert!(!access.allows("payroll"));
    assert!(
        access
            .remaining()
            .is_some_and(|d| d <= Duration::from_secs(60))
    );
    Ok(())
}

#[tokio::test]
async fn refusals_have_the_right_status() {
    let a = auth(&config(|c| {
        c.audience = Some("lakewire".into());
        c.issuer = Some("https://idp".into());
        c.leeway_seconds = 0;
    }));
    let good = json!({"exp": exp(60), "aud": "lakewire", "iss": "https://idp", "topics": ["t"]});
    let check = |claims: Value| {
        let a = &a;
        async move { a.authenticate(Some(&token(claims))).await.map(|_| ()) }
    };
    assert_eq!(check(good.clone()).await, Ok(()));
    assert_eq!(
        a.authenticate(None).await.err().map(|e| e.status()),
        Some(401)
    );
    let mut expired = good.clone();
    expired["exp"] = json!(exp(-120));
    assert_eq!(check(expired).await.err().map(|e| e.status()), Some(401));
    let mut early = good.clone();
    early["nbf"] = json!(exp(3600));
    assert_eq!(check(early).await.err().map(|e| e.status()), Some(401));
    let mut aud = good.clone();
    aud["aud"] = json!("someone-else");
    assert_eq!(check(aud).await.err().map(|e| e.status()), Some(401));
    let mut iss = good.clone();
    iss["iss"] = json!("https://evil");
    assert_eq!(check(iss).await.err().map(|e| e.status()), Some(401));
    let no_exp = json!({"aud": "lakewire", "iss": "https://idp", "topics": ["t"]});
    assert_eq!(check(no_exp).await.err().map(|e| e.status()), Some(401));
    // A configured audience and issuer must be present and well formed.
    let mut in_a_list = good.clone();
    in_a_list["aud"] = json!(["other", "lakewire"]);
    assert_eq!(check(in_a_list).await, Ok(()));
    let refused = |field: &str, value: Option<Value>| {
        let mut claims = good.clone();
        match value {
            Some(v) => claims[field] = v,
            None => {
                if let Some(o) = claims.as_object_mut() {
                    o.remove(field);
                }
            }
        }
        claims
    };
    for claims in [
        refused("aud", None),
        refused("aud", Some(json!(42))),
        refused("aud", Some(json!(null))),
        refused("aud", Some(json!({"lakewire": true}))),
        refused("aud", Some(json!(["lakewire", 7]))),
        refused("aud", Some(json!([]))),
        refused("iss", None),
        refused("iss", Some(json!(42))),
        refused("iss", Some(json!(["https://idp"]))),
        refused("iss", Some(json!(null))),
    ] {
        let got = check(claims.clone()).await;
        assert!(
            matches!(got, Err(AuthError::Invalid(_))),
            "{claims} gave {got:?}; a missing or malformed aud/iss must be refused with 401"
        );
    }
    // Without audience and issuer configured, tokens need neither.
    let open = auth(&config(|_| {}));
    assert!(
        open.authenticate(Some(&token(json!({"exp": exp(60), "topics": ["t"]}))))
            .await
            .is_ok()
    );
    let mut no_topics = good.clone();
    no_topics["topics"] = json!([]);
    assert_eq!(check(no_topics).await.err().map(|e| e.status()), Some(403));
    // Signed with another secret.
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(b"another-secret-that-is-also-long-enough!!"),
    )
    .unwrap_or_default();
    assert_eq!(
        a.authenticate(Some(&forged))
            .await
            .err()
            .map(|e| e.status()),
        Some(401)
    );
    assert_eq!(
        a.authenticate(Some("not.a.jwt"))
            .await
            .err()
            .map(|e| e.status()),
        Some(401)
    );
}

#[tokio::test]
async fn mode_none_grants_everything() -> Result<(), AuthError> {
    let a = auth(&AuthConfig::default());
    assert!(!a.requires_token());
    assert!(a.authenticate(None).await?.allows("anything"));
    Ok(())
}

#[test]
fn origins_are_checked_only_when_listed_and_present() {
    let a = auth(&config(|c| {
        c.allowed_origins = vec!["https://dash.example.com".into()]
    }));
    assert!(a.check_origin(Some("https://dash.example.com")).is_ok());
    assert_eq!(
        a.check_origin(Some("https://evil.example"))
            .err()
            .map(|e| e.status()),
        Some(403)
    );
    assert!(a.check_origin(None).is_ok());
    assert!(
        auth(&config(|_| {}))
            .check_origin(Some("https://any"))
            .is_ok()
    );
}

#[test]
fn token_sources_in_order() {
    assert_eq!(
        token_from(Some("Bearer abc"), Some("bearer.def"), Some("ghi")).as_deref(),
        Some("abc")
    );
    assert_eq!(
        token_from(None, Some("lakewire.v1, bearer.def"), Some("ghi")).as_deref(),
        Some("def")
    );
    assert_eq!(
        token_from(None, Some("lakewire.v1"), Some("ghi")).as_deref(),
        Some("ghi")
    );
    assert_eq!(token_from(Some("Basic xyz"), None, None), None);
}

#[test]
fn short_secrets_are_refused() {
    let c = config(|c| c.hs256_secret = Some("short".into()));
    assert!(static_keys(&c).is_err());
}
