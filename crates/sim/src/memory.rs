//! Per-node memory of a simulated run.
//!
//! A run's nodes share one process, so the process's RSS says nothing of
//! one node. Here heap bytes are counted by who allocated them: the world
//! marks the running thread with the node whose code it runs (its store,
//! its links and sessions, the frames they sent that are still on the
//! simulated network) or with that node's disk image, and [`Metered`], a
//! global allocator, writes that mark into a header before each block. The
//! block is charged to its owner until it is freed, wherever it is freed;
//! a block grown in place stays its first owner's. Each owner's peak is
//! kept. Bytes are those the program asked for (headers not counted).
//!
//! Only a binary that installs [`Metered`] measures (`starling-sim` does;
//! `starling sim` does not, so the node carries no header per block);
//! elsewhere [`peaks`] answers `None` and marking costs a thread-local store.
//!
//! Bounds: at most [`SLOTS`] threads measure at once (the rest run
//! unmeasured) and a run's first [`NODES`] nodes are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering::Relaxed};

/// Threads that can measure runs at once.
pub const SLOTS: usize = 32;
/// Nodes counted per run.
pub const NODES: usize = 64;
/// Owners per slot: each node's heap, then each node's disk.
const PER_SLOT: usize = 2 * NODES;
const OWNERS: usize = SLOTS * PER_SLOT;
/// The header before each block (holds the owner); also its least alignment.
const HEADER: usize = 16;

static LIVE: [AtomicI64; OWNERS] = [const { AtomicI64::new(0) }; OWNERS];
static PEAK: [AtomicI64; OWNERS] = [const { AtomicI64::new(0) }; OWNERS];
/// Each slot's run number: blocks of an earlier run are no longer counted.
static RUN: [AtomicU32; SLOTS] = [const { AtomicU32::new(0) }; SLOTS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

const NO_SLOT: u32 = u32::MAX;
const UNASSIGNED: u32 = u32::MAX - 1;

thread_local! {
    /// The owner charged now, plus one (0: nobody's, not counted).
    static OWNER: Cell<u32> = const { Cell::new(0) };
    /// This thread's slot (`UNASSIGNED` before its first run, `NO_SLOT` if
    /// every slot was taken).
    static SLOT: Cell<u32> = const { Cell::new(UNASSIGNED) };
}

/// Who the thread's allocations are charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The simulator itself (scheduler, checker, report): not counted.
    World,
    /// Node `i`'s code: store, links, sessions, the frames it sent.
    Node(usize),
    /// Node `i`'s simulated disk (the file image and its durable copy).
    Disk(usize),
}

/// While alive, allocations on this thread are charged to an owner; on drop
/// the previous owner is charged again (marks nest).
#[must_use = "the mark ends when this is dropped"]
pub struct Charge(u32);

impl Drop for Charge {
    fn drop(&mut self) {
        OWNER.with(|o| o.set(self.0));
    }
}

/// Charges this thread's allocations to `owner` until the result is dropped.
pub fn charge(owner: Owner) -> Charge {
    let slot = SLOT.with(Cell::get);
    let next = match owner {
        _ if slot >= NO_SLOT - 1 => 0,
        Owner::World => 0,
        Owner::Node(i) | Owner::Disk(i) if i >= NODES => 0,
        Owner::Node(i) => slot * PER_SLOT as u32 + i as u32 + 1,
        Owner::Disk(i) => slot * PER_SLOT as u32 + (NODES + i) as u32 + 1,
    };
    Charge(OWNER.with(|o| o.replace(next)))
}

/// Starts counting a new run on this thread: every owner of its slot at
/// zero, blocks of the previous run no longer counted when freed.
pub fn begin_run() {
    let mut slot = SLOT.with(Cell::get);
    if slot == UNASSIGNED {
        let next = NEXT_SLOT.fetch_add(1, Relaxed);
        slot = if next < SLOTS { next as u32 } else { NO_SLOT };
        SLOT.with(|s| s.set(slot));
    }
    OWNER.with(|o| o.set(0));
    if slot == NO_SLOT {
        return;
    }
    let slot = slot as usize;
    RUN[slot].fetch_add(1, Relaxed);
    for k in slot * PER_SLOT..(slot + 1) * PER_SLOT {
        LIVE[k].store(0, Relaxed);
        PEAK[k].store(0, Relaxed);
    }
}

/// The most one node held at once in this thread's run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodePeak {
    /// Heap bytes of its code (store, links, sessions, frames in flight).
    pub heap: u64,
    /// Heap bytes of its simulated disk.
    pub disk: u64,
}

/// Each of the first `nodes` nodes' peaks since [`begin_run`]; `None` when
/// nothing is measured ([`Metered`] not installed, or no slot left).
pub fn peaks(nodes: usize) -> Option<Vec<NodePeak>> {
    let slot = SLOT.with(Cell::get);
    if !INSTALLED.load(Relaxed) || slot >= NO_SLOT - 1 {
        return None;
    }
    let base = slot as usize * PER_SLOT;
    let at = |k: usize| PEAK[base + k].load(Relaxed).max(0) as u64;
    Some((0..nodes.min(NODES)).map(|i| NodePeak { heap: at(i), disk: at(NODES + i) }).collect())
}

