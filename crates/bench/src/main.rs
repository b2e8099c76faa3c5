//! Benchmarks of Starling, printing tables for `docs/benchmarks.md`.
//!
//! `starling-bench model` measures the data model: UID churn against dsync's
//! rule on the same histories, the cost of applying one flag op, bytes per
//! flag delta, and resident bytes per message. Memory is counted by a global
//! allocator wrapper, so the figures are heap bytes actually requested.

use clap::{Parser, Subcommand};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

mod deliver;
mod gossip;
mod heal;
mod imap;
mod join;
mod lmtp;
mod model;
mod net;
mod procs;
mod reach;
mod relay;
mod relay_sync;
mod snapshot;
mod store;
mod sync;
mod year;

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap bytes currently allocated by the process.
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

#[derive(Parser)]
#[command(about = "Starling benchmarks")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// The data model: UID churn, flag op cost and size, memory per message.
    Model {
        /// Messages for the memory measurement.
        #[arg(long, default_value_t = 1_000_000)]
        messages: usize,
        /// Appends per churn pattern.
        #[arg(long, default_value_t = 2_000)]
        appends: usize,
    },
    /// The store: flag-op apply throughput, open time and memory of a large
    /// store, bytes on disk per message.
    Store {
        /// Messages in the large store.
        #[arg(long, default_value_t = 1_000_000)]
        messages: usize,
        /// Where to build the stores (a fresh temporary directory by default).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// What read-time BLAKE3 verification costs a whole-body read from the
    /// store (1 MB text, 1 MB incompressible, 4 KB).
    StoreVerify {
        /// Where to put the store.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Imports a Maildir tree into a fresh store and prints the summary.
    Import {
        /// The Maildir root.
        maildir: std::path::PathBuf,
        /// Where to put the store.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Two stores syncing through the real session code (in process, no
    /// network): initial sync, 1% flag change, no-op, change latency.
    Sync {
        /// The Maildir tree to sync (e.g. gen-maildir.py maildir DIR 10000 --seed 1).
        maildir: std::path::PathBuf,
        /// Where to put the stores.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Two `starling serve` processes over QUIC on loopback: initial sync,
    /// 1% flag change, change latency, no-op reconnect.
    Net {
        /// The Maildir tree to sync.
        maildir: std::path::PathBuf,
        /// The `starling` binary (default: next to this one).
        #[arg(long)]
        starling: Option<std::path::PathBuf>,
    },
    /// An IMAP server over plain TCP (LOGIN), from outside: APPEND throughput,
    /// FETCH of 10,000 headers, STORE of 10,000 flags, SELECT of a
    /// 100,000-message mailbox with CONDSTORE, memory per idle connection.
    Imap(Box<imap::Args>),
    /// A new node joins an account of N ops written by W nodes (history
    /// built through the real sessions, then `starling serve` over QUIC):
    /// time until it holds every op, ops/s, peak RSS of both processes.
    Join(join::Args),
    /// Two `starling serve` nodes heal after N deliveries per side, each
    /// shown to an IMAP client while the other node was stopped.
    Heal(heal::Args),
    /// LMTP delivery latency and throughput on three `starling serve` nodes
    /// with exposure after k peers (k, added round trip to a's peers,
    /// connections), or of another LMTP server (`--lmtp`, e.g. Dovecot).
    Deliver(deliver::Args),
    /// A delaying, lossy user-space relay: UDP (default), TCP, or a pipe to
    /// a command (for `doveadm sync`).
    Relay(relay::Args),
    /// The initial sync of a Maildir tree between two `starling serve`
    /// processes through the UDP relay (one delay/loss setting per call).
    RelaySync(relay_sync::Args),
    /// A year of mail on three nodes (deliveries, flags, expunges, a node
    /// cut off now and then) with housekeeping on or off: store size against
    /// live data, op-log length, RSS over time; then a new node joins.
    Year(year::Args),
    /// Cluster membership by gossip on the simulated network: time to agree
    /// and traffic against the number of nodes, then swarm seeds with faults.
    Gossip(gossip::Args),
    /// One change reaching every node of a simulated cluster, full mesh
    /// against a bounded fan-out: time and frame bytes against N.
    Reach(reach::Args),
    /// A whole snapshot of N live messages: its size, and the time and peak
    /// RSS of building it and of installing it into an empty store, each
    /// in a process of its own.
    Snapshot(snapshot::Args),
    /// (internal) Opens a store and reports time to first answer and RSS.
    OpenProbe {
        /// The store file.
        path: std::path::PathBuf,
    },
}

fn main() {
    match Cli::parse().what {
        What::Model { messages, appends } => model::run(messages, appends),
        What::Store { messages, dir } => store::run(messages, dir),
        What::StoreVerify { dir } => store::verify_cost(dir),
        What::Import { maildir, dir } => store::import(&maildir, dir),
        What::OpenProbe { path } => store::open_probe(&path),
        What::Sync { maildir, dir } => sync::run(&maildir, dir),
        What::Net { maildir, starling } => net::run(&maildir, starling),
        What::Imap(args) => imap::run(*args),
        What::Join(args) => join::run(args),
        What::Heal(args) => heal::run(args),
        What::Deliver(args) => deliver::run(args),
        What::Relay(args) => relay::run(args),
        What::RelaySync(args) => relay_sync::run(args),
        What::Year(args) => year::run(args),
        What::Gossip(args) => gossip::run(args),
        What::Reach(args) => reach::run(args),
        What::Snapshot(args) => snapshot::run(args),
    }
}
