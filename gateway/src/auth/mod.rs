//! Auth: who may connect and what they may read. Input: an HTTP upgrade's token and `Origin`;
//! output: an [`Access`] (the topics a connection may subscribe to, and until when) or an
//! [`AuthError`] that becomes 401/403/503 before any WebSocket exists.
//!
//! Tokens are JWTs (`auth.mode = "jwt"`), verified with an HS256 secret, RS256/ES256 public keys
//! from PEM files, or the keys of a JWKS URL (cached, refreshed in the background and on an
//! unknown key id). `exp` is required; `nbf` is checked; `aud` and `iss`, when configured, must be
//! present, well formed and match. The
//! `topics` claim (name configurable) lists topic names or glob patterns (`orders.*`).
//!
//! The keys come from `keys.rs` (those in the configuration) or `jwks.rs` (a JWKS URL's); this
//! module checks tokens and origins with them.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::config::{AuthConfig, AuthMode};
use crate::metrics::Metrics;

mod jwks;
mod keys;

pub use jwks::Jwks;
pub use keys::static_keys;

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

impl Authenticator {
    /// Builds the authenticator; returns the JWKS cache (to be refreshed in the background) when
    /// one is configured.
    pub fn new(c: &AuthConfig, metrics: &Metrics) -> Result<(Self, Option<Arc<Jwks>>), String> {
        let mut jwks = None;
        let keys = match c.mode {
            AuthMode::None => None,
            AuthMode::Jwt => match &c.jwks_url {
                Some(url) => {
                    let j = Arc::new(Jwks::new(url, c.jwks_refresh_seconds)?);
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
mod tests;
