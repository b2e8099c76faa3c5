//! Any bytes from an IMAP client, after LOGIN and SELECT, into a session on a
//! real store: no panic, and every byte written back is valid IMAP.
#![no_main]

use argon2::password_hash::{PasswordHasher, SaltString};
use imap_codec::decode::Decoder;
use libfuzzer_sys::fuzz_target;
use starling_imap::{Config, Session, Shared};
use std::sync::{Arc, OnceLock};

fn shared() -> &'static Arc<Shared> {
    static SHARED: OnceLock<(tempfile::TempDir, Arc<Shared>)> = OnceLock::new();
    &SHARED
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = starling_store::Store::open(
                &dir.path().join("store.redb"),
                starling_model::ReplicaId(1),
                Default::default(),
            )
            .unwrap();
            store.add_account("alice").unwrap();
            // Cheapest Argon2 parameters: the hash carries them, so LOGIN stays fast.
            let params = argon2::Params::new(8, 1, 1, None).unwrap();
            let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let salt = SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap();
            let hash = argon.hash_password(b"pw", &salt).unwrap();
            store.set_credential("alice", &hash.to_string()).unwrap();
            let shared = Shared::new(Arc::new(store), Config { literal_max: 1 << 20, ..Config::default() });
            (dir, shared)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let mut s = Session::new(shared().clone(), false, true, true);
    s.receive(b"a LOGIN alice pw\r\nb SELECT INBOX\r\n");
    s.verify_now();
    s.take_output();
    s.receive(data);
    let out = s.take_output();
    let mut rest = &out[..];
    while !rest.is_empty() {
        if rest.starts_with(b"* ESEARCH ") {
            let end = rest.windows(2).position(|w| w == b"\r\n").expect("line ends");
            rest = &rest[end + 2..];
            continue;
        }
        match imap_codec::ResponseCodec::default().decode(rest) {
            Ok((r, _)) => rest = r,
            Err(e) => panic!("invalid response {e:?}: {:?}", String::from_utf8_lossy(rest)),
        }
    }
});
