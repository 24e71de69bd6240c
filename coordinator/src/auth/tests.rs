//! Tokens accepted and refused: valid, expired, not yet valid, wrong audience or
//! issuer, unknown key, a forged algorithm; keys from PEM and JWKS; rotation by
//! rewriting the key file.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};

use super::issue::{new_key_pair, token};
use super::*;

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn signed(private: &str, claims: &Claims, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = kid.map(str::to_string);
    let key = EncodingKey::from_ed_pem(private.as_bytes()).expect("a key");
    jsonwebtoken::encode(&header, claims, &key).expect("signed")
}

fn claims(sub: &str, exp: u64) -> Claims {
    Claims {
        sub: sub.into(),
        role: Role::Buyer,
        iss: DEFAULT_ISSUER.into(),
        aud: DEFAULT_AUDIENCE.into(),
        exp,
        nbf: None,
        iat: None,
    }
}

fn verifier(path: &Path) -> Verifier {
    Verifier::from_file(path, DEFAULT_ISSUER, DEFAULT_AUDIENCE).expect("keys read")
}

#[test]
fn a_token_from_token_issue_names_its_subject_and_role() {
    let dir = tempfile::tempdir().expect("dir");
    let (signing, public) = issue::keygen(dir.path()).expect("keygen");
    let private = std::fs::read_to_string(&signing).expect("read");
    let v = verifier(&public);
    let t = token(&private, "ann", Role::Operator, Duration::from_secs(60)).expect("token");
    assert_eq!(
        v.verify_header(Some(&format!("Bearer {t}"))),
        Ok(Identity {
            subject: "ann".into(),
            role: Role::Operator
        })
    );
    assert_eq!(v.verify_header(None), Err(AuthError::Missing));
    assert!(matches!(
        v.verify_header(Some(&format!("Basic {t}"))),
        Err(AuthError::Invalid(_))
    ));
}

/// An existing key pair is never replaced: refused without `keep`, kept with it (and
/// checked to be a pair); a public key can live apart from its signing key.
#[test]
fn keygen_keeps_or_refuses_an_existing_pair() {
    let dir = tempfile::tempdir().expect("dir");
    let (secret, public) = (dir.path().join("secret"), dir.path().join("public"));
    let made = issue::keygen_into(&secret, &public, true).expect("made");
    assert!(!made.kept);
    let first = std::fs::read_to_string(&made.signing).expect("read");
    assert!(!public.join(issue::SIGNING_KEY_FILE).exists());
    let again = issue::keygen_into(&secret, &public, true).expect("kept");
    assert!(again.kept);
    assert_eq!(
        std::fs::read_to_string(&again.signing).expect("read"),
        first
    );
    let err = issue::keygen_into(&secret, &public, false)
        .err()
        .expect("refused");
    assert!(err.contains("exists already"), "{err}");
    // A public key that is not the signing key's: refused even with keep.
    let (_, other) = new_key_pair().expect("key");
    std::fs::write(&made.public, other).expect("write");
    let err = issue::keygen_into(&secret, &public, true)
        .err()
        .expect("refused");
    assert!(err.contains("not the public key"), "{err}");
}

#[test]
fn expired_early_foreign_and_misaddressed_tokens_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let (private, public) = new_key_pair().expect("key");
    let v = verifier(&write(dir.path(), "k.pem", &public));
    let ok = signed(&private, &claims("ann", now_s() + 60), None);
    assert!(v.verify(&ok).is_ok());
    // Past the leeway.
    let expired = signed(&private, &claims("ann", now_s() - 2 * LEEWAY_S), None);
    assert!(matches!(v.verify(&expired), Err(AuthError::Invalid(_))));
    let mut early = claims("ann", now_s() + 600);
    early.nbf = Some(now_s() + 2 * LEEWAY_S);
    assert!(v.verify(&signed(&private, &early, None)).is_err());
    let mut wrong_aud = claims("ann", now_s() + 60);
    wrong_aud.aud = "someone-else".into();
    assert!(v.verify(&signed(&private, &wrong_aud, None)).is_err());
    let mut wrong_iss = claims("ann", now_s() + 60);
    wrong_iss.iss = "someone-else".into();
    assert!(v.verify(&signed(&private, &wrong_iss, None)).is_err());
    // Signed by a key the file does not hold.
    let (stranger, _) = new_key_pair().expect("key");
    assert!(v
        .verify(&signed(&stranger, &claims("ann", now_s() + 60), None))
        .is_err());
    // A subject that is no valid user id.
    assert!(v
        .verify(&signed(&private, &claims("", now_s() + 60), None))
        .is_err());
}

