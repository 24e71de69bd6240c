//! The keys tokens may be signed with, read from a JWKS or from PEM public keys.
//!
//! A JWKS key is used for the algorithm its kind implies (OKP Ed25519: EdDSA, EC
//! P-256: ES256, RSA: RS256; a key naming another `alg` is skipped) and is chosen by
//! `kid` when the token names one. A PEM file may hold several `PUBLIC KEY` blocks;
//! they have no `kid`, so every key of the token's algorithm is tried.

use std::path::Path;
use std::time::SystemTime;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::{KEYS_MAX, KEY_FILE_BYTES_MAX};

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys of one file.
#[derive(Default)]
pub(super) struct KeySet(Vec<Key>);

impl KeySet {
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// The keys a token with `kid` and `alg` may be signed with.
    pub(super) fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<&DecodingKey> {
        let of_alg = self.0.iter().filter(|k| k.alg == alg);
        match kid {
            Some(kid) if self.0.iter().any(|k| k.kid.is_some()) => of_alg
                .filter(|k| k.kid.as_deref() == Some(kid))
                .map(|k| &k.key)
                .collect(),
            _ => of_alg.map(|k| &k.key).collect(),
        }
    }
}

/// Reads `path`, with its modification time.
pub(super) fn read(path: &Path) -> Result<(KeySet, Option<SystemTime>), String> {
    let what = || format!("auth keys {}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", what()))?;
    if meta.len() > KEY_FILE_BYTES_MAX as u64 {
        return Err(format!(
            "{}: larger than {KEY_FILE_BYTES_MAX} bytes",
            what()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", what()))?;
    let keys = parse(&text).map_err(|e| format!("{}: {e}", what()))?;
    Ok((keys, meta.modified().ok()))
}

/// Parses a JWKS (text starting with `{`) or PEM public keys.
pub(super) fn parse(text: &str) -> Result<KeySet, String> {
    if text.len() > KEY_FILE_BYTES_MAX {
        return Err(format!("larger than {KEY_FILE_BYTES_MAX} bytes"));
    }
    let keys = if text.trim_start().starts_with('{') {
        from_jwks(text)?
    } else {
        from_pem(text)?
    };
    if keys.is_empty() {
        return Err("no usable key (EdDSA, ES256 or RS256 public keys)".into());
    }
    if keys.len() > KEYS_MAX {
        return Err(format!("more than {KEYS_MAX} keys"));
    }
    Ok(KeySet(keys))
}

fn from_jwks(text: &str) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for jwk in set.keys.iter().take(KEYS_MAX + 1) {
        let alg = match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            _ => continue,
        };
        let named = jwk.common.key_algorithm;
        if named.is_some_and(|n| !same(n, alg)) {
            continue;
        }
        let key =
            DecodingKey::from_jwk(jwk).map_err(|e| format!("key {:?}: {e}", jwk.common.key_id))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    Ok(keys)
}

fn same(named: KeyAlgorithm, alg: Algorithm) -> bool {
    matches!(
        (named, alg),
        (KeyAlgorithm::EdDSA, Algorithm::EdDSA)
            | (KeyAlgorithm::ES256, Algorithm::ES256)
            | (KeyAlgorithm::RS256, Algorithm::RS256)
    )
}

/// Every `PUBLIC KEY` block, as the kind of key it holds.
fn from_pem(text: &str) -> Result<Vec<Key>, String> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let mut keys = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            return Err("a PEM block without its end".into());
        };
        let block = &rest[start..start + len + END.len()];
        rest = &rest[start + len + END.len()..];
        if keys.len() > KEYS_MAX {
            break;
        }
        let pem = block.as_bytes();
        let key = if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            Key {
                kid: None,
                alg: Algorithm::EdDSA,
                key: k,
            }
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            Key {
                kid: None,
                alg: Algorithm::ES256,
                key: k,
            }
        } else if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            Key {
                kid: None,
                alg: Algorithm::RS256,
                key: k,
            }
        } else {
            return Err("a PEM public key of no supported kind (Ed25519, P-256, RSA)".into());
        };
        keys.push(key);
    }
    Ok(keys)
}
