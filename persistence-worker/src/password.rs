//! Room passwords, stored only as salted hashes.

use sha2::{Digest, Sha256};

/// `sha256$<salt>$<hex digest of salt and password>`.
pub(crate) fn hash(password: &str) -> String {
    let salt = uuid::Uuid::new_v4().simple().to_string();
    format!("sha256${salt}${}", digest(&salt, password))
}

/// Whether `password` matches a hash made by [`hash`].
pub(crate) fn verify(password: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some("sha256"), Some(salt), Some(expected), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let actual = digest(salt, password);
    // Compare all bytes whatever the first difference, so timing says nothing of the hash.
    actual.len() == expected.len()
        && actual
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn digest(salt: &str, password: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update([0]);
    hasher.update(password.as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let stored = hash("open sesame");
        assert!(!stored.contains("open sesame"));
        assert!(verify("open sesame", &stored));
        assert!(!verify("open sesamE", &stored));
        assert!(!verify("open sesame", "plain"));
        assert_ne!(hash("x"), hash("x"), "every hash has its own salt");
    }
}
