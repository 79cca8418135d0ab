//! `[auth]`: who may connect (JWT bearer tokens, allowed origins).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::sources::Invalid;

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `none`: anyone who reaches the listener may read every configured topic. `jwt`: a bearer
    /// token is required; its `topics` claim says what may be read.
    #[serde(default)]
    pub mode: AuthMode,
    /// HS256 shared secret (at least 32 bytes). Prefer `LAKEWIRE_AUTH__HS256_SECRET`.
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// PEM file with the RSA public key that verifies RS256 tokens.
    #[serde(default)]
    pub rs256_public_key_file: Option<PathBuf>,
    /// PEM file with the P-256 public key that verifies ES256 tokens.
    #[serde(default)]
    pub es256_public_key_file: Option<PathBuf>,
    /// URL of a JWKS document (the identity provider's keys); replaces the key settings above.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Allows an `http://` `jwks_url` (keys fetched without TLS can be swapped in transit);
    /// for tests and trusted loopback identity providers only.
    #[serde(default)]
    pub jwks_allow_http: bool,
    /// How often the JWKS document is fetched again (also on a token with an unknown key id, at
    /// most every 10 s).
    #[serde(default = "default_jwks_refresh_seconds")]
    pub jwks_refresh_seconds: u64,
    /// Required `aud` claim, when set.
    #[serde(default)]
    pub audience: Option<String>,
    /// Required `iss` claim, when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The claim listing the topics (names or glob patterns such as `orders.*`) a token grants.
    #[serde(default = "default_topics_claim")]
    pub topics_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_seconds")]
    pub leeway_seconds: u64,
    /// Browser origins allowed to connect (`https://dash.example.com`); an upgrade or request
    /// with another `Origin` header is refused with 403. Empty: any origin. Applies in every
    /// mode.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

const fn default_jwks_refresh_seconds() -> u64 {
    300
}
fn default_topics_claim() -> String {
    "topics".into()
}
const fn default_leeway_seconds() -> u64 {
    30
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            hs256_secret: None,
            rs256_public_key_file: None,
            es256_public_key_file: None,
            jwks_url: None,
            jwks_allow_http: false,
            jwks_refresh_seconds: default_jwks_refresh_seconds(),
            audience: None,
            issuer: None,
            topics_claim: default_topics_claim(),
            leeway_seconds: default_leeway_seconds(),
            allowed_origins: Vec::new(),
        }
    }
}

/// How clients authenticate.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// No authentication.
    #[default]
    None,
    /// JWT bearer tokens.
    Jwt,
}

impl AuthConfig {
    /// Checks the section (the key files are read when the authenticator is built).
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let bad = |key: &str, why: &str| Err((key.to_string(), why.to_string()));
        let has_static_key = self.hs256_secret.is_some()
            || self.rs256_public_key_file.is_some()
            || self.es256_public_key_file.is_some();
        match self.mode {
            AuthMode::None => {
                if has_static_key || self.jwks_url.is_some() {
                    return bad(
                        "auth.mode",
                        "keys are configured but mode is \"none\": set mode = \"jwt\" to use them",
                    );
                }
            }
            AuthMode::Jwt => {
                if let Some(url) = &self.jwks_url {
                    if url.starts_with("http://") {
                        if !self.jwks_allow_http {
                            return bad(
                                "auth.jwks_url",
                                "is an http:// URL: keys fetched without TLS can be replaced in transit; use https://, or set auth.jwks_allow_http = true for a trusted local identity provider",
                            );
                        }
                    } else if !url.starts_with("https://") {
                        return bad("auth.jwks_url", "must be an https:// URL");
                    }
                } else if !has_static_key {
                    return bad(
                        "auth",
                        "mode = \"jwt\" needs hs256_secret, rs256_public_key_file, es256_public_key_file or jwks_url",
                    );
                }
                if self.hs256_secret.as_ref().is_some_and(|s| s.len() < 32) {
                    return bad("auth.hs256_secret", "must be at least 32 bytes");
                }
                if self.topics_claim.is_empty() {
                    return bad("auth.topics_claim", "must not be empty");
                }
            }
        }
        if let Some(o) = self
            .allowed_origins
            .iter()
            .find(|o| !(o.starts_with("https://") || o.starts_with("http://")) || o.ends_with('/'))
        {
            return bad(
                "auth.allowed_origins",
                &format!(
                    "{o:?} is not an origin like \"https://dash.example.com\" (scheme and host, no path)"
                ),
            );
        }
        Ok(())
    }
}
