//! The server API's keys: read from `--api-keys-file` (and the admin keys from
//! `--api-admin-keys-file`), one a line, `[NAME:]KEY`; blank lines and `#` comments are skipped. A presented key is compared with every key in constant time
//! (SHA-256 digests, `subtle`), so neither a match nor its position shows in the timing.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest key accepted: 32 characters (a random 24 bytes in base64, or 16 in hex).
pub const MIN_KEY_CHARS: usize = 32;

/// Why the keys file is refused.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// Unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line holds a key too short to be safe.
    #[error("{path}, line {line}: a key must have at least {MIN_KEY_CHARS} characters")]
    TooShort {
        /// The file.
        path: String,
        /// Its line, from 1.
        line: usize,
    },
    /// No key at all.
    #[error("{path} holds no key")]
    Empty {
        /// The file.
        path: String,
    },
}

/// A key's digest, the name it is logged by, and whether it is an admin key.
#[derive(Debug, Clone)]
struct Key {
    name: String,
    digest: [u8; 32],
    admin: bool,
}

/// A key that was presented and found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder<'a> {
    /// Its name.
    pub name: &'a str,
    /// Whether it may read the admin views.
    pub admin: bool,
}

/// The keys the server API accepts.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    keys: Vec<Key>,
}

impl ApiKeys {
    /// Reads a keys file: admin keys when `admin`.
    pub fn load(path: &Path, admin: bool) -> Result<Self, KeysError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown, admin)
    }

    /// Adds `other`'s keys.
    pub fn extend(&mut self, other: Self) {
        self.keys.extend(other.keys);
    }

    fn parse(text: &str, path: &str, admin: bool) -> Result<Self, KeysError> {
        let mut keys = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, key) = match line.split_once(':') {
                Some((name, key)) => (name.trim().to_owned(), key.trim()),
                None => (format!("key {}", keys.len() + 1), line),
            };
            if key.chars().count() < MIN_KEY_CHARS {
                return Err(KeysError::TooShort {
                    path: path.to_owned(),
                    line: index + 1,
                });
            }
            keys.push(Key {
                name,
                digest: digest(key),
                admin,
            });
        }
        if keys.is_empty() {
            return Err(KeysError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Self { keys })
    }

    /// The key `presented` is, if it is one.
    pub fn check(&self, presented: &str) -> Option<Holder<'_>> {
        let presented = digest(presented);
        let mut found = None;
        // Every key is compared, whatever matched before.
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&presented)) {
                found = Some(Holder {
                    name: &key.name,
                    admin: key.admin,
                });
            }
        }
        found
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn keys_are_named_and_checked() {
        let text = format!("# the backend\nbackend:{KEY}\n\n{KEY}-second\n");
        let mut keys = ApiKeys::parse(&text, "keys", false).unwrap();
        keys.extend(ApiKeys::parse(&format!("ops:{KEY}-admin"), "admin", true).unwrap());
        let name = |presented: &str| keys.check(presented).map(|h| (h.name.to_owned(), h.admin));
        assert_eq!(name(KEY), Some(("backend".to_owned(), false)));
        assert_eq!(
            name(&format!("{KEY}-second")),
            Some(("key 2".to_owned(), false))
        );
        assert_eq!(
            name(&format!("{KEY}-admin")),
            Some(("ops".to_owned(), true))
        );
        assert_eq!(name("0123456789abcdef0123456789abcdeX"), None);
        assert_eq!(name(""), None);
    }

    #[test]
    fn short_keys_and_empty_files_are_refused() {
        assert!(matches!(
            ApiKeys::parse("ok:short\n", "keys", false),
            Err(KeysError::TooShort { line: 1, .. })
        ));
        assert!(matches!(
            ApiKeys::parse("# nothing\n", "keys", false),
            Err(KeysError::Empty { .. })
        ));
    }
}
