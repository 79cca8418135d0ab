//! JWKS: the token keys of a JWKS URL (`auth.jwks_url`). Input: the URL and a refresh
//! interval; output: the keys by key id (and those without one), fetched on start, refreshed
//! in the background and again, at most every 10 s, when a token names a key id not yet seen
//! (a rotated key). A failed fetch keeps the keys already held.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};

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
    /// An empty cache for the JWKS at `url`, refreshed every `refresh_seconds` (at least 1) by
    /// [`Jwks::run`]; nothing is fetched yet.
    pub(super) fn new(url: &str, refresh_seconds: u64) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("auth.jwks_url: cannot build an HTTP client: {e}"))?;
        Ok(Self {
            url: url.to_string(),
            client,
            state: RwLock::new(JwksState::default()),
            refresh: Duration::from_secs(refresh_seconds.max(1)),
        })
    }

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

    /// The keys a token with key id `kid` may be signed with: that key, or every key when the
    /// token names none.
    pub(super) fn lookup(&self, kid: Option<&str>) -> Vec<(Algorithm, DecodingKey)> {
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

    /// Whether the last fetch attempt is at least 10 s old.
    pub(super) fn may_refetch(&self) -> bool {
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
