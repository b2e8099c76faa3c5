//! Any bytes as a peer frame, after a valid handshake: must never panic, and
//! a refused frame must hand nothing but `Closed` to the driver.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling_model::{ReplicaId, VersionVector};
use starling_sync::{Event, Frame, Session};

fuzz_target!(|data: &[u8]| {
    let mut s = Session::new(ReplicaId(1), Some(ReplicaId(2)), [("a".to_string(), VersionVector::new())]);
    let hello = Frame::Hello { version: starling_sync::PROTOCOL_VERSION, node: ReplicaId(2), accounts: vec!["a".into()] };
    s.handle_frame(&hello.encode()).unwrap();
    while s.poll_event().is_some() {}
    if s.handle_frame(data).is_err() {
        while let Some(e) = s.poll_event() {
            assert!(matches!(e, Event::Closed { .. }));
        }
    }
});
