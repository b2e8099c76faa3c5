//! Any bytes as a state snapshot from a peer (`Frame::Snapshot`), installed
//! into an empty account of a real store on redb's in-memory backend: must
//! be refused with an error or installed, never panic, never allocate past
//! the decompression bound. Half the inputs are first wrapped as the
//! store's own packing (format byte + zstd), so the fuzzer reaches the
//! postcard decoding and the model's import behind it. The store is reused
//! while installs fail (nothing is committed then) and made afresh after
//! one succeeds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_model::ReplicaId;
use starling_store::{Store, StoreOptions};
use std::cell::RefCell;

fn fresh() -> Store {
    let store = Store::open_on(redb::backends::InMemoryBackend::new(), "fuzz", ReplicaId(2), StoreOptions::default())
        .expect("an in-memory store opens");
    store.add_account("alice").expect("account");
    store
}

thread_local! {
    static STORE: RefCell<Store> = RefCell::new(fresh());
}

fuzz_target!(|data: &[u8]| {
    let Some((&how, rest)) = data.split_first() else { return };
    let bytes = if how & 1 == 0 { rest.to_vec() } else { starling_store::blob::pack(rest) };
    STORE.with(|s| {
        let installed = s.borrow().install_snapshot("alice", &bytes).is_ok();
        if installed {
            // Whatever installed must be readable.
            s.borrow().dump("alice").expect("an installed snapshot dumps");
            s.borrow().version("alice").expect("and has a version");
            *s.borrow_mut() = fresh();
        } else {
            assert!(s.borrow().version("alice").expect("version").is_empty(), "a refused snapshot left state behind");
        }
    });
});
