//! Sweeps over seeds, their summaries (markdown), and plots (SVG, plotters).

use crate::{run, RunReport, Scenario};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Runs `sc` for every seed in `seeds` on `threads` threads (each run is
/// single-threaded and deterministic); `each` sees every report as it ends.
pub fn sweep(
    sc: &Scenario,
    seeds: std::ops::Range<u64>,
    threads: usize,
    each: &(dyn Fn(&RunReport) + Sync),
) -> (Vec<RunReport>, f64) {
    let t = Instant::now();
    let next = AtomicU64::new(seeds.start);
    let out = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= seeds.end {
                    break;
                }
                let r = run(sc, seed);
                each(&r);
                out.lock().expect("reports").push(r);
            });
        }
    });
    let mut v = out.into_inner().expect("reports");
    v.sort_by_key(|r| r.seed);
    (v, t.elapsed().as_secs_f64())
}

/// What a sweep of one scenario showed.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Seeds run.
    pub seeds: usize,
    /// Seeds that failed, with the checker's message.
    pub failures: Vec<(u64, String)>,
    /// Convergence after the final heal, simulated ms: median and max.
    pub converge_ms: (u64, u64),
    /// Frames after the final heal: median.
    pub frames_after_heal: u64,
    /// Frame bytes per run: median.
    pub bytes: u64,
    /// UID churn per 1,000 appends: ours, dsync's rule on the same histories.
    pub churn_per_1000: (f64, f64),
    /// Client actions and ops authored in all runs.
    pub actions: u64,
    /// Ops authored in all runs.
    pub ops: u64,
    /// Crashes, connections and protocol resets in all runs.
    pub crashes: u64,
    /// Connections opened in all runs.
    pub connections: u64,
    /// Sessions ended by a broken transport in all runs.
    pub protocol_resets: u64,
    /// Wall time of the sweep, seconds.
    pub wall_secs: f64,
    /// Largest session queues seen in any run (each checked against its
    /// bound at every step).
    pub queues: starling_sync::QueueSizes,
    /// Most ops waiting in any replica's causal buffer.
    pub pending_max: usize,
    /// Largest store (simulated disk) of any node, bytes.
    pub disk_max: usize,
    /// Most ops authored in one run.
    pub ops_max: u64,
    /// Ops compacted away and bodies collected by housekeeping, all runs.
    pub ops_compacted: u64,
    /// Bodies collected, all runs.
    pub bodies_collected: u64,
    /// Online compactions of store files, all runs.
    pub file_compactions: u64,
    /// UIDs node 0 spent for good by the end (buried claims), all runs.
    pub spent_uids: u64,
    /// Snapshots installed (into an empty replica, into one with ops), and
    /// transfers resumed where a broken one left off, all runs.
    pub snapshots: crate::world::Snapshots,
    /// The roaming QRESYNC client, all runs: (syncs, answered in full,
    /// cached UIDs found naming another message).
    pub roam: (u64, u64, u64),
    /// Its looks that degraded (k ≥ 1), all runs.
    pub roam_short: u64,
    /// Its resyncs over-reported because the node no longer remembered
    /// every expunge since its MODSEQ, all runs.
    pub roam_forgotten: u64,
    /// The most any one node held, over all runs: heap of its code and
    /// heap of its simulated disk (`None`: not measured, see
    /// [`crate::memory`]).
    pub node_peak: Option<crate::memory::NodePeak>,
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Summarizes the reports of one scenario.
pub fn summarize(name: &str, reports: &[RunReport], wall_secs: f64) -> Summary {
    let ok: Vec<&RunReport> = reports.iter().filter(|r| r.result.is_ok()).collect();
    let appends: u64 = ok.iter().map(|r| r.appends).sum();
    let per_k = |n: u64| if appends == 0 { 0.0 } else { n as f64 * 1000.0 / appends as f64 };
    Summary {
        scenario: name.to_string(),
        seeds: reports.len(),
        failures: reports.iter().filter_map(|r| r.result.clone().err().map(|e| (r.seed, e))).collect(),
        converge_ms: (
            median(ok.iter().map(|r| r.converge_ms).collect()),
            ok.iter().map(|r| r.converge_ms).max().unwrap_or(0),
        ),
        frames_after_heal: median(ok.iter().map(|r| r.frames_after_heal).collect()),
        bytes: median(ok.iter().map(|r| r.bytes).collect()),
        churn_per_1000: (per_k(ok.iter().map(|r| r.churn).sum()), per_k(ok.iter().map(|r| r.churn_dsync).sum())),
        actions: reports.iter().map(|r| r.actions).sum(),
        ops: reports.iter().map(|r| r.ops).sum(),
        crashes: reports.iter().map(|r| r.crashes).sum(),
        connections: reports.iter().map(|r| r.connections).sum(),
        protocol_resets: reports.iter().map(|r| r.protocol_resets).sum(),
        wall_secs,
        queues: reports.iter().fold(Default::default(), |m, r| {
            let q = &r.queues;
            starling_sync::QueueSizes {
                transmit: m.transmit.max(q.transmit),
                transmit_bytes: m.transmit_bytes.max(q.transmit_bytes),
                transmit_blobs: m.transmit_blobs.max(q.transmit_blobs),
                transmit_blob_bytes: m.transmit_blob_bytes.max(q.transmit_blob_bytes),
                events: m.events.max(q.events),
                blobs_queued: m.blobs_queued.max(q.blobs_queued),
                blobs_in_flight: m.blobs_in_flight.max(q.blobs_in_flight),
                peer_wants: m.peer_wants.max(q.peer_wants),
                chunks_in_flight: m.chunks_in_flight.max(q.chunks_in_flight),
                snapshot_in_flight: m.snapshot_in_flight.max(q.snapshot_in_flight),
            }
        }),
        pending_max: reports.iter().map(|r| r.pending_max).max().unwrap_or(0),
        disk_max: reports.iter().map(|r| r.disk_max).max().unwrap_or(0),
        ops_max: reports.iter().map(|r| r.ops).max().unwrap_or(0),
        ops_compacted: reports.iter().map(|r| r.ops_compacted).sum(),
        bodies_collected: reports.iter().map(|r| r.bodies_collected).sum(),
        file_compactions: reports.iter().map(|r| r.file_compactions).sum(),
        spent_uids: reports.iter().map(|r| r.spent_uids).sum(),
        snapshots: reports.iter().fold(Default::default(), |a, r| a + r.snapshots),
        roam: reports.iter().fold((0, 0, 0), |a, r| (a.0 + r.roam.0, a.1 + r.roam.1, a.2 + r.roam.2)),
        roam_short: reports.iter().map(|r| r.roam_short).sum(),
        roam_forgotten: reports.iter().map(|r| r.roam_forgotten).sum(),
        node_peak: reports.iter().flat_map(|r| &r.memory).fold(None, |m: Option<crate::memory::NodePeak>, p| {
            let m = m.unwrap_or_default();
            Some(crate::memory::NodePeak { heap: m.heap.max(p.heap), disk: m.disk.max(p.disk) })
        }),
    }
}

