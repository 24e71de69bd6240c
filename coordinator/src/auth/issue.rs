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
/// The signing key is readable by its owner only. An existing pair is an error.
pub fn keygen(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let made = keygen_into(dir, dir, false)?;
    Ok((made.signing, made.public))
}

/// Where [`keygen_into`] left the key pair, and whether it was there already.
pub struct KeyFiles {
    pub signing: PathBuf,
    pub public: PathBuf,
    pub kept: bool,
}

/// Writes a new key pair: the signing key into `dir`, the public key into `public_dir`
/// (both created if missing). A pair already there is kept when `keep` says so, and
/// otherwise refused: replacing a signing key silently would end every token.
pub fn keygen_into(dir: &Path, public_dir: &Path, keep: bool) -> Result<KeyFiles, String> {
    let signing = dir.join(SIGNING_KEY_FILE);
    let public = public_dir.join(PUBLIC_KEY_FILE);
    match (signing.exists(), public.exists()) {
        (true, true) if keep => {
            let private = std::fs::read_to_string(&signing)
                .map_err(|e| format!("{}: {e}", signing.display()))?;
            let derived = public_of(&private)?;
            let stored = std::fs::read_to_string(&public)
                .map_err(|e| format!("{}: {e}", public.display()))?;
            if derived.trim() != stored.trim() {
                return Err(format!(
                    "{} is not the public key of {}",
                    public.display(),
                    signing.display()
                ));
            }
            return Ok(KeyFiles {
                signing,
                public,
                kept: true,
            });
        }
        (false, false) => {}
        _ => {
            return Err(format!(
                "{} or {} exists already; remove both to make a new pair, or give --keep \
                 to keep a whole pair",
                signing.display(),
                public.display()
            ))
        }
    }
    for d in [dir, public_dir] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let (private, public_pem) = new_key_pair()?;
    write_private(&signing, &private)?;
    std::fs::write(&public, public_pem).map_err(|e| format!("{}: {e}", public.display()))?;
    Ok(KeyFiles {
        signing,
        public,
        kept: false,
    })
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
