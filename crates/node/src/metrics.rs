//! The Prometheus metrics endpoint (text format 0.0.4 over plain HTTP, meant
//! for loopback): what `starling status` shows, as gauges and counters.

use crate::control::NodeStatus;
use starling_model::ReplicaId;
use starling_store::Store;
use std::fmt::Write;

/// What the metrics read besides the node's status.
pub struct Extra {
    /// Live IMAP sessions.
    pub imap_sessions: usize,
    /// The IMAP sort cache's counters.
    pub sort_cache: starling_imap::SortCacheStats,
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The metrics page.
pub fn render(store: &Store, me: ReplicaId, st: &NodeStatus, extra: &Extra) -> String {
    let mut o = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    let mut messages = Vec::new();
    let mut ops = Vec::new();
    for a in &st.accounts {
        let l = label(&a.name);
        let count = store
            .read(&a.name)
            .map(|r| {
                let ids: Vec<_> = r.names().tree.by_name.values().copied().collect();
                ids.iter().filter_map(|id| r.status(*id).ok()).map(|s| s.messages).sum::<u64>()
            })
            .unwrap_or(0);
        messages.push((format!("{{account=\"{l}\"}}"), count));
        let me = store.replica_id(&a.name).unwrap_or(me);
        let local = store.version(&a.name).map(|vv| vv.get(me)).unwrap_or(0);
        ops.push((format!("{{account=\"{l}\",origin=\"local\"}}"), local));
        ops.push((format!("{{account=\"{l}\",origin=\"remote\"}}"), a.ops.saturating_sub(local)));
    }
    metric("starling_messages", "gauge", "Messages in an account, all mailboxes.", messages);
    metric("starling_ops_applied_total", "counter", "Ops applied, authored here or by peers.", ops);
    let missing = st.accounts.iter().map(|a| (format!("{{account=\"{}\"}}", label(&a.name)), a.bodies_missing as u64));
    metric("starling_bodies_missing", "gauge", "Bodies referenced but not stored here.", missing.collect());
    let per_account = |f: fn(&crate::control::AccountStatus) -> u64| {
        st.accounts.iter().map(|a| (format!("{{account=\"{}\"}}", label(&a.name)), f(a))).collect::<Vec<_>>()
    };
    metric("starling_account_bytes", "gauge", "Bytes of an account's live messages.", per_account(|a| a.bytes));
    metric(
        "starling_bodies_to_collect",
        "gauge",
        "Bodies released by expunges, waiting for every peer to hold the expunge.",
        per_account(|a| a.bodies_to_collect),
    );
    metric("starling_log_ops", "gauge", "Ops the op log holds (above its floor).", per_account(|a| a.log_ops));
    metric("starling_log_floor_ops", "gauge", "Ops compacted away from the op log.", per_account(|a| a.log_floor_ops));
    metric(
        "starling_snapshot_arriving_bytes",
        "gauge",
        "Bytes held of snapshots coming in from peers (a join in progress).",
        per_account(|a| a.snapshots_arriving.iter().map(|s| s.got).sum()),
    );
    let peer = |p: &crate::control::PeerStatus| label(&p.node_id);
    let connected = st.peers.iter().map(|p| (format!("{{peer=\"{}\"}}", peer(p)), p.connected as u64));
    metric("starling_peer_connected", "gauge", "Whether a pinned peer is connected.", connected.collect());
    let mut lag = Vec::new();
    let mut bytes = Vec::new();
    for p in &st.peers {
        for l in &p.behind {
            let a = label(&l.account);
            lag.push((format!("{{peer=\"{}\",account=\"{a}\",direction=\"peer_lacks\"}}", peer(p)), l.peer_lacks));
            lag.push((format!("{{peer=\"{}\",account=\"{a}\",direction=\"we_lack\"}}", peer(p)), l.we_lack));
        }
        bytes.push((format!("{{peer=\"{}\",direction=\"in\"}}", peer(p)), p.bytes_in));
        bytes.push((format!("{{peer=\"{}\",direction=\"out\"}}", peer(p)), p.bytes_out));
    }
    metric("starling_peer_lag_ops", "gauge", "Ops one side of a peer link lacks.", lag);
    metric("starling_peer_bytes_total", "counter", "Protocol bytes exchanged with a peer.", bytes);
    metric(
        "starling_bodies_damaged_total",
        "counter",
        "Whole-body reads that did not hash to the body's id (each is refused, then fetched again from a peer).",
        vec![(String::new(), store.corrupt_reads())],
    );
    metric(
        "starling_missing_body_scans_total",
        "counter",
        "Scans of an account's messages for the bodies a partial replica's policy wants (each reads every message; a rename of a mailbox causes one).",
        vec![(String::new(), store.missing_scans())],
    );
    metric(
        "starling_store_file_bytes",
        "gauge",
        "Length of the store file.",
        vec![(String::new(), st.store_file_bytes)],
    );
    let f = st.file_compactions;
    metric(
        "starling_file_compactions_total",
        "counter",
        "Online compactions of the store file.",
        vec![(String::new(), f.runs)],
    );
    metric(
        "starling_file_compactions_busy_total",
        "counter",
        "Online compactions left for later because the store was in use.",
        vec![(String::new(), f.busy)],
    );
    metric(
        "starling_file_free_checks_total",
        "counter",
        "Counts of the store file's free pages (each reads the tables' pages); skipped while too little can have been freed.",
        vec![(String::new(), f.walks)],
    );
    metric(
        "starling_file_compaction_pause_milliseconds_total",
        "counter",
        "Time store operations waited for online compactions, in total.",
        vec![(String::new(), f.pause_ms)],
    );
    metric(
        "starling_store_reopens_total",
        "counter",
        "Times the store reopened its file after a disk error (a full disk, then space again).",
        vec![(String::new(), store.reopens())],
    );
    let exposure = store.exposure_stats();
    metric(
        "starling_exposure_waits_total",
        "counter",
        "Changes (LMTP deliveries, IMAP commands that wrote) whose report waited for durability.peers pinned peers to hold them.",
        vec![(String::new(), exposure.waits)],
    );
    metric(
        "starling_exposure_short_total",
        "counter",
        "Of those, the ones fewer peers held by durability.wait_ms (degraded, or refused with LMTP 451).",
        vec![(String::new(), exposure.short)],
    );
    metric(
        "starling_exposure_wait_milliseconds_total",
        "counter",
        "Time those waits took, in total.",
        vec![(String::new(), exposure.wait_ms)],
    );
    metric(
        "starling_exposure_catch_up_short_total",
        "counter",
        "New UIDs shown to clients before this replica caught up with durability.peers connected peers (by the wait's end).",
        vec![(String::new(), exposure.catch_up_short)],
    );
    metric(
        "starling_imap_sessions",
        "gauge",
        "Open IMAP connections.",
        vec![(String::new(), extra.imap_sessions as u64)],
    );
    let sc = &extra.sort_cache;
    metric(
        "starling_imap_sort_cache_bytes",
        "gauge",
        "Bytes the SORT/THREAD cache holds (bounded by imap.sort_cache_bytes).",
        vec![(String::new(), sc.bytes as u64)],
    );
    metric(
        "starling_imap_sort_cache_entries",
        "gauge",
        "Mailboxes the SORT/THREAD cache holds.",
        vec![(String::new(), sc.entries as u64)],
    );
    metric(
        "starling_imap_sort_cache_answers_total",
        "counter",
        "SORTs and THREADs the cache answered, by how its entry was brought up to date.",
        vec![
            ("{how=\"hit\"}".into(), sc.hits),
            ("{how=\"refreshed\"}".into(), sc.refreshes),
            ("{how=\"built\"}".into(), sc.builds),
        ],
    );
    metric(
        "starling_imap_sort_cache_evictions_total",
        "counter",
        "Entries the SORT/THREAD cache dropped to stay within its bytes.",
        vec![(String::new(), sc.evictions)],
    );
    metric(
        "starling_imap_thread_kept_answers_total",
        "counter",
        "THREADs answered from the threads kept over a whole, unchanged mailbox.",
        vec![(String::new(), sc.threads_kept)],
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{AccountStatus, SnapshotArriving};

    /// A join in progress shows as the bytes held of the snapshots coming in.
    #[test]
    fn snapshots_arriving_are_a_gauge_per_account() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), ReplicaId(1), Default::default()).unwrap();
        let arriving = |got| SnapshotArriving { from: "p".into(), got, total: 1 << 20 };
        let st = NodeStatus {
            accounts: vec![
                AccountStatus {
                    name: "a".into(),
                    snapshots_arriving: vec![arriving(4096), arriving(100)],
                    ..Default::default()
                },
                AccountStatus { name: "b".into(), ..Default::default() },
            ],
            ..Default::default()
        };
        let page = render(&store, ReplicaId(1), &st, &Extra { imap_sessions: 0, sort_cache: Default::default() });
        assert!(page.contains("starling_snapshot_arriving_bytes{account=\"a\"} 4196\n"), "{page}");
        assert!(page.contains("starling_snapshot_arriving_bytes{account=\"b\"} 0\n"), "{page}");
    }
}
