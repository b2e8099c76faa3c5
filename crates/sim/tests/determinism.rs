//! The same seed gives the same trace; the shipped scenarios pass a few seeds.

use starling_sim::{run, Scenario};
use std::path::PathBuf;

fn scenarios() -> Vec<Scenario> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../simulations");
    let files = starling_sim::scenario::files_in(&dir).unwrap();
    assert!(files.len() >= 5, "scenario files in {}", dir.display());
    files.iter().map(|p| Scenario::load(p).unwrap()).collect()
}

#[test]
fn same_seed_same_trace_other_seed_other_trace() {
    // One thread per scenario: each run is single-threaded and deterministic.
    std::thread::scope(|s| {
        let runs: Vec<_> = scenarios()
            .into_iter()
            .map(|sc| {
                s.spawn(move || {
                    let a = run(&sc, 7);
                    let b = run(&sc, 7);
                    let c = run(&sc, 8);
                    assert!(a.result.is_ok(), "{} seed 7: {:?}", sc.name, a.result);
                    assert_eq!(a.trace, b.trace, "{}: one seed, two traces", sc.name);
                    assert_ne!(a.trace, c.trace, "{}: two seeds, one trace", sc.name);
                    assert!(a.actions > 0 && a.ops > 0 && a.appends > 0, "{}: the workload ran", sc.name);
                    // Without the counting allocator nothing is measured.
                    assert!(a.memory.is_empty(), "{}: {:?}", sc.name, a.memory);
                    eprintln!("{a:?}");
                })
            })
            .collect();
        for r in runs {
            if let Err(e) = r.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
}
