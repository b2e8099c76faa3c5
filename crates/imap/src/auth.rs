//! Passwords: Argon2id hashes (PHC strings) kept by the store, and the SASL
//! PLAIN message.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Hashes a password for [`starling_store::Store::set_credential`].
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).expect("argon2 with default parameters").to_string()
}

/// Whether `password` matches `hash` (false for a malformed hash).
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password, &h).is_ok())
}

/// A SASL PLAIN message (RFC 4616): `authzid NUL authcid NUL password`.
/// Returns (authcid, password); an authzid other than empty or the authcid
/// is refused (no proxy authorization).
pub fn parse_plain(message: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut it = message.splitn(3, |&b| b == 0);
    let (authz, authc, pass) = (it.next()?, it.next()?, it.next()?);
    let authc = std::str::from_utf8(authc).ok()?.to_string();
    if !authz.is_empty() && authz != authc.as_bytes() {
        return None;
    }
    Some((authc, pass.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash_password("hunter2");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, b"hunter2"));
        assert!(!verify_password(&h, b"hunter3"));
        assert!(!verify_password("not a hash", b"hunter2"));
    }

    #[test]
    fn plain_messages() {
        assert_eq!(parse_plain(b"\0alice\0pw"), Some(("alice".into(), b"pw".to_vec())));
        assert_eq!(parse_plain(b"alice\0alice\0pw"), Some(("alice".into(), b"pw".to_vec())));
        assert_eq!(parse_plain(b"bob\0alice\0pw"), None);
        assert_eq!(parse_plain(b"alice"), None);
    }
}
