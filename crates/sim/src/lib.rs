//! The deterministic simulator: N nodes running the real model, the real
//! store (redb on a crashable in-memory disk) and the real sync sessions
//! (through the same [`starling_link::PeerLink`] driver as the node), under a
//! seeded scheduler with message delay, loss, duplication, reordering,
//! partitions, crashes and clock skew, checked after every step by the
//! model's invariant checker ([`starling_model::testkit::Checker`]).
//!
//! It must not open sockets, spawn threads inside a run, or read the clock
//! or OS randomness during a run: one seed gives one trace.

#![deny(missing_docs)]

pub mod cli;
pub mod memory;
pub mod report;
pub mod scenario;
pub mod world;

pub use scenario::Scenario;
pub use world::{RunReport, World};

/// Runs one scenario for one seed.
pub fn run(sc: &Scenario, seed: u64) -> RunReport {
    match World::new(sc, seed) {
        Ok(w) => w.run(),
        Err(e) => {
            let mut r = RunReport::new(&sc.name, seed);
            r.result = Err(format!("setup: {e}"));
            r
        }
    }
}
