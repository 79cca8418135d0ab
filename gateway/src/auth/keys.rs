//! Static keys: the token keys written in the configuration. Input: an [`AuthConfig`] (an HS256
//! secret, RS256/ES256 public key PEM files); output: one decoding key per algorithm, or a
//! message naming the config key at fault. Config validation calls it too, so a bad key file
//! is a configuration error before anything starts.

use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::AuthConfig;

/// Reads the static keys the configuration names. The authenticator is built by
/// [`crate::app::check`] too, so a bad key file is a configuration error (exit 64).
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