#[test]
fn forged_algorithms_and_oversized_tokens_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let (_, public) = new_key_pair().expect("key");
    let v = verifier(&write(dir.path(), "k.pem", &public));
    // HS256 with the public key as the secret: the classic confusion attack.
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("ann", now_s() + 60),
        &EncodingKey::from_secret(public.as_bytes()),
    )
    .expect("signed");
    assert!(matches!(v.verify(&hs), Err(AuthError::Invalid(_))));
    // `alg: none`, written by hand.
    let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbm4ifQ.";
    assert!(v.verify(none).is_err());
    assert!(v.verify(&"a".repeat(TOKEN_BYTES_MAX + 1)).is_err());
    assert!(v.verify("garbage").is_err());
}

#[test]
fn jwks_keys_are_chosen_by_kid() {
    let dir = tempfile::tempdir().expect("dir");
    let (a, _) = new_key_pair().expect("key");
    let (b, _) = new_key_pair().expect("key");
    // An Ed25519 JWK as an identity provider publishes it.
    let jwk = |private: &str, kid: &str| {
        let raw = rcgen::KeyPair::from_pem(private)
            .expect("a key")
            .public_key_raw()
            .to_vec();
        serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
            "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
        })
    };
    let set = serde_json::json!({ "keys": [jwk(&a, "a"), jwk(&b, "b")] });
    let path = write(dir.path(), "jwks.json", &set.to_string());
    let v = verifier(&path);
    let c = claims("ann", now_s() + 60);
    assert!(v.verify(&signed(&a, &c, Some("a"))).is_ok());
    assert!(v.verify(&signed(&b, &c, Some("b"))).is_ok());
    // The right key under the wrong name, and a name no key has.
    assert!(v.verify(&signed(&a, &c, Some("b"))).is_err());
    assert!(v.verify(&signed(&a, &c, Some("c"))).is_err());
}

#[test]
fn a_rewritten_key_file_rotates_the_keys_without_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let (old, old_public) = new_key_pair().expect("key");
    let (new, new_public) = new_key_pair().expect("key");
    let path = write(dir.path(), "k.pem", &old_public);
    let v = verifier(&path);
    let c = claims("ann", now_s() + 60);
    assert!(v.verify(&signed(&old, &c, None)).is_ok());
    assert!(v.verify(&signed(&new, &c, None)).is_err());
    let rewrite = |text: &str, age_s: u64| {
        std::fs::write(&path, text).expect("write");
        let f = std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open");
        // A distinct modification time, whatever the file system's granularity.
        f.set_modified(SystemTime::now() + Duration::from_secs(age_s))
            .expect("set mtime");
    };
    // Both keys at once while tokens of either are out, then the old one goes.
    rewrite(&format!("{old_public}{new_public}"), 10);
    std::thread::sleep(Duration::from_millis(KEYS_RECHECK_MS + 100));
    assert!(v.verify(&signed(&old, &c, None)).is_ok());
    assert!(v.verify(&signed(&new, &c, None)).is_ok());
    rewrite(&new_public, 20);
    std::thread::sleep(Duration::from_millis(KEYS_RECHECK_MS + 100));
    assert!(v.verify(&signed(&old, &c, None)).is_err());
    assert!(v.verify(&signed(&new, &c, None)).is_ok());
    // A broken file leaves the keys in force.
    rewrite("not a key", 30);
    std::thread::sleep(Duration::from_millis(KEYS_RECHECK_MS + 100));
    assert!(v.verify(&signed(&new, &c, None)).is_ok());
}

#[test]
fn key_files_are_bounded_and_must_hold_a_key() {
    assert!(keys::parse("").is_err());
    assert!(keys::parse("{\"keys\": []}").is_err());
    assert!(keys::parse(&"x".repeat(KEY_FILE_BYTES_MAX + 1)).is_err());
    let (_, public) = new_key_pair().expect("key");
    assert!(keys::parse(&public.repeat(KEYS_MAX + 2)).is_err());
    assert_eq!(keys::parse(&public).expect("one key").len(), 1);
}
