//! Auth: who may connect and what they may read. Input: an HTTP upgrade's token and `Origin`;
//! output: an [`Access`] (the topics a connection may subscribe to, and until when) or an
//! [`AuthError`] that becomes 401/403/503 before any WebSocket exists.
//!
//! Tokens are JWTs (`auth.mode = "jwt"`), verified with an HS256 secret, RS256/ES256 public keys
//! from PEM files, or the keys of a JWKS URL (cached, refreshed in the background and on an
//! unknown key id). `exp` is required; `nbf` is checked; `aud` and `iss`, when configured, must be
//! present, well formed and match. The
//! `topics` claim (name configurable) lists topic names or glob patterns (`orders.*`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::config::{AuthConfig, AuthMode};
use crate::metrics::Metrics;

/// Why a connection or request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented (401).
    #[error("a bearer token is required")]
    Missing,
    /// The token is malformed, badly signed, expired, not yet valid, or for another audience or
    /// issuer (401).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token is valid but grants nothing here, or the Origin is not allowed (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The keys to check the token with cannot be had right now (503).
    #[error("token keys unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Invalid(_) => 401,
            AuthError::Forbidden(_) => 403,
            AuthError::Unavailable(_) => 503,
        }
    }

    /// The `reason` label of `lakewire_auth_refused_total`.
    pub const fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Invalid(_) => "invalid_token",
            AuthError::Forbidden(_) => "forbidden",
            AuthError::Unavailable(_) => "keys_unavailable",
        }
    }
}

/// What an authenticated connection may do.
#[derive(Debug, Clone)]
pub struct Access {
    /// `None`: every topic (auth mode `none`).
    topics: Option<Vec<glob::Pattern>>,
    /// When the token expires (seconds since the epoch); `None` for no expiry.
    pub expires_at: Option<u64>,
}

impl Access {
    /// Everything, forever (auth mode `none`).
    pub fn all() -> Self {
        Self {
            topics: None,
            expires_at: None,
        }
    }

    /// Whether `topic` may be read.
    pub fn allows(&self, topic: &str) -> bool {
        match &self.topics {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.matches(topic)),
        }
    }

    /// Time left before the token expires, from now.
    pub fn remaining(&self) -> Option<Duration> {
        self.expires_at
            .map(|at| Duration::from_secs(at.saturating_sub(now_secs())))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The keys tokens are checked with.
enum Keys {
    /// From the configuration: one key per algorithm.
    Static(Vec<(Algorithm, DecodingKey)>),
    /// From a JWKS URL.
    Jwks(Arc<Jwks>),
}

/// A JWKS document, fetched and cached.
pub struct Jwks {
    url: String,
    client: reqwest::Client,
    state: RwLock<JwksState>,
    refresh: Duration,
}

#[derive(Default)]
struct JwksState {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    /// Keys without a `kid`, tried in turn.
    anonymous: Vec<(Algorithm, DecodingKey)>,
    fetched: Option<Instant>,
    last_attempt: Option<Instant>,
}

impl Jwks {
    /// Fetches the document now; keeps the old keys when that fails.
    pub async fn refresh(&self) -> Result<(), String> {
        if let Ok(mut st) = self.state.write() {
            st.last_attempt = Some(Instant::now());
        }
        let set: JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("fetching {}: {e}", self.url))?
            .bytes()
            .await
            .map_err(|e| format!("reading {}: {e}", self.url))
            .and_then(|b| {
                serde_json::from_slice(&b).map_err(|e| format!("{} is not a JWKS: {e}", self.url))
            })?;
        let mut keys = HashMap::new();
        let mut anonymous = Vec::new();
        for jwk in &set.keys {
            let Some(alg) = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok())
                .or_else(|| default_alg(jwk))
            else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.insert(kid.clone(), (alg, key));
                }
                None => anonymous.push((alg, key)),
            }
        }
        let mut st = self
            .state
            .write()
            .map_err(|_| "JWKS cache poisoned".to_string())?;
        st.keys = keys;
        st.anonymous = anonymous;
        st.fetched = Some(Instant::now());
        Ok(())
    }

    fn lookup(&self, kid: Option<&str>) -> Vec<(Algorithm, DecodingKey)> {
        let Ok(st) = self.state.read() else {
            return Vec::new();
        };
        match kid.and_then(|k| st.keys.get(k)) {
            Some(k) => vec![k.clone()],
            None if kid.is_none() => st
                .anonymous
                .iter()
                .chain(st.keys.values())
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    }

    fn may_refetch(&self) -> bool {
        self.state.read().is_ok_and(|st| {
            st.last_attempt
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        })
    }

    /// Refreshes every `refresh` interval until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        loop {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "JWKS refresh failed; keeping the keys we have");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.refresh) => {}
            }
        }
    }
}

