//! The storage fault layer: an in-memory [`Storage`] that separates *written* from *durable*.
//!
//! Tests (and the simulator) use [`SimRing`] to run the ring over storage that can crash
//! (dropping or tearing whatever was not synced), fail an `fsync`, fail writes, and have bits
//! flipped or blocks zeroed on the "medium". Randomness is a seeded SplitMix64, so every crash
//! replays exactly from its seed. This is fault injection the real disk cannot do on demand; the
//! real-process SIGKILL test covers the real file path.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::layout::META_FILE_BYTES;
use crate::storage::{RingFiles, Storage};

/// A small, seeded, deterministic generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound > 0`).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next_u64() % bound
    }
}

/// What a crash does to writes that were not yet durable.
#[derive(Clone, Copy, Debug)]
pub enum CrashMode {
    /// Every unsynced write is lost (process killed before the page cache was flushed).
    DropUnsynced,
    /// Every unsynced write is lost entirely, kept entirely, or torn at 512-byte sector
    /// granularity, chosen at random from the seed (power loss on a disk with a volatile cache).
    Torn {
        /// Seed of the choice.
        seed: u64,
    },
}

#[derive(Debug)]
struct SimFileState {
    durable: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
    failing_syncs: u32,
    failing_writes: bool,
    sync_calls_total: u64,
}

/// One simulated file. Cloning shares the same contents.
#[derive(Clone, Debug)]
pub struct SimFile {
    state: Arc<Mutex<SimFileState>>,
    path: PathBuf,
}

const SECTOR_BYTES: usize = 512;

