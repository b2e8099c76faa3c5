//! An in-memory disk for redb that can crash: writes not yet synced are lost,
//! as after a power cut. The simulator runs real stores on it; a crash drops
//! the [`crate::Store`] and reopens it on what was durable.
//!
//! It can also fail on demand, for tests: [`MemDisk::set_full`] makes every
//! write that needs space fail as a full disk does (ENOSPC), and
//! [`MemDisk::fail_after`] lets a number of writes and syncs through and
//! fails every one after them (a power cut at that point, once followed by
//! [`MemDisk::crash`]).

use std::io;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Image {
    /// What reads see: every write so far.
    current: Vec<u8>,
    /// What survives a crash: the image as of the last `sync_data`.
    durable: Vec<u8>,
    /// Byte ranges written since the last sync.
    dirty: Vec<(usize, usize)>,
    /// After a crash, the old handle fails every call: a dropped store must
    /// not reach the disk it was cut off from.
    epoch: u64,
    /// Writes (and length changes) fail with ENOSPC.
    full: bool,
    /// Writes, length changes and syncs still allowed; `None`: no limit.
    ops_left: Option<u64>,
    /// Writes, length changes and syncs done so far.
    ops: u64,
}

/// A shared, crashable memory disk. Clones share the same image.
#[derive(Clone, Debug, Default)]
pub struct MemDisk(Arc<Mutex<Image>>);

/// The handle redb holds: a disk and the epoch it was opened in.
#[derive(Debug)]
pub struct MemDiskBackend {
    disk: MemDisk,
    epoch: u64,
}

impl MemDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend for opening a store on this disk (one at a time).
    pub fn backend(&self) -> MemDiskBackend {
        let epoch = self.0.lock().expect("disk").epoch;
        MemDiskBackend { disk: self.clone(), epoch }
    }

    /// Power cut: every write since the last sync is lost, and backends
    /// opened before now fail from here on.
    pub fn crash(&self) {
        let mut img = self.0.lock().expect("disk");
        img.current = img.durable.clone();
        img.dirty.clear();
        img.epoch += 1;
    }

    /// Makes writes fail as on a full disk (ENOSPC), or work again.
    pub fn set_full(&self, full: bool) {
        self.0.lock().expect("disk").full = full;
    }

    /// Lets `n` more writes, length changes and syncs through, then fails
    /// every one (`None`: no limit). Reads keep working.
    pub fn fail_after(&self, n: Option<u64>) {
        self.0.lock().expect("disk").ops_left = n;
    }

    /// Writes, length changes and syncs done since the disk was made.
    pub fn ops(&self) -> u64 {
        self.0.lock().expect("disk").ops
    }

    /// A copy of the disk as a crash now would leave it (what was synced).
    pub fn durable_copy(&self) -> MemDisk {
        let img = self.0.lock().expect("disk");
        let image = Image { current: img.durable.clone(), durable: img.durable.clone(), ..Image::default() };
        MemDisk(Arc::new(Mutex::new(image)))
    }

    /// Bytes on the disk.
    pub fn len(&self) -> usize {
        self.0.lock().expect("disk").current.len()
    }

    /// Whether nothing was ever written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl MemDiskBackend {
    fn image(&self) -> io::Result<std::sync::MutexGuard<'_, Image>> {
        let img = self.disk.0.lock().map_err(|_| io::Error::other("disk lock poisoned"))?;
        if img.epoch != self.epoch {
            return Err(io::Error::other("disk crashed under this handle"));
        }
        Ok(img)
    }

    /// The image, for a change: counts it and applies the faults.
    fn image_for_change(&self, grows: bool) -> io::Result<std::sync::MutexGuard<'_, Image>> {
        let mut img = self.image()?;
        if let Some(left) = img.ops_left {
            if left == 0 {
                return Err(io::Error::other("injected I/O failure"));
            }
            img.ops_left = Some(left - 1);
        }
        if img.full && grows {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        img.ops += 1;
        Ok(img)
    }
}

fn range(offset: u64, len: usize, size: usize) -> io::Result<std::ops::Range<usize>> {
    let start = usize::try_from(offset).map_err(|_| io::Error::other("offset out of range"))?;
    let end = start.checked_add(len).filter(|e| *e <= size).ok_or_else(|| io::Error::other("out of range"))?;
    Ok(start..end)
}

impl redb::StorageBackend for MemDiskBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.image()?.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let img = self.image()?;
        let r = range(offset, out.len(), img.current.len())?;
        out.copy_from_slice(&img.current[r]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let grows = self.image()?.current.len() < len as usize;
        let mut img = self.image_for_change(grows)?;
        let len = usize::try_from(len).map_err(|_| io::Error::other("length out of range"))?;
        let old = img.current.len();
        img.current.resize(len, 0);
        if len > old {
            img.dirty.push((old, len));
        }
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut img = self.image_for_change(false)?;
        let Image { current, durable, dirty, .. } = &mut *img;
        durable.resize(current.len(), 0);
        for (start, end) in dirty.drain(..) {
            let end = end.min(current.len());
            if start < end {
                durable[start..end].copy_from_slice(&current[start..end]);
            }
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        // A full disk fails writes too (delayed allocation, a sparse file).
        let mut img = self.image_for_change(true)?;
        let r = range(offset, data.len(), img.current.len())?;
        img.current[r.clone()].copy_from_slice(data);
        img.dirty.push((r.start, r.end));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, StoreOptions};
    use starling_model::{ReplicaId, INBOX};

    #[test]
    fn committed_batches_survive_a_crash_and_the_old_handle_is_cut_off() {
        let disk = MemDisk::new();
        let node = ReplicaId(7);
        let store = Store::open_on(disk.backend(), "mem", node, StoreOptions::default()).unwrap();
        store.add_account("a").unwrap();
        store.write("a", |b| b.append(INBOX, b"Subject: x\r\n\r\nx\r\n", 1, vec![]).map(|_| ())).unwrap();
        let before = store.dump("a").unwrap();
        disk.crash();
        // The store that was running when the power went cannot write any more.
        assert!(store.write("a", |b| b.append(INBOX, b"y", 2, vec![]).map(|_| ())).is_err());
        drop(store);
        let store = Store::open_on(disk.backend(), "mem", node, StoreOptions::default()).unwrap();
        assert_eq!(store.dump("a").unwrap(), before);
    }
}
