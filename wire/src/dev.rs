//! The file `seatd dev` leaves for `seatctl`: where the dev cluster listens and the
//! tokens it issued, so the local start needs no copying of tokens by hand.
//!
//! The file is `<data-dir>/dev-tokens.json`, readable by its owner only, rewritten on
//! every start (each start issues new tokens). It is a convenience for one machine,
//! never read by a server.

use std::path::Path;

/// The tokens file's name inside `seatd dev`'s data dir.
pub const DEV_TOKENS_FILE: &str = "dev-tokens.json";
/// `seatd dev`'s data dir when it is given none (relative to where it runs).
pub const DEV_DATA_DIR_DEFAULT: &str = "./seatd-data";
/// The most bytes read from a tokens file (two tokens and an address).
pub const DEV_TOKENS_FILE_BYTES_MAX: u64 = 64 * 1024;

/// What the tokens file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevTokensFile {
    /// The URL of the dev cluster's frontend.
    pub endpoint: String,
    /// A buyer token (subject `me`).
    pub buyer: String,
    /// An operator token.
    pub operator: String,
}

impl DevTokensFile {
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "endpoint": self.endpoint,
            "buyer": self.buyer,
            "operator": self.operator,
        })
        .to_string()
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let field = |name: &str| {
            v.get(name)
                .and_then(|f| f.as_str())
                .map(str::to_string)
                .ok_or_else(|| format!("no {name:?} string"))
        };
        Ok(Self {
            endpoint: field("endpoint")?,
            buyer: field("buyer")?,
            operator: field("operator")?,
        })
    }

    /// The file in `dir`, if there is one. A file that is there but unreadable,
    /// oversized or malformed is an error (saying which file), not silently skipped.
    pub fn read(dir: &Path) -> Result<Option<Self>, String> {
        use std::io::Read;
        let path = dir.join(DEV_TOKENS_FILE);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut text = String::new();
        file.take(DEV_TOKENS_FILE_BYTES_MAX + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if text.len() as u64 > DEV_TOKENS_FILE_BYTES_MAX {
            return Err(format!(
                "{}: larger than {DEV_TOKENS_FILE_BYTES_MAX} bytes",
                path.display()
            ));
        }
        Self::from_json(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_it_cannot_use() {
        let f = DevTokensFile {
            endpoint: "http://127.0.0.1:7400".into(),
            buyer: "b.t.s".into(),
            operator: "o.t.s".into(),
        };
        assert_eq!(DevTokensFile::from_json(&f.to_json()).unwrap(), f);
        assert!(DevTokensFile::from_json("{}").is_err());
        assert!(DevTokensFile::from_json("not json").is_err());
        let dir = std::env::temp_dir().join(format!("seatd-wire-dev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(DevTokensFile::read(&dir).unwrap(), None);
        std::fs::write(dir.join(DEV_TOKENS_FILE), f.to_json()).unwrap();
        assert_eq!(DevTokensFile::read(&dir).unwrap(), Some(f));
        std::fs::write(dir.join(DEV_TOKENS_FILE), "x".repeat(70_000)).unwrap();
        assert!(DevTokensFile::read(&dir).unwrap_err().contains("larger"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