impl SimFile {
    /// A zero-filled file of `len_bytes`.
    pub fn new(name: &str, len_bytes: u64) -> Self {
        let len = usize::try_from(len_bytes).expect("simulated file fits in memory");
        Self {
            state: Arc::new(Mutex::new(SimFileState {
                durable: vec![0; len],
                pending: Vec::new(),
                failing_syncs: 0,
                failing_writes: false,
                sync_calls_total: 0,
            })),
            path: PathBuf::from(format!("sim://{name}")),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimFileState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a crash to the unsynced writes.
    pub fn crash(&self, mode: CrashMode) {
        let mut state = self.lock();
        let pending = std::mem::take(&mut state.pending);
        let mut rng = match mode {
            CrashMode::DropUnsynced => return,
            CrashMode::Torn { seed } => SplitMix64::new(seed),
        };
        for (offset, bytes) in pending {
            let start = usize::try_from(offset).expect("offset fits");
            match rng.below(3) {
                0 => {}
                1 => state.durable[start..start + bytes.len()].copy_from_slice(&bytes),
                _ => {
                    for (index, sector) in bytes.chunks(SECTOR_BYTES).enumerate() {
                        if rng.below(2) == 0 {
                            let at = start + index * SECTOR_BYTES;
                            state.durable[at..at + sector.len()].copy_from_slice(sector);
                        }
                    }
                }
            }
        }
        state.failing_syncs = 0;
        state.failing_writes = false;
    }

    /// Makes the next `count` calls to `sync_data` fail with `EIO`, dropping the unsynced writes
    /// as Linux may drop dirty pages after a writeback error.
    pub fn fail_next_syncs(&self, count: u32) {
        self.lock().failing_syncs = count;
    }

    /// Makes every write fail with `EIO` until the next crash.
    pub fn fail_writes(&self, failing: bool) {
        self.lock().failing_writes = failing;
    }

    /// Flips one bit of the durable contents (media corruption).
    pub fn flip_bit(&self, offset: u64, bit: u8) {
        let mut state = self.lock();
        let at = usize::try_from(offset).expect("offset fits");
        state.durable[at] ^= 1 << (bit % 8);
    }

    /// Overwrites durable contents directly (zero-filled blocks, stale data, misdirected writes).
    pub fn overwrite_durable(&self, offset: u64, bytes: &[u8]) {
        let mut state = self.lock();
        let at = usize::try_from(offset).expect("offset fits");
        state.durable[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// A copy of durable contents.
    pub fn read_durable(&self, offset: u64, len: usize) -> Vec<u8> {
        let state = self.lock();
        let at = usize::try_from(offset).expect("offset fits");
        state.durable[at..at + len].to_vec()
    }

    /// Number of `sync_data` calls so far.
    pub fn sync_calls_total(&self) -> u64 {
        self.lock().sync_calls_total
    }

    /// Number of writes not yet durable.
    pub fn unsynced_writes(&self) -> usize {
        self.lock().pending.len()
    }
}

impl Storage for SimFile {
    fn len_bytes(&self) -> u64 {
        self.lock().durable.len() as u64
    }

    fn write_all_at(&self, offset: u64, buffers: &[&[u8]]) -> io::Result<()> {
        let mut state = self.lock();
        if state.failing_writes {
            return Err(io::Error::other("simulated EIO on write"));
        }
        let total: usize = buffers.iter().map(|b| b.len()).sum();
        let end = offset as usize + total;
        assert!(end <= state.durable.len(), "write past the end of {}", self.path.display());
        let mut bytes = Vec::with_capacity(total);
        for buffer in buffers {
            bytes.extend_from_slice(buffer);
        }
        state.pending.push((offset, bytes));
        Ok(())
    }

    fn read_exact_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()> {
        let state = self.lock();
        let start = usize::try_from(offset).expect("offset fits");
        let end = start + buffer.len();
        if end > state.durable.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past end"));
        }
        buffer.copy_from_slice(&state.durable[start..end]);
        for (write_offset, bytes) in &state.pending {
            let write_start = *write_offset as usize;
            let write_end = write_start + bytes.len();
            let overlap_start = write_start.max(start);
            let overlap_end = write_end.min(end);
            if overlap_start < overlap_end {
                buffer[overlap_start - start..overlap_end - start]
                    .copy_from_slice(&bytes[overlap_start - write_start..overlap_end - write_start]);
            }
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.lock();
        state.sync_calls_total += 1;
        if state.failing_syncs > 0 {
            state.failing_syncs -= 1;
            state.pending.clear();
            return Err(io::Error::other("simulated EIO on fdatasync"));
        }
        let pending = std::mem::take(&mut state.pending);
        for (offset, bytes) in pending {
            let at = offset as usize;
            state.durable[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        Ok(())
    }

    fn location(&self) -> &Path {
        &self.path
    }
}

/// The two simulated files of one ring.
#[derive(Clone, Debug)]
pub struct SimRing {
    /// Checkpoint slots.
    pub meta: SimFile,
    /// Record area.
    pub data: SimFile,
}

impl SimRing {
    /// Zero-filled files for a ring of `capacity_bytes`.
    pub fn new(capacity_bytes: u64) -> Self {
        Self {
            meta: SimFile::new("ring.meta", META_FILE_BYTES),
            data: SimFile::new("ring.data", capacity_bytes),
        }
    }

    /// Handles for `Ring::create_on` / `Ring::open_on`.
    pub fn files(&self) -> RingFiles {
        RingFiles { meta: Arc::new(self.meta.clone()), data: Arc::new(self.data.clone()) }
    }

    /// A torn crash spelled out: of the data file's unsynced writes, exactly the byte ranges in
    /// `reached_medium` (as currently written) become durable; everything else unsynced, in both
    /// files, is lost.
    pub fn crash_keeping(&self, reached_medium: &[(u64, usize)]) {
        for &(offset, length) in reached_medium {
            let mut bytes = vec![0u8; length];
            self.data.read_exact_at(offset, &mut bytes).expect("range inside the simulated file");
            self.data.overwrite_durable(offset, &bytes);
        }
        self.crash(CrashMode::DropUnsynced);
    }

    /// Crashes both files the same way (the data file's choices use `seed`, the meta file's
    /// `seed + 1`).
    pub fn crash(&self, mode: CrashMode) {
        match mode {
            CrashMode::DropUnsynced => {
                self.data.crash(mode);
                self.meta.crash(mode);
            }
            CrashMode::Torn { seed } => {
                self.data.crash(CrashMode::Torn { seed });
                self.meta.crash(CrashMode::Torn { seed: seed.wrapping_add(1) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_writes_are_visible_but_not_durable() {
        let file = SimFile::new("f", 8192);
        file.write_all_at(4096, &[&[7u8; 4096]]).unwrap();
        let mut read = vec![0u8; 4096];
        file.read_exact_at(4096, &mut read).unwrap();
        assert_eq!(read, vec![7u8; 4096]);
        file.crash(CrashMode::DropUnsynced);
        file.read_exact_at(4096, &mut read).unwrap();
        assert_eq!(read, vec![0u8; 4096]);
    }

    #[test]
    fn failed_sync_loses_unsynced_writes() {
        let file = SimFile::new("f", 4096);
        file.write_all_at(0, &[&[1u8; 4096]]).unwrap();
        file.fail_next_syncs(1);
        assert!(file.sync_data().is_err());
        assert_eq!(file.read_durable(0, 4), vec![0; 4]);
        assert_eq!(file.unsynced_writes(), 0);
    }

    #[test]
    fn torn_crash_is_reproducible_from_its_seed() {
        let run = |seed| {
            let file = SimFile::new("f", 1 << 16);
            for index in 0..8u8 {
                file.write_all_at(u64::from(index) * 8192, &[&[index + 1; 8192]]).unwrap();
            }
            file.crash(CrashMode::Torn { seed });
            file.read_durable(0, 1 << 16)
        };
        assert_eq!(run(11), run(11));
        assert_ne!(run(11), run(12));
    }
}