fn default_alg(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::AlgorithmParameters as P;
    match &jwk.algorithm {
        P::RSA(_) => Some(Algorithm::RS256),
        P::EllipticCurve(_) => Some(Algorithm::ES256),
        _ => None,
    }
}

/// Checks tokens and origins as configured.
pub struct Authenticator {
    mode: AuthMode,
    keys: Option<Keys>,
    audience: Option<String>,
    issuer: Option<String>,
    topics_claim: String,
    leeway: u64,
    allowed_origins: Vec<String>,
    metrics: Metrics,
}

/// Reads the static keys the configuration names. Used by config validation too, so a bad key
/// file is a configuration error (exit 64).
pub fn static_keys(c: &AuthConfig) -> Result<Vec<(Algorithm, DecodingKey)>, String> {
    let mut keys = Vec::new();
    if let Some(secret) = &c.hs256_secret {
        if secret.len() < 32 {
            return Err("auth.hs256_secret: must be at least 32 bytes".into());
        }
        keys.push((
            Algorithm::HS256,
            DecodingKey::from_secret(secret.as_bytes()),
        ));
    }
    if let Some(path) = &c.rs256_public_key_file {
        let key = pem_key(
            path,
            "rs256_public_key_file",
            "an RSA",
            DecodingKey::from_rsa_pem,
        )?;
        keys.push((Algorithm::RS256, key));
    }
    if let Some(path) = &c.es256_public_key_file {
        let key = pem_key(
            path,
            "es256_public_key_file",
            "a P-256",
            DecodingKey::from_ec_pem,
        )?;
        keys.push((Algorithm::ES256, key));
    }
    Ok(keys)
}

/// Reads a PEM public key file named by the config key `auth.<key>`.
fn pem_key(
    path: &std::path::Path,
    key: &str,
    kind: &str,
    parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>,
) -> Result<DecodingKey, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("auth.{key}: cannot read {}: {e}", path.display()))?;
    parse(&pem).map_err(|e| {
        format!(
            "auth.{key}: {} is not {kind} public key in PEM: {e}",
            path.display()
        )
    })
}

impl Authenticator {
    /// Builds the authenticator; returns the JWKS cache (to be refreshed in the background) when
    /// one is configured.
    pub fn new(c: &AuthConfig, metrics: &Metrics) -> Result<(Self, Option<Arc<Jwks>>), String> {
        let mut jwks = None;
        let keys = match c.mode {
            AuthMode::None => None,
            AuthMode::Jwt => match &c.jwks_url {
                Some(url) => {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .map_err(|e| format!("auth.jwks_url: cannot build an HTTP client: {e}"))?;
                    let j = Arc::new(Jwks {
                        url: url.clone(),
                        client,
                        state: RwLock::new(JwksState::default()),
                        refresh: Duration::from_secs(c.jwks_refresh_seconds.max(1)),
                    });
                    jwks = Some(j.clone());
                    Some(Keys::Jwks(j))
                }
                None => Some(Keys::Static(static_keys(c)?)),
            },
        };
        Ok((
            Self {
                mode: c.mode,
                keys,
                audience: c.audience.clone(),
                issuer: c.issuer.clone(),
                topics_claim: c.topics_claim.clone(),
                leeway: c.leeway_seconds,
                allowed_origins: c.allowed_origins.clone(),
                metrics: metrics.clone(),
            },
            jwks,
        ))
    }

    /// True when connections need a token.
    pub fn requires_token(&self) -> bool {
        self.mode == AuthMode::Jwt
    }

    /// Refuses a browser request from an Origin not on `auth.allowed_origins` (when the list is
    /// not empty). Requests without an Origin (not from a browser) pass.
    pub fn check_origin(&self, origin: Option<&str>) -> Result<(), AuthError> {
        match origin {
            Some(o)
                if !self.allowed_origins.is_empty()
                    && !self.allowed_origins.iter().any(|a| a == o) =>
            {
                Err(self.refused(AuthError::Forbidden(format!("origin {o:?} is not allowed"))))
            }
            _ => Ok(()),
        }
    }

    fn refused(&self, e: AuthError) -> AuthError {
        self.metrics.auth_refused(e.reason());
        e
    }

