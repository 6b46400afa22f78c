//! Storage enters the ring only through the [`Storage`] trait.
//!
//! A ring lives in two files: `ring.data` (the preallocated record area) and `ring.meta` (the
//! checkpoint slots). [`FileStorage`] is the production implementation: `fallocate`d up front so
//! appends never meet `ENOSPC`, opened with `O_DIRECT` where the filesystem allows it. The fault
//! layer in [`crate::sim`] implements the same trait for crash and corruption tests.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A fixed-size, positionally addressed file.
///
/// All offsets and lengths the ring uses are multiples of 4096 and all buffers are 4096-aligned,
/// so implementations may use `O_DIRECT`.
pub trait Storage: Send + Sync + core::fmt::Debug {
    /// Size in bytes (fixed at creation).
    fn len_bytes(&self) -> u64;
    /// Writes all of `buffers`, back to back, starting at `offset`. The data is *written*, not
    /// durable: it may be lost, torn or reordered by a crash until [`Storage::sync_data`] returns.
    fn write_all_at(&self, offset: u64, buffers: &[&[u8]]) -> io::Result<()>;
    /// Fills `buffer` from `offset`.
    fn read_exact_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()>;
    /// Makes every write that returned before this call durable. An error means some of them may
    /// be lost, and the caller must not trust anything it wrote since the last success.
    fn sync_data(&self) -> io::Result<()>;
    /// Where this storage lives, for error messages.
    fn location(&self) -> &Path;
    /// The file descriptor, when this storage is a real file opened with `O_DIRECT`: an external
    /// writer (the io_uring ingest) may then write records the ring planned
    /// ([`crate::Ring::plan_append`]) with the same semantics as the ring's own writes.
    fn direct_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}

/// The two files of one ring.
#[derive(Clone, Debug)]
pub struct RingFiles {
    /// Checkpoint slots.
    pub meta: Arc<dyn Storage>,
    /// Record area.
    pub data: Arc<dyn Storage>,
}

/// Name of the data file inside a ring directory.
pub const DATA_FILE_NAME: &str = "ring.data";
/// Name of the meta (checkpoint) file inside a ring directory.
pub const META_FILE_NAME: &str = "ring.meta";
/// Suffix of the files of a ring being created; renamed away when creation completes.
pub const CREATING_SUFFIX: &str = ".creating";
/// Name of the lock file inside a ring directory.
pub const LOCK_FILE_NAME: &str = "ring.lock";

/// A real file.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    path: PathBuf,
    len_bytes: u64,
    direct_io: bool,
}

impl FileStorage {
    /// Creates `path` (which must not exist) and preallocates `len_bytes` with `fallocate`.
    ///
    /// With `zero_fill`, every block is also written once with zeros. `fallocate` leaves the
    /// extents *unwritten*, and the first write to each costs an extent conversion at
    /// `fdatasync`: on ext4 that caps the first lap's throughput well below the disk's (see the
    /// README's performance section). Zero-filling pays that once, at creation, with progress in
    /// the log.
    pub fn create(path: &Path, len_bytes: u64, zero_fill: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        preallocate(&file, len_bytes)?;
        file.sync_all()?;
        drop(file);
        let storage = Self::open(path, true)?;
        if zero_fill {
            storage.zero_fill()?;
        }
        Ok(storage)
    }

    fn zero_fill(&self) -> io::Result<()> {
        const CHUNK_BYTES: usize = 8 << 20;
        const PROGRESS_EVERY_BYTES: u64 = 1 << 30;
        let zeros = crate::aligned::AlignedBuf::zeroed(CHUNK_BYTES);
        let mut offset = 0u64;
        let mut next_progress = PROGRESS_EVERY_BYTES;
        while offset < self.len_bytes {
            let length = (self.len_bytes - offset).min(CHUNK_BYTES as u64);
            let length = usize::try_from(length).expect("chunk fits");
            self.write_all_at(offset, &[&zeros.as_slice()[..length]])?;
            offset += length as u64;
            if offset >= next_progress {
                tracing::info!(
                    path = %self.path.display(),
                    percent = offset * 100 / self.len_bytes,
                    written_bytes = offset,
                    total_bytes = self.len_bytes,
                    "zero-filling ring data file"
                );
                next_progress += PROGRESS_EVERY_BYTES;
            }
        }
        self.file.sync_data()
    }

    /// Opens an existing file, with `O_DIRECT` if `direct_io` and the filesystem supports it.
    pub fn open(path: &Path, direct_io: bool) -> io::Result<Self> {
        let len_bytes = std::fs::metadata(path)?.len();
        if direct_io {
            match open_direct(path) {
                Ok(file) => return Ok(Self { file, path: path.to_path_buf(), len_bytes, direct_io: true }),
                Err(error) if error.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    tracing::warn!(
                        path = %path.display(),
                        "O_DIRECT not supported by this filesystem; using buffered I/O with fdatasync"
                    );
                }
                Err(error) => return Err(error),
            }
        }
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Self { file, path: path.to_path_buf(), len_bytes, direct_io: false })
    }

    /// Opens an existing file for reading only (buffered); writes through it fail with `EBADF`.
    pub fn open_read_only(path: &Path) -> io::Result<Self> {
        let len_bytes = std::fs::metadata(path)?.len();
        let file = OpenOptions::new().read(true).open(path)?;
        Ok(Self { file, path: path.to_path_buf(), len_bytes, direct_io: false })
    }

    /// Whether the file is open with `O_DIRECT`.
    pub fn is_direct_io(&self) -> bool {
        self.direct_io
    }
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> io::Result<File> {
    Err(io::Error::from_raw_os_error(rustix::io::Errno::INVAL.raw_os_error()))
}

#[cfg(target_os = "linux")]
fn preallocate(file: &File, len_bytes: u64) -> io::Result<()> {
    rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len_bytes)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn preallocate(file: &File, len_bytes: u64) -> io::Result<()> {
    // No fallocate: extend and write the last block so the length is real. Appends may still
    // meet ENOSPC on filesystems that allocate lazily; the log says so at creation.
    tracing::warn!("fallocate unavailable on this platform; the ring file is sparse");
    file.set_len(len_bytes)
}

impl Storage for FileStorage {
    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn write_all_at(&self, mut offset: u64, buffers: &[&[u8]]) -> io::Result<()> {
        let mut slices: heapless::Vec<&[u8], 4> = heapless::Vec::new();
        for buffer in buffers {
            slices.push(buffer).map_err(|_| io::Error::other("at most 4 buffers per write"))?;
        }
        while !slices.is_empty() {
            let io_slices: heapless::Vec<io::IoSlice<'_>, 4> =
                slices.iter().map(|s| io::IoSlice::new(s)).collect();
            let written = rustix::io::pwritev(&self.file, &io_slices, offset)?;
            if written == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote nothing"));
            }
            offset += written as u64;
            let mut remaining = written;
            while remaining > 0 {
                let first = slices[0];
                if remaining >= first.len() {
                    remaining -= first.len();
                    slices.remove(0);
                } else {
                    slices[0] = &first[remaining..];
                    remaining = 0;
                }
            }
            while slices.first().is_some_and(|s| s.is_empty()) {
                slices.remove(0);
            }
        }
        Ok(())
    }

    fn read_exact_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buffer, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn direct_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.direct_io.then(|| self.file.as_fd())
    }

    fn location(&self) -> &Path {
        &self.path
    }
}
