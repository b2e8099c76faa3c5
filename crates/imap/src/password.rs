//! Argon2id password hashes (PHC strings), and their verification in a
//! memory each thread of the password pool keeps and reuses.
//!
//! A verification with the default parameters fills 19 MiB. Allocating
//! that afresh for every attempt costs page faults, zeroing and unmapping:
//! under a login storm (200 clients, no login cache) about 40 % of the pool
//! threads' samples were outside Argon2's own code, most of them in the
//! kernel. So each pool thread keeps one memory of the default size; it is
//! zeroed after every use (the blocks of a finished run let a password be
//! guessed without paying Argon2's memory: the first block is a few
//! BLAKE2b runs over the password and salt).
//!
//! The parameters come from the stored hash, and a stored hash may come
//! from a peer (credentials replicate with the account). So a hash asking
//! for more than [`MEMORY_KIB_MAX`] of memory, [`PASSES_MAX`] passes or
//! [`LANES_MAX`] lanes verifies nothing, rather than letting one account's
//! credential take a node's memory or a pool thread for minutes.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::cell::RefCell;

/// Memory of a hash that is verified at most: 256 MiB (the default is
/// 19 MiB; RFC 9106's second recommendation is 64 MiB).
pub const MEMORY_KIB_MAX: u32 = 256 * 1024;

/// Passes of a hash that is verified at most (the default is 2).
pub const PASSES_MAX: u32 = 16;

/// Lanes of a hash that is verified at most (the default is 1; the lanes
/// run one after the other here).
pub const LANES_MAX: u32 = 8;

/// Hashes a password for [`starling_store::Store::set_credential`].
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).expect("argon2 with default parameters").to_string()
}

/// Whether `password` matches `hash` (false for a malformed hash, or one
/// over the bounds), in this thread's kept memory.
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    thread_local! {
        static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
    }
    MEMORY.with(|m| verify_in(hash, password, &mut m.borrow_mut()))
}

/// Blocks kept between verifications: those of the default parameters.
fn blocks_kept() -> usize {
    Params::default().block_count()
}

/// [`verify_password`] in `memory`: grown to the hash's blocks, zeroed
/// after use, and given back down to [`blocks_kept`] when a hash needed
/// more.
fn verify_in(hash: &str, password: &[u8], memory: &mut Vec<Block>) -> bool {
    let Some((argon, salt, want)) = parse(hash) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let blocks = argon.params().block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = &mut out[..want.len()];
    let ran = argon.hash_password_into_with_memory(password, salt, out, &mut memory[..blocks]).is_ok();
    memory[..blocks].fill(Block::default());
    if memory.len() > blocks_kept() {
        *memory = Vec::new();
    }
    // `Output`'s comparison takes the same time wherever the bytes differ.
    ran && Output::new(out).is_ok_and(|got| got == want)
}