    /// Checks `token` and returns what it grants.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Access, AuthError> {
        match self.verify(token).await {
            Ok(a) => Ok(a),
            Err(e) => Err(self.refused(e)),
        }
    }

    async fn verify(&self, token: Option<&str>) -> Result<Access, AuthError> {
        let Some(keys) = &self.keys else {
            return Ok(Access::all());
        };
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed: {e}")))?;
        let candidates: Vec<(Algorithm, DecodingKey)> = match keys {
            Keys::Static(k) => k
                .iter()
                .filter(|(a, _)| *a == header.alg)
                .cloned()
                .collect(),
            Keys::Jwks(j) => {
                let mut found = j.lookup(header.kid.as_deref());
                if found.is_empty() && j.may_refetch() {
                    // An unknown key id may be a rotated key: fetch again (at most every 10 s).
                    j.refresh().await.map_err(AuthError::Unavailable)?;
                    found = j.lookup(header.kid.as_deref());
                }
                found
                    .into_iter()
                    .filter(|(a, _)| *a == header.alg)
                    .collect()
            }
        };
        if candidates.is_empty() {
            return Err(AuthError::Invalid(format!(
                "no key for algorithm {:?}{}",
                header.alg,
                header
                    .kid
                    .map(|k| format!(" and key id {k:?}"))
                    .unwrap_or_default()
            )));
        }
        // A configured audience or issuer must be present, not merely match when present.
        let mut required = vec!["exp"];
        if self.audience.is_some() {
            required.push("aud");
        }
        if self.issuer.is_some() {
            required.push("iss");
        }
        let mut last = String::new();
        for (alg, key) in candidates {
            let mut v = Validation::new(alg);
            v.leeway = self.leeway;
            v.validate_nbf = true;
            v.set_required_spec_claims(&required);
            match &self.audience {
                Some(a) => v.set_audience(&[a]),
                None => v.validate_aud = false,
            }
            if let Some(i) = &self.issuer {
                v.set_issuer(&[i]);
            }
            match jsonwebtoken::decode::<Value>(token, &key, &v) {
                Ok(data) => {
                    self.check_aud_iss(&data.claims)?;
                    return self.access(&data.claims);
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(AuthError::Invalid(last))
    }

    /// Checks `aud` and `iss` again on the claims themselves, whatever the JWT library makes of
    /// a claim of the wrong type: when configured, `aud` must be the audience or a list of
    /// strings holding it, and `iss` must be the issuer, as a string.
    fn check_aud_iss(&self, claims: &Value) -> Result<(), AuthError> {
        if let Some(want) = &self.audience {
            let problem = match claims.get("aud") {
                None => Some("the token has no \"aud\" claim; this gateway requires one".into()),
                Some(Value::String(s)) if s == want => None,
                Some(Value::Array(a))
                    if a.iter().all(Value::is_string)
                        && a.iter().any(|v| v.as_str() == Some(want)) =>
                {
                    None
                }
                Some(Value::String(_) | Value::Array(_)) => {
                    Some(format!("the token is not for audience {want:?}"))
                }
                Some(_) => {
                    Some("the token's \"aud\" claim is not a string or a list of strings".into())
                }
            };
            if let Some(p) = problem {
                return Err(AuthError::Invalid(p));
            }
        }
        if let Some(want) = &self.issuer {
            let problem = match claims.get("iss") {
                None => Some("the token has no \"iss\" claim; this gateway requires one".into()),
                Some(Value::String(s)) if s == want => None,
                Some(Value::String(_)) => Some(format!("the token is not from issuer {want:?}")),
                Some(_) => Some("the token's \"iss\" claim is not a string".into()),
            };
            if let Some(p) = problem {
                return Err(AuthError::Invalid(p));
            }
        }
        Ok(())
    }

    fn access(&self, claims: &Value) -> Result<Access, AuthError> {
        let names: Vec<&str> = match claims.get(&self.topics_claim) {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(s)) => s.split_whitespace().collect(),
            _ => Vec::new(),
        };
        if names.is_empty() {
            return Err(AuthError::Forbidden(format!(
                "the token's {:?} claim grants no topic",
                self.topics_claim
            )));
        }
        let patterns = names
            .iter()
            .map(|n| {
                glob::Pattern::new(n).map_err(|e| {
                    AuthError::Invalid(format!("bad topic pattern {n:?} in the token: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Access {
            topics: Some(patterns),
            expires_at: claims.get("exp").and_then(Value::as_u64),
        })
    }
}

/// The token of a request: `Authorization: Bearer <t>`, a `bearer.<t>` WebSocket subprotocol
/// (browsers cannot set headers on a WebSocket), or a `token` query parameter.
pub fn token_from(
    authorization: Option<&str>,
    subprotocols: Option<&str>,
    query_token: Option<&str>,
) -> Option<String> {
    if let Some(t) = authorization.and_then(|h| {
        h.strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
    }) {
        return Some(t.trim().to_string());
    }
    if let Some(t) = subprotocols.and_then(|p| {
        p.split(',')
            .map(str::trim)
            .find_map(|p| p.strip_prefix("bearer."))
    }) {
        return Some(t.to_string());
    }
    query_token.map(str::to_string)
}

#[cfg(test)]
mod tests {
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
        let good =
            json!({"exp": exp(60), "aud": "lakewire", "iss": "https://idp", "topics": ["t"]});
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
}
