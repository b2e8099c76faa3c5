//! The bounded sweep CI runs: every scenario in `simulations/` over a range
//! of seeds (20 each by default; `STARLING_SIM_SEEDS=N` to change). A failing
//! seed is printed with the command that reproduces it alone.

use starling_sim::report::sweep;
use starling_sim::Scenario;
use std::path::PathBuf;

#[test]
fn every_scenario_converges_over_a_range_of_seeds() {
    let n: u64 = std::env::var("STARLING_SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../simulations");
    let files = starling_sim::scenario::files_in(&dir).unwrap();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut failed = Vec::new();
    let mut runs = 0;
    for f in &files {
        let sc = Scenario::load(f).unwrap();
        // Seeds apart from the long sweep's (0..2000), so CI adds coverage.
        let (reports, _) = sweep(&sc, 100_000..100_000 + n, threads, &|_| {});
        runs += reports.len();
        for r in reports {
            if let Err(e) = r.result {
                let first = e.lines().next().unwrap_or("").to_string();
                failed.push(format!(
                    "{} seed {}: {first}\n  reproduce: starling sim {} --seed {}",
                    r.scenario,
                    r.seed,
                    f.display(),
                    r.seed
                ));
            }
        }
    }
    assert!(runs as u64 >= 5 * n);
    assert!(failed.is_empty(), "{} of {runs} runs failed:\n{}", failed.len(), failed.join("\n"));
}