/// The hasher, salt and expected output of a PHC string within the
/// bounds; `None` for anything else.
fn parse(hash: &str) -> Option<(Argon2<'static>, argon2::password_hash::Salt<'_>, Output)> {
    let h = PasswordHash::new(hash).ok()?;
    let (salt, want) = (h.salt?, h.hash?);
    let params = Params::try_from(&h).ok()?;
    if params.m_cost() > MEMORY_KIB_MAX || params.t_cost() > PASSES_MAX || params.p_cost() > LANES_MAX {
        return None;
    }
    let algorithm = Algorithm::try_from(h.algorithm).ok()?;
    let version = h.version.map(Version::try_from).transpose().ok()?.unwrap_or_default();
    Some((Argon2::new(algorithm, version, params), salt, want))
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::PasswordVerifier;

    /// A PHC string of `password` made by the library itself, with the
    /// given algorithm, version and parameters.
    fn made(password: &[u8], algorithm: Algorithm, version: Version, m: u32, t: u32, p: u32) -> String {
        let params = Params::new(m, t, p, None).unwrap();
        let salt = SaltString::generate(&mut OsRng);
        Argon2::new(algorithm, version, params).hash_password(password, &salt).unwrap().to_string()
    }

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash_password("hunter2");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password(&h, b"hunter2"));
        assert!(!verify_password(&h, b"hunter3"));
        assert!(!verify_password("not a hash", b"hunter2"));
        assert!(!verify_password("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ", b"hunter2"), "no output");
    }

    /// The kept memory answers as the library's own verification does, for
    /// each algorithm, both versions, several lanes and sizes, one after
    /// the other in one memory (a run must not depend on the one before).
    #[test]
    fn reused_memory_answers_as_the_library_does() {
        let mut memory = Vec::new();
        for (algorithm, version, m, t, p) in [
            (Algorithm::Argon2id, Version::V0x13, 64, 1, 1),
            (Algorithm::Argon2id, Version::V0x13, 256, 3, 4),
            (Algorithm::Argon2i, Version::V0x13, 128, 2, 2),
            (Algorithm::Argon2d, Version::V0x10, 64, 2, 1),
            (Algorithm::Argon2id, Version::V0x13, 19 * 1024, 2, 1),
            (Algorithm::Argon2id, Version::V0x10, 96, 1, 3),
        ] {
            let h = made(b"right", algorithm, version, m, t, p);
            let parsed = PasswordHash::new(&h).unwrap();
            for pw in [&b"right"[..], b"wrong", b""] {
                let library = Argon2::default().verify_password(pw, &parsed).is_ok();
                assert_eq!(verify_in(&h, pw, &mut memory), library, "{h} with {pw:?}");
                assert_eq!(library, pw == b"right");
            }
        }
    }

    #[test]
    fn the_memory_is_zeroed_after_use_and_kept_only_at_the_default_size() {
        let mut memory = Vec::new();
        let h = hash_password("pw");
        assert!(verify_in(&h, b"pw", &mut memory));
        assert_eq!(memory.len(), blocks_kept());
        assert!(memory.iter().all(|b| b.as_ref().iter().all(|&w| w == 0)), "blocks left filled");
        let ptr = memory.as_ptr();
        assert!(!verify_in(&h, b"other", &mut memory));
        assert_eq!(memory.as_ptr(), ptr, "the same memory, not a new one");
        // A hash asking for more: grown for it, then given back.
        let big = made(b"pw", Algorithm::Argon2id, Version::V0x13, 2 * blocks_kept() as u32, 1, 1);
        assert!(verify_in(&big, b"pw", &mut memory));
        assert!(memory.is_empty(), "{} blocks kept", memory.len());
        // A smaller one uses the front of what is there.
        let mut memory = vec![Block::default(); blocks_kept()];
        let small = made(b"pw", Algorithm::Argon2id, Version::V0x13, 64, 1, 1);
        assert!(verify_in(&small, b"pw", &mut memory));
        assert_eq!(memory.len(), blocks_kept());
    }

    /// A credential may come from a peer: one asking for more than the
    /// bounds is refused at once, without filling any memory.
    #[test]
    fn a_hash_over_the_bounds_verifies_nothing_and_takes_no_memory() {
        let real = hash_password("pw");
        let (head, tail) = real.split_at(real.find("m=19456,t=2,p=1").unwrap());
        let tail = &tail["m=19456,t=2,p=1".len()..];
        let with = |params: &str| format!("{head}{params}{tail}");
        assert!(verify_password(&with("m=19456,t=2,p=1"), b"pw"), "the splice keeps a good hash");
        for over in [
            format!("m={},t=2,p=1", MEMORY_KIB_MAX + 1),
            "m=4294967295,t=2,p=1".to_string(),
            format!("m=19456,t={},p=1", PASSES_MAX + 1),
            "m=19456,t=4294967295,p=1".to_string(),
            format!("m=19456,t=2,p={}", LANES_MAX + 1),
        ] {
            let mut memory = Vec::new();
            assert!(!verify_in(&with(&over), b"pw", &mut memory), "{over}");
            assert!(memory.is_empty(), "{over}: memory taken");
        }
    }
}
