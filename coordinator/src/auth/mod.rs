//! Who is calling: bearer tokens (JWT) verified where calls enter, and the roles they
//! carry.
//!
//! A token is a JWT signed by the identity provider (or by `seatd token issue`), with
//! `sub` (the user id), `role` (`buyer` or `operator`), `iss`, `aud`, `exp` and
//! optionally `nbf`. The keys that may sign tokens come from one file (`--auth-keys`):
//! a JWKS (`{"keys": [...]}`, keys chosen by `kid`, several at once for rotation) or
//! PEM public keys (every one tried). The file is read again when it changes
//! ([`Verifier::verify`] looks at most once per [`KEYS_RECHECK_MS`]), so a key is
//! rotated by rewriting the file, without a restart.
//!
//! Invariants:
//! - Only EdDSA, ES256 and RS256 are accepted, each only with a key of its own kind:
//!   a token cannot pick `none` or a symmetric algorithm.
//! - Sizes are bounded before anything is parsed: a token over [`TOKEN_BYTES_MAX`], a
//!   key file over [`KEY_FILE_BYTES_MAX`] or with more than [`KEYS_MAX`] keys is
//!   refused.
//! - A key file that cannot be read or parsed on a re-read leaves the keys in force
//!   (logged): a half-written file never locks every caller out.
//! - A token verified once is remembered (at most [`VERIFIED_TOKENS_MAX`] of them, each
//!   until its `exp` or for [`VERIFIED_TOKEN_MS_MAX`], whichever comes first), so a
//!   client's stream of calls costs one signature check, not one per call and hop;
//!   new keys forget every remembered token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};

pub use crate::limits::{
    KEYS_MAX, KEY_FILE_BYTES_MAX, TOKEN_BYTES_MAX, VERIFIED_TOKENS_MAX, VERIFIED_TOKEN_MS_MAX,
};

pub mod issue;
mod keys;

use keys::KeySet;

/// How often, at most, the key file's modification time is looked at.
pub const KEYS_RECHECK_MS: u64 = 1_000;
/// How far `exp` and `nbf` may be off (clocks of the issuer and of this host).
pub const LEEWAY_S: u64 = 30;
/// The issuer and audience `seatd token issue` and `seatd dev` use, and what nodes
/// and frontends expect unless told otherwise.
pub const DEFAULT_ISSUER: &str = "seatd";
pub const DEFAULT_AUDIENCE: &str = "seatd";

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Browse, hold, commit and release their own holds, read their own holds and
    /// orders.
    Buyer,
    /// Create events and change sales, read any hold or order.
    Operator,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Buyer => "buyer",
            Role::Operator => "operator",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "buyer" => Ok(Role::Buyer),
            "operator" => Ok(Role::Operator),
            other => Err(format!("unknown role {other:?} (buyer or operator)")),
        }
    }
}

/// Who a verified token names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user id (`sub`).
    pub subject: String,
    pub role: Role,
}

/// The claims seatd reads and writes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Why a call's credentials were not accepted (UNAUTHENTICATED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send `authorization: Bearer <JWT>`")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies bearer tokens against the keys of one file.
pub struct Verifier {
    path: PathBuf,
    issuer: String,
    audience: String,
    keys: RwLock<(KeySet, Option<SystemTime>)>,
    checked_at: Mutex<Instant>,
    /// Tokens verified already: the identity, and until when it may be reused.
    verified: Mutex<HashMap<String, (Identity, Instant)>>,
}

impl Verifier {
    /// Reads the keys in `path` (a JWKS or PEM public keys); tokens must name
    /// `issuer` and `audience`.
    pub fn from_file(path: &Path, issuer: &str, audience: &str) -> Result<Self, String> {
        let (keys, modified) = keys::read(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            keys: RwLock::new((keys, modified)),
            checked_at: Mutex::new(Instant::now()),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The identity a bearer token names, if the token is valid now.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(AuthError::Invalid(format!(
                "longer than {TOKEN_BYTES_MAX} bytes"
            )));
        }
        self.reload_if_changed();
        let now = Instant::now();
        if let Some((identity, until)) = self.lock_verified().get(token) {
            if now < *until {
                return Ok(identity.clone());
            }
        }
        let (identity, exp) = self.verify_signed(token)?;
        self.remember(token, &identity, exp, now);
        Ok(identity)
    }

    fn lock_verified(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Identity, Instant)>> {
        // A cache: a panic elsewhere leaves nothing half-done that matters.
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a verified token until its `exp` (seconds since the epoch) or for
    /// [`VERIFIED_TOKEN_MS_MAX`], whichever is sooner; a full cache is emptied first.
    fn remember(&self, token: &str, identity: &Identity, exp: u64, now: Instant) {
        let epoch_s = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let left = Duration::from_secs(exp.saturating_sub(epoch_s))
            .min(Duration::from_millis(VERIFIED_TOKEN_MS_MAX));
        let mut verified = self.lock_verified();
        if verified.len() >= VERIFIED_TOKENS_MAX {
            verified.clear();
        }
        verified.insert(token.to_string(), (identity.clone(), now + left));
    }

    /// Checks a token's signature and claims against the keys.
    fn verify_signed(&self, token: &str) -> Result<(Identity, u64), AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if !matches!(
            header.alg,
            Algorithm::EdDSA | Algorithm::ES256 | Algorithm::RS256
        ) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted (EdDSA, ES256, RS256)",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let candidates = keys.0.candidates(header.kid.as_deref(), header.alg);
        if candidates.is_empty() {
            return Err(AuthError::Invalid(match header.kid {
                Some(kid) => format!("no key {kid:?} for {:?}", header.alg),
                None => format!("no key for {:?}", header.alg),
            }));
        }
        let mut last = String::new();
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    let exp = data.claims.exp;
                    return identity(data.claims).map(|i| (i, exp));
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(AuthError::Invalid(last))
    }

    /// The token in an `authorization` header value (`Bearer <JWT>`), verified.
    pub fn verify_header(&self, value: Option<&str>) -> Result<Identity, AuthError> {
        let value = value.ok_or(AuthError::Missing)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| AuthError::Invalid("not a bearer token".into()))?;
        self.verify(token.trim())
    }

    /// Reads the key file again if it changed since it was last read (looked at once
    /// per [`KEYS_RECHECK_MS`] at most).
    fn reload_if_changed(&self) {
        {
            let Ok(mut at) = self.checked_at.try_lock() else {
                return; // another call is looking
            };
            if at.elapsed() < Duration::from_millis(KEYS_RECHECK_MS) {
                return;
            }
            *at = Instant::now();
        }
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let current = self.keys.read().unwrap_or_else(|p| p.into_inner()).1;
        if modified.is_none() || modified == current {
            return;
        }
        match keys::read(&self.path) {
            Ok(fresh) => {
                tracing::info!(path = %self.path.display(), keys = fresh.0.len(), "auth keys reloaded");
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                // A removed key must stop working at once.
                self.lock_verified().clear();
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "auth keys not reloaded; the old keys stay in force");
            }
        }
    }
}

fn identity(claims: Claims) -> Result<Identity, AuthError> {
    raft_store::ids::validate_token("subject", &claims.sub)
        .map_err(|e| AuthError::Invalid(format!("sub: {e}")))?;
    Ok(Identity {
        subject: claims.sub,
        role: claims.role,
    })
}

#[cfg(test)]
mod tests;
