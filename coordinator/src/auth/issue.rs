//! Making keys and tokens, for `seatd token keygen | issue` and `seatd dev`: an
//! Ed25519 signing key (PKCS#8 PEM) and its public key (SPKI PEM, what nodes and
//! frontends read with `--auth-keys`), and EdDSA tokens signed with it.
//!
//! A production deployment gets its tokens from its identity provider; this is for
//! operators' scripts, tests and the local start.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::{Claims, Role, DEFAULT_AUDIENCE, DEFAULT_ISSUER};

/// The file names `keygen` writes in its directory.
pub const SIGNING_KEY_FILE: &str = "signing-key.pem";
pub const PUBLIC_KEY_FILE: &str = "public-key.pem";

/// A new Ed25519 key pair: (private PKCS#8 PEM, public SPKI PEM).
pub fn new_key_pair() -> Result<(String, String), String> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .map_err(|e| format!("generating an Ed25519 key: {e}"))?;
    Ok((pair.serialize_pem(), pair.public_key_pem()))
}

/// Writes a new key pair into `dir` (created if missing); returns the two paths.
/// The signing key is readable by its owner only.
pub fn keygen(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (private, public) = new_key_pair()?;
    let signing = dir.join(SIGNING_KEY_FILE);
    let verifying = dir.join(PUBLIC_KEY_FILE);
    write_private(&signing, &private)?;
    std::fs::write(&verifying, public).map_err(|e| format!("{}: {e}", verifying.display()))?;
    Ok((signing, verifying))
}

/// Writes `text` to `path`, readable by its owner only.
pub fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The public key (SPKI PEM) of the Ed25519 signing key in PEM `private`.
pub fn public_of(private: &str) -> Result<String, String> {
    let pair =
        rcgen::KeyPair::from_pem(private).map_err(|e| format!("not a PEM signing key: {e}"))?;
    Ok(pair.public_key_pem())
}

/// A token for `subject` in `role`, valid from now for `ttl`, signed with the Ed25519
/// key in PEM `private` (issuer and audience: seatd's defaults).
pub fn token(private: &str, subject: &str, role: Role, ttl: Duration) -> Result<String, String> {
    let key = EncodingKey::from_ed_pem(private.as_bytes())
        .map_err(|e| format!("not an Ed25519 signing key: {e}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let claims = Claims {
        sub: subject.to_string(),
        role,
        iss: DEFAULT_ISSUER.to_string(),
        aud: DEFAULT_AUDIENCE.to_string(),
        exp: now + ttl.as_secs().max(1),
        nbf: Some(now),
        iat: Some(now),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key)
        .map_err(|e| format!("signing a token: {e}"))
}