/// Bytes node `i` (or its disk) holds now, for tests.
pub fn live(owner: Owner) -> Option<i64> {
    let slot = SLOT.with(Cell::get);
    if !INSTALLED.load(Relaxed) || slot >= NO_SLOT - 1 {
        return None;
    }
    let base = slot as usize * PER_SLOT;
    match owner {
        Owner::World => None,
        Owner::Node(i) => (i < NODES).then(|| LIVE[base + i].load(Relaxed)),
        Owner::Disk(i) => (i < NODES).then(|| LIVE[base + NODES + i].load(Relaxed)),
    }
}

/// The global allocator that counts: the system's, with a header before
/// each block naming its owner and run.
pub struct Metered;

/// The block's layout with its header, and where the caller's bytes start.
fn wrapped(layout: Layout) -> Option<(Layout, usize)> {
    let align = layout.align().max(HEADER);
    let wrapped = Layout::from_size_align(layout.size().checked_add(align)?, align).ok()?;
    Some((wrapped, align))
}

/// The header for a new block charged to the thread's owner (0: nobody).
fn stamp(size: usize) -> u64 {
    let owner = OWNER.try_with(Cell::get).unwrap_or(0);
    if owner == 0 {
        return 0;
    }
    let k = owner as usize - 1;
    let run = RUN[k / PER_SLOT].load(Relaxed);
    add(k, size as i64);
    (u64::from(run) << 32) | u64::from(owner)
}

/// The owner a header still counts for (its run is the slot's current one).
fn counted(header: u64) -> Option<usize> {
    let owner = (header & 0xffff_ffff) as usize;
    if owner == 0 {
        return None;
    }
    let k = owner - 1;
    (RUN[k / PER_SLOT].load(Relaxed) == (header >> 32) as u32).then_some(k)
}

fn add(k: usize, bytes: i64) {
    let now = LIVE[k].fetch_add(bytes, Relaxed) + bytes;
    if bytes > 0 {
        PEAK[k].fetch_max(now, Relaxed);
    }
}

unsafe impl GlobalAlloc for Metered {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { self.allocate(layout, false) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe { self.allocate(layout, true) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let (wrapped, offset) = wrapped(layout).expect("a layout this allocator gave");
        // SAFETY: `ptr` came from `allocate` with this layout: the block
        // starts `offset` bytes before it, with the header at its start.
        unsafe {
            let base = ptr.sub(offset);
            let header = base.cast::<u64>().read();
            System.dealloc(base, wrapped);
            if let Some(k) = counted(header) {
                add(k, -(layout.size() as i64));
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (wrapped, offset) = wrapped(layout).expect("a layout this allocator gave");
        let Some(new_wrapped) = new_size.checked_add(offset) else { return std::ptr::null_mut() };
        if Layout::from_size_align(new_wrapped, wrapped.align()).is_err() {
            return std::ptr::null_mut();
        }
        // SAFETY: the block starts `offset` bytes before `ptr` with the
        // layout `wrapped`; the new size keeps the same alignment and the
        // header at the start, which the system's realloc copies.
        unsafe {
            let base = System.realloc(ptr.sub(offset), wrapped, new_wrapped);
            if base.is_null() {
                return base;
            }
            if let Some(k) = counted(base.cast::<u64>().read()) {
                add(k, new_size as i64 - layout.size() as i64);
            }
            base.add(offset)
        }
    }
}

impl Metered {
    /// # Safety
    /// As [`GlobalAlloc::alloc`].
    unsafe fn allocate(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        if !INSTALLED.load(Relaxed) {
            INSTALLED.store(true, Relaxed);
        }
        let Some((wrapped, offset)) = wrapped(layout) else { return std::ptr::null_mut() };
        // SAFETY: `wrapped` has a non-zero size (it holds the header) and
        // an alignment of at least the header's; the caller's bytes start
        // `offset` (a multiple of their alignment) after the header.
        unsafe {
            let base = if zeroed { System.alloc_zeroed(wrapped) } else { System.alloc(wrapped) };
            if base.is_null() {
                return base;
            }
            base.cast::<u64>().write(stamp(layout.size()));
            base.add(offset)
        }
    }
}

/// A node's simulated disk with its allocations charged to [`Owner::Disk`].
#[derive(Debug)]
pub struct MeteredDisk {
    inner: starling_store::memdisk::MemDiskBackend,
    node: usize,
}

impl MeteredDisk {
    /// `inner`, node `node`'s disk.
    pub fn new(inner: starling_store::memdisk::MemDiskBackend, node: usize) -> Self {
        MeteredDisk { inner, node }
    }
}

impl redb::StorageBackend for MeteredDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let _disk = charge(Owner::Disk(self.node));
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let _disk = charge(Owner::Disk(self.node));
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let _disk = charge(Owner::Disk(self.node));
        self.inner.write(offset, data)
    }
}