/// A markdown table of summaries.
pub fn markdown(summaries: &[Summary]) -> String {
    let mut s = String::from(
        "| scenario | seeds | failed | converge after heal (median / max, simulated) | frames after heal | bytes/run | UID churn per 1,000 appends (ours / dsync rule) | crashes | connections | transport resets | client actions/s (wall) | ops compacted / bodies collected / store files compacted / UIDs spent (node 0) | snapshots installed: into empty / into non-empty replicas / transfers resumed / spools offered after a crash | roaming QRESYNC client: syncs / answered in full / over-reported below the expunges remembered / cached UID reused / degraded (k ≥ 1) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for m in summaries {
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} s / {:.1} s | {} | {:.1} KB | {:.1} / {:.1} | {} | {} | {} | {:.0} | {} / {} / {} / {} | {} / {} / {} / {} | {} / {} / {} / {} / {} |\n",
            m.scenario,
            m.seeds,
            m.failures.len(),
            m.converge_ms.0 as f64 / 1000.0,
            m.converge_ms.1 as f64 / 1000.0,
            m.frames_after_heal,
            m.bytes as f64 / 1000.0,
            m.churn_per_1000.0,
            m.churn_per_1000.1,
            m.crashes,
            m.connections,
            m.protocol_resets,
            m.actions as f64 / m.wall_secs.max(1e-9),
            m.ops_compacted,
            m.bodies_collected,
            m.file_compactions,
            m.spent_uids,
            m.snapshots.into_empty,
            m.snapshots.into_non_empty,
            m.snapshots.resumed,
            m.snapshots.offered_after_restart,
            m.roam.0,
            m.roam.1,
            m.roam_forgotten,
            m.roam.2,
            m.roam_short,
        ));
    }
    s.push_str(
        "\nBounds: the largest each run reached (maxima over all seeds); every session queue is checked against its bound at every step.\n\n| scenario | ops in a run (max) | metadata frames queued | metadata bytes queued | body frames queued | body bytes queued | events | bodies waiting to be asked | bodies in flight | bodies the peer wants | ops chunks in flight | snapshot bytes in flight | causal buffer (ops) | largest node store | node peak memory: heap / its disk image |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for m in summaries {
        let q = &m.queues;
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} KB | {} | {:.1} KB | {} | {} | {} | {} | {} | {:.1} KB | {} | {:.1} MB | {} |\n",
            m.scenario,
            m.ops_max,
            q.transmit,
            q.transmit_bytes as f64 / 1000.0,
            q.transmit_blobs,
            q.transmit_blob_bytes as f64 / 1000.0,
            q.events,
            q.blobs_queued,
            q.blobs_in_flight,
            q.peer_wants,
            q.chunks_in_flight,
            q.snapshot_in_flight as f64 / 1000.0,
            m.pending_max,
            m.disk_max as f64 / 1e6,
            match m.node_peak {
                Some(p) => format!("{:.1} MB / {:.1} MB", p.heap as f64 / 1e6, p.disk as f64 / 1e6),
                None => "not measured".to_string(),
            },
        ));
    }
    for m in summaries {
        for (seed, e) in m.failures.iter().take(5) {
            let first = e.lines().next().unwrap_or("");
            s.push_str(&format!("\nFAILED {} seed {seed}: {first}\n", m.scenario));
        }
    }
    s
}

/// A line chart as SVG: one line per series of (x, y) points.
pub fn line_chart(
    path: &std::path::Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), String> {
    use plotters::prelude::*;
    let pts = series.iter().flat_map(|(_, v)| v.iter());
    let (mut x_max, mut y_max) = (1e-9f64, 1e-9f64);
    for (x, y) in pts {
        x_max = x_max.max(*x);
        y_max = y_max.max(*y);
    }
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max * 1.05, 0f64..y_max * 1.1)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(|e| e.to_string())?;
    let colors = [RED, BLUE, GREEN, MAGENTA, BLACK];
    for (k, (name, v)) in series.iter().enumerate() {
        let c = colors[k % colors.len()];
        chart
            .draw_series(LineSeries::new(v.iter().copied(), c.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        chart.draw_series(v.iter().map(|p| Circle::new(*p, 3, c.filled()))).map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
