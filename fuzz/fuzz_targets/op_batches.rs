//! Any bytes as the payload of an uncompressed op batch (the header is
//! supplied so the fuzzer works on the ops themselves), then whatever decodes
//! applied to a replica, twice over: must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_model::{codec, Replica, ReplicaId};

fuzz_target!(|data: &[u8]| {
    let mut frame = vec![codec::VERSION, 0];
    frame.extend_from_slice(data);
    if let Ok(ops) = codec::decode(&frame) {
        let mut r = Replica::new(ReplicaId(1));
        for op in ops.iter().chain(ops.iter()).cloned() {
            let _ = r.apply(op);
        }
        let _ = r.dump();
    }
});
