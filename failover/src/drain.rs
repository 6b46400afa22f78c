//! The drain: reads a stream's ring from its persisted `drain` cursor, assembles one raw FITS
//! file per detector per exposure, uploads each to the base object store, and advances the
//! cursor, durably, only after the base confirmed every file of the exposures behind it.
//!
//! # How: a pipeline
//!
//! The ring holds an exposure's frames interleaved (all segments are read out in parallel) with
//! its two header-service records. The drain reads records in order and keeps a small index per
//! open exposure: for every detector and segment, the frames (their [`RecordInfo`], rows and the
//! FITS ones'-complement sum of their pixels, computed once as they pass). An exposure is ready
//! when every segment of every detector has all its rows and its `EndReadout` metadata arrived;
//! it is drained *incomplete* (`INCOMPL = T`, missing segments zero-filled, see
//! [`crate::fits`]) when nothing arrived for it for `incomplete_timeout`, or when more exposures
//! are open than the index holds.
//!
//! A ready exposure moves to the *sending* queue. The thread that calls [`Drainer::step`] then
//! assembles its files one after the other (wavefront sensors, then science CCDs, then guiders,
//! the observatory's ingest priority), each by fetching its frames again from the ring
//! ([`Reader::fetch`]: the index keeps only where they are, not their pixels, so memory does not
//! grow with the exposure) into a free buffer of a fixed pool, computes its CRC32 and hands it to
//! the upload thread (`upload`); it goes on with the next file, of this exposure or the next
//! ready one, while earlier files are on the wire. Up to `files_in_flight` files are uploading
//! at once, each owning its buffer until the base confirmed it; when none is free, the step
//! waits for a confirmation.
//!
//! An upload task (see `upload`) checks whether the object is already at the base (HEAD), sends
//! it (one conditional PUT up to `multipart_threshold_bytes`, a multipart upload above), verifies
//! it (S3 ETag against the MD5 of the bytes, computed on a blocking thread while the bytes
//! travel; else a read-back CRC32), and retries with backoff until the base confirms it. While
//! the base fails (and until a new drain's first request is answered) only the oldest file tries;
//! the others wait, assembled. Confirmations come back in any order; an exposure is done when
//! every one of its files is confirmed and every exposure dispatched before it is done, so
//! exposures complete, are recorded in the manifest (one `fdatasync` per exposure) and release
//! the cursor strictly in the order they were dispatched.
//!
//! # Exactly once, resumable
//!
//! Keys are deterministic (`raw/{instrument}/{dayobs}/{obsid}/{filename}`) and so are the bytes
//! (the ring's frames plus its metadata records), so a resend after a crash or a cut writes the
//! same bytes to the same key. Before uploading, the drain looks for the object: one already
//! there with the same size and bytes (ETag or read-back CRC32) is counted as confirmed and not
//! sent again. That HEAD is kept for every file: it is what spares the link a second copy after a
//! restart, a cut, or the live lane's upload, and with several files in flight its round trip
//! overlaps other files' transfers. The PUT itself is conditional (`If-None-Match: *`), so an
//! object that appears between the HEAD and the PUT (the live lane racing the backlog lane) is
//! compared too, never overwritten. An object that exists with *different* bytes is never
//! overwritten: the file goes to `{key}.conflict-{crc32}` and the conflict is logged as an error
//! and counted, for an operator to resolve. Only when every file of an exposure is confirmed
//! (and every exposure dispatched before it) does the cursor move, to the first record of the
//! oldest exposure still open or sending: records of exposures not yet confirmed are never
//! released. A failure (link down, store error) is retried with exponential backoff; the cursor
//! never moves on a failure. A drain that is dropped (or killed) with files in flight confirmed
//! nothing for them: a restart finds them at the base or sends them again.
//!
//! # Rate limit, pause, island mode
//!
//! [`DrainControl::rate_limit_bytes_per_second`] (0 = unlimited) is a token bucket (see
//! `rate_limit`) in the drain's [`Clock`], applied before each unit goes out: a part, or a whole
//! file sent in one PUT. Its burst is one part, or one file for files sent in one PUT, so
//! sending `B` bytes takes at least `(B - burst) / limit` of clock time; a change applies to the
//! next unit (within 20 ms, plus the unit on the wire). [`DrainControl::paused`] stops the drain
//! between units: an upload finishes the unit it is sending (which may then be confirmed) and
//! waits; nothing else starts, nothing is lost, and clearing it resumes them. While the link
//! monitor says DOWN the uploads wait likewise (island mode) and the step reports
//! [`StepOutcome::Island`]. A step whose `stop` is set returns once no attempt is under way.
//!
//! # Choices, and what they cost (issue 5's benchmark, `scripts/bench-drain`)
//!
//! - Files up to 128 MiB (every camera file: 75.5 MB at most) go in one PUT: the only kind of
//!   upload `object_store` can make conditional, and one request instead of six; the local S3
//!   server of the benchmark spent 4.9 CPU s/GB on single PUTs against 7.5 on 16 MiB parts.
//! - The HEAD before each PUT stays (see above); it is one round trip per 75 MB file, hidden
//!   behind the other files in flight.
//! - Verification stays as it was: the ETag (MD5, about 0.6 GB/s on one core: the largest CPU
//!   cost of an S3 drain) or, for stores without one (a local directory), a read-back CRC32.
//!   Reading back what `LocalFileSystem` just wrote mostly re-reads the page cache, so it proves
//!   little about the medium; it was kept all the same because it costs little (streamed through
//!   a 1 MiB buffer, about 3% of the local drain's CPU samples) and no guarantee was traded.
//! - Each frame is read from the ring twice: once to index it (both CRCs checked, its
//!   ones'-complement sum taken) and once to assemble its file. Keeping the pixels from the first
//!   read would make memory grow with the detectors and exposures open, so the second read stays;
//!   it is the main difference from `cp` on the local directory (two `O_DIRECT` reads of each
//!   byte instead of one).
//!
//! # Bounded
//!
//! At most `max_open_exposures` exposures are indexed (plus `MAX_HELD_EXPOSURES` held for lack
//! of metadata), at most `files_in_flight` are sending; the pool holds `files_in_flight` file
//! buffers sized at start for the largest file of the focal plane (about 75.5 MB for a science
//! CCD), the upload side one 1 MiB read-back buffer per file buffer; the ring reader's buffers are
//! fixed at open. Nothing per file is allocated in proportion to its size.

mod rate_limit;
mod upload;

#[cfg(test)]
mod tests;

pub use rate_limit::{Admission, TokenBucket};

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use ringbuffer::{Clock, Reader, RecordInfo, RecordKind};

use dma_ingest::completeness::{detector_index_from_wire, segment_index_from_wire};
use dma_ingest::protocol::frame::{FrameHeader, FRAME_HEADER_BLOCK_BYTES};
use dma_ingest::protocol::geometry::{DetectorKind, Focalplane, SEGMENT_ROWS};
use dma_ingest::protocol::metadata::{MetadataEvent, MetadataKind};

use crate::fits::{
    combine, ones_complement_sum, RawFile, SegmentSource, WriteOptions, BLOCK_BYTES, SEGMENT_DATA_UNIT_BYTES,
};
use crate::manifest::{Manifest, ManifestEntry};
use upload::{Confirmation, Crash, UploadConfig, Uploader};

/// Exposures held for lack of metadata before the drain stops reading further.
const MAX_HELD_EXPOSURES: usize = 8;

/// Drained exposures remembered so that their late records are not taken for new exposures.
const RECENTLY_DRAINED: usize = 64;

/// Ring records indexed per look at the ring, so a ready exposure is not delayed.
const INDEX_BATCH_RECORDS: usize = 4096;

/// Longest a step waits for an upload before it looks again at pause, the link and `stop`.
const STEP_WAIT_SLICE: Duration = Duration::from_millis(20);

/// Largest `files_in_flight` and `parts_in_flight` accepted.
const MAX_IN_FLIGHT: usize = 64;

/// How the drain runs.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    /// An exposure with nothing new for this long is drained incomplete.
    pub incomplete_timeout: Duration,
    /// Exposures indexed at once; opening one more drains the oldest (incomplete if it is).
    pub max_open_exposures: usize,
    /// First retry delay after a failed upload; doubles with each failure in a row up to
    /// `retry_max` (the drain's backoff, see the module docs).
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Files uploading at once, each in its own file buffer (the pool's size; 1 to 64). Also the
    /// most exposures in the sending queue.
    pub files_in_flight: usize,
    /// Files larger than this are uploaded in parts (S3 multipart upload); files up to it go in
    /// one conditional PUT.
    pub multipart_threshold_bytes: usize,
    /// Size of each part of a multipart upload (S3 requires at least 5 MiB but the last); also
    /// the rate limit's bucket capacity.
    pub part_bytes: usize,
    /// Parts of one multipart upload sent at once (1 to 64).
    pub parts_in_flight: usize,
    /// The live lane: start at the ring's head and send only complete exposures, newest first,
    /// so live latency holds while the backlog lane (the persisted `drain` cursor, in order)
    /// catches up behind it; the backlog lane then finds those objects already at the base.
    /// Exposures the live lane cannot complete are left to the backlog lane. Read it through an
    /// optional cursor (an overrun is harmless: the backlog lane holds the data).
    pub live: bool,
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            incomplete_timeout: Duration::from_secs(120),
            max_open_exposures: 4,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            files_in_flight: 4,
            multipart_threshold_bytes: 128 << 20,
            part_bytes: 16 << 20,
            parts_in_flight: 4,
            live: false,
        }
    }
}

impl DrainOptions {
    /// Checks the options; the error names the field, its value and the accepted range.
    pub fn validate(&self) -> Result<(), String> {
        let in_range = |name: &str, value: usize, low: usize, high: usize| {
            if (low..=high).contains(&value) {
                Ok(())
            } else {
                Err(format!("DrainOptions::{name} is {value}; it must be {low} to {high}"))
            }
        };
        in_range("files_in_flight", self.files_in_flight, 1, MAX_IN_FLIGHT)?;
        in_range("parts_in_flight", self.parts_in_flight, 1, MAX_IN_FLIGHT)?;
        in_range("max_open_exposures", self.max_open_exposures, 1, 1024)?;
        in_range("part_bytes", self.part_bytes, 1, 5 << 30)?;
        in_range("multipart_threshold_bytes", self.multipart_threshold_bytes, 1, 5 << 30)?;
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return Err(format!(
                "DrainOptions::retry_initial ({:?}) must be above 0 and at most retry_max ({:?})",
                self.retry_initial, self.retry_max
            ));
        }
        Ok(())
    }
}

/// Counters and controls shared with the console.
#[derive(Debug, Default)]
pub struct DrainControl {
    /// Pause uploads between units (parts, or files sent in one PUT): the ring keeps filling,
    /// uploads in flight wait, nothing is lost; clearing it resumes them.
    pub paused: AtomicBool,
    /// Average upload rate limit in bytes per second, 0 = unlimited: a token bucket in the
    /// drain's clock with a burst of one part (or one file sent in one PUT), applied before each
    /// unit; a change applies to the next unit.
    pub rate_limit_bytes_per_second: AtomicU64,
    /// Files confirmed at the base (uploaded and verified, or found there identical).
    pub objects_confirmed_total: AtomicU64,
    /// Of those, files found already at the base (resumed after a crash or cut).
    pub objects_already_present_total: AtomicU64,
    /// Bytes uploaded and verified.
    pub bytes_uploaded_total: AtomicU64,
    /// Upload or verification attempts that failed (each retried).
    pub upload_failures_total: AtomicU64,
    /// Objects found at the base with different bytes (written to a `.conflict-` key instead).
    pub conflicts_total: AtomicU64,
    /// Exposures whose files are all confirmed.
    pub exposures_drained_total: AtomicU64,
    /// Of those, drained incomplete.
    pub exposures_incomplete_total: AtomicU64,
    /// Exposures held in the ring because no header-service metadata arrived for them.
    pub exposures_held_total: AtomicU64,
    /// Ring records that could not be used (undecodable frame or metadata), logged.
    pub records_unusable_total: AtomicU64,
    /// Records that arrived after their exposure was sent (incomplete), logged and not used.
    pub records_late_total: AtomicU64,
}

impl DrainControl {
    fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }
}

/// Why the drain stopped.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The ring failed (read error, cursor persistence).
    #[error("ring: {0}")]
    Ring(#[from] ringbuffer::Error),
    /// The manifest could not be written (the cursor does not move).
    #[error("recording {key} in the manifest: {source}")]
    Manifest {
        /// The object key.
        key: String,
        /// The I/O error.
        source: io::Error,
    },
    /// An upload task panicked (a bug, in the drain or the object store client); nothing was
    /// confirmed for the file, so the cursor is before it.
    #[error("uploading {key}: the upload task panicked: {detail}")]
    Upload {
        /// The object key.
        key: String,
        /// The panic message.
        detail: String,
    },
    /// A file could not be assembled.
    #[error("assembling {key}: {detail}")]
    Assemble {
        /// The object key.
        key: String,
        /// Why.
        detail: String,
    },
}

/// One frame of an open exposure.
#[derive(Debug, Clone, Copy)]
struct FrameRef {
    info: RecordInfo,
    first_row: u16,
    row_count: u16,
    sum: u32,
}

/// What the drain knows of one open exposure.
#[derive(Debug)]
struct OpenExposure {
    exposure_id: u64,
    /// Where its first record starts: the cursor may not pass it until it is drained.
    first_position: ringbuffer::Position,
    /// `frames[detector][segment]`.
    frames: Vec<Vec<Vec<FrameRef>>>,
    start: Option<MetadataEvent>,
    end: Option<MetadataEvent>,
    last_seen_ns: u64,
    /// Ready but without any header-service metadata: no file can be named or headed, so it is
    /// held in the ring (the cursor stays before it) for an operator, and later exposures go on.
    held: bool,
}

impl OpenExposure {
    fn rows(&self, detector: usize, segment: usize) -> u32 {
        self.frames[detector][segment].iter().map(|frame| u32::from(frame.row_count)).sum()
    }

    fn is_complete(&self, focalplane: &Focalplane) -> bool {
        self.end.is_some()
            && focalplane.detectors().iter().enumerate().all(|(detector, geometry)| {
                (0..geometry.segment_count()).all(|segment| self.rows(detector, segment) == SEGMENT_ROWS)
            })
    }
}

/// An exposure whose files are being assembled and uploaded.
#[derive(Debug)]
struct SendingExposure {
    exposure: OpenExposure,
    /// The header-service event its files are headed from (EndReadout, else StartIntegration).
    metadata: MetadataEvent,
    complete: bool,
    /// The next entry of the upload order to assemble.
    next_in_order: usize,
    /// Files handed to the upload thread.
    files_dispatched: usize,
    /// Confirmed files, for the manifest (at most one per detector).
    confirmed: Vec<ManifestEntry>,
}

impl SendingExposure {
    fn all_dispatched(&self, order_length: usize) -> bool {
        self.next_in_order == order_length
    }

    fn all_confirmed(&self, order_length: usize) -> bool {
        self.all_dispatched(order_length) && self.confirmed.len() == self.files_dispatched
    }
}

/// Most keys claimed at once in one [`UploadClaims`]: two lanes of at most [`MAX_IN_FLIGHT`] files.
pub const MAX_UPLOAD_CLAIMS: usize = 2 * MAX_IN_FLIGHT;

/// The keys being uploaded by either lane of a stream (the backlog lane and the live lane). With
/// the link up and no backlog both lanes see the same complete exposure at the same moment, both
/// HEAD its files (absent) and both would send them: a file would cross the link twice (and a
/// conditional PUT only keeps the second copy from overwriting the first, after it was sent).
/// A lane claims a key for the whole upload of its file (retries included); the other lane waits
/// for the claim to go, then finds the object at the base (HEAD, ETag) without sending it.
#[derive(Debug, Default)]
pub struct UploadClaims {
    keys: std::sync::Mutex<Vec<String>>,
}

/// Reads a stream's ring and drains it to the base. Drive it with [`Drainer::step`].
pub struct Drainer {
    reader: Reader,
    focalplane: Focalplane,
    /// [`upload_order`] of the focal plane, computed once.
    order: Vec<usize>,
    clock: Arc<dyn Clock>,
    options: DrainOptions,
    control: Arc<DrainControl>,
    /// Exposures being indexed, in the order their first record was read.
    open: Vec<OpenExposure>,
    /// Exposures dispatched, in dispatch order (at most `files_in_flight`).
    sending: VecDeque<SendingExposure>,
    /// The exposure evicted from a full index: dispatched before any other.
    forced: Option<u64>,
    /// The last [`RECENTLY_DRAINED`] exposures drained, whose late records are ignored.
    recently_drained: VecDeque<u64>,
    /// The error "stopped reading: too many held exposures" was logged.
    stalled_on_held: bool,
    link: Option<Arc<crate::link::LinkMonitorHandle>>,
    /// Where confirmed objects are recorded for `verify-base`.
    manifest: Option<Manifest>,
    uploader: Uploader,
}

/// What one [`Drainer::step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// An exposure's files were confirmed and the cursor moved.
    Drained {
        /// The exposure.
        exposure_id: u64,
        /// Files confirmed.
        files: usize,
        /// Drained with missing segments.
        incomplete: bool,
    },
    /// Nothing to do now (caught up, or waiting for an exposure to complete).
    Idle,
    /// Paused by the operator.
    Paused,
    /// The link to the base is down (island mode): nothing is sent; the backlog waits in the ring.
    Island,
}

/// Bytes of the largest raw file of `focalplane`, with room for a large primary header.
fn largest_file_bytes(focalplane: &Focalplane) -> usize {
    let segments = focalplane.detectors().iter().map(|detector| detector.segment_count()).max().unwrap_or(0);
    // Each extension: its data unit and a header of at most two blocks; the primary header up to
    // 16 blocks (576 cards). A larger file only makes its buffer grow once.
    segments * (SEGMENT_DATA_UNIT_BYTES + 2 * BLOCK_BYTES) + 16 * BLOCK_BYTES
}

impl Drainer {
    /// A drainer reading `reader` (the ring's `drain` cursor) for the detectors of `focalplane`
    /// and uploading to `store`. `verify_by_etag`: the store returns the MD5 of what it received
    /// as the ETag (S3); otherwise uploads are verified by reading them back. Starts the upload
    /// thread and allocates the file buffers (`files_in_flight` of them); invalid options are an
    /// `InvalidInput` error naming the field.
    pub fn new(
        reader: Reader,
        store: Arc<dyn ObjectStore>,
        verify_by_etag: bool,
        focalplane: Focalplane,
        clock: Arc<dyn Clock>,
        options: DrainOptions,
    ) -> io::Result<Drainer> {
        options.validate().map_err(|detail| io::Error::new(io::ErrorKind::InvalidInput, detail))?;
        let control = Arc::new(DrainControl::default());
        let config = UploadConfig {
            verify_by_etag,
            files_in_flight: options.files_in_flight,
            file_buffer_bytes: largest_file_bytes(&focalplane),
            multipart_threshold_bytes: options.multipart_threshold_bytes,
            part_bytes: options.part_bytes,
            parts_in_flight: options.parts_in_flight,
            retry_initial: options.retry_initial,
            retry_max: options.retry_max,
        };
        let uploader = Uploader::start(store, config, Arc::clone(&control), Arc::clone(&clock))?;
        let mut reader = reader;
        if options.live {
            reader.skip_to_head();
        }
        Ok(Drainer {
            reader,
            order: upload_order(&focalplane),
            focalplane,
            clock,
            sending: VecDeque::with_capacity(options.files_in_flight),
            options,
            control,
            open: Vec::new(),
            forced: None,
            recently_drained: VecDeque::with_capacity(RECENTLY_DRAINED),
            stalled_on_held: false,
            link: None,
            manifest: None,
            uploader,
        })
    }

    /// Follows `link`: while it is DOWN the drain sends nothing (island mode) and each step
    /// reports the backlog to it (RECOVERING while a backlog drains after a cut).
    pub fn with_link_monitor(mut self, link: Arc<crate::link::LinkMonitorHandle>) -> Drainer {
        self.uploader.set_link(Arc::clone(&link));
        self.link = Some(link);
        self
    }

    /// Shares `claims` with the other lane of this stream, so that a file crosses the link once
    /// (see [`UploadClaims`]). Give both lanes the same claims.
    pub fn with_upload_claims(self, claims: Arc<UploadClaims>) -> Drainer {
        self.uploader.set_claims(claims);
        self
    }

    /// Records every confirmed object in `manifest` (what `verify-base` checks the base against).
    /// Only the backlog lane should record: it confirms every object, the live lane's included.
    pub fn with_manifest(mut self, manifest: Manifest) -> Drainer {
        self.manifest = Some(manifest);
        self
    }

    /// Bytes of the ring not yet confirmed at the base.
    pub fn backlog_bytes(&self) -> u64 {
        self.reader.backlog_bytes()
    }

    fn link_down(&self) -> bool {
        self.link.as_ref().is_some_and(|link| link.state() == crate::link::LinkState::Down)
    }

    /// Counters and controls (pause, rate limit).
    pub fn control(&self) -> &Arc<DrainControl> {
        &self.control
    }

    /// Exposures indexed or sending, not yet drained.
    pub fn open_exposures(&self) -> Vec<u64> {
        let sending = self.sending.iter().map(|sending| sending.exposure.exposure_id);
        sending.chain(self.open.iter().map(|exposure| exposure.exposure_id)).collect()
    }

    /// Files uploading now.
    pub fn files_in_flight(&self) -> usize {
        self.uploader.jobs_in_flight()
    }

    /// Gives the ring reader back (for a clean shutdown); uploads still in flight are abandoned
    /// (nothing was confirmed for them: the cursor is before them).
    pub fn into_reader(self) -> Reader {
        self.reader
    }

    /// Drains until an exposure is confirmed (`Drained`: its files are at the base, recorded,
    /// and the cursor moved), or there is nothing to do now (`Idle`), or the drain is paused or
    /// the link is down. Meanwhile it indexes what the ring has, assembles files into free
    /// buffers and hands them to the upload thread, and waits for confirmations. Uploads go on
    /// between steps; failed ones are retried with backoff. When `stop` is set the step holds
    /// the uploads before their next attempt, waits for the attempts under way (each ends in
    /// success or failure, a failed multipart upload aborted) and returns `Idle` without moving
    /// the cursor past anything unconfirmed; the next step releases them.
    pub fn step(&mut self, stop: &AtomicBool) -> Result<StepOutcome, DrainError> {
        if let Some(link) = &self.link {
            link.set_backlog(self.reader.backlog_bytes());
        }
        // A step is the caller saying "try now": uploads held by a stopped step go on, and a
        // file retrying after failures goes at once.
        self.uploader.set_hold(false);
        self.uploader.reset_backoff();
        loop {
            self.collect(Duration::ZERO)?;
            if let Some(outcome) = self.finish_oldest()? {
                return Ok(outcome);
            }
            if self.control.paused.load(Ordering::Relaxed) {
                return Ok(StepOutcome::Paused);
            }
            if self.link_down() {
                return Ok(StepOutcome::Island);
            }
            if stop.load(Ordering::Relaxed) {
                return self.stop_between_attempts();
            }
            let dispatched = self.dispatch()?;
            self.uploader.start_ready();
            if dispatched {
                continue;
            }
            if !self.uploader.busy() {
                if self.open.is_empty() && self.sending.is_empty() {
                    // Caught up with nothing open: everything read is drained (or unusable).
                    let position = self.reader.position();
                    self.reader.commit_at(position)?;
                }
                return Ok(StepOutcome::Idle);
            }
            self.collect(STEP_WAIT_SLICE)?;
        }
    }

    /// Records the confirmations that arrive within `wait` (at most one waited for).
    fn collect(&mut self, wait: Duration) -> Result<(), DrainError> {
        if let Some(outcome) = self.uploader.poll(wait) {
            self.confirmed(outcome)?;
        }
        while let Some(outcome) = self.uploader.poll(Duration::ZERO) {
            self.confirmed(outcome)?;
        }
        Ok(())
    }

    /// `stop` is set: holds every upload before its next attempt and returns once no attempt is
    /// under way (so a drain dropped next leaves no request half done, no multipart upload
    /// open); `Drained` if that completed an exposure, else `Idle`. Returns `Paused` or `Island`
    /// at once if that comes first (an attempt under way then waits for it between parts).
    fn stop_between_attempts(&mut self) -> Result<StepOutcome, DrainError> {
        self.uploader.set_hold(true);
        loop {
            self.collect(Duration::ZERO)?;
            if self.control.paused.load(Ordering::Relaxed) {
                return Ok(StepOutcome::Paused);
            }
            if self.link_down() {
                return Ok(StepOutcome::Island);
            }
            if self.uploader.attempts_in_progress() == 0 {
                break;
            }
            self.collect(STEP_WAIT_SLICE)?;
        }
        Ok(self.finish_oldest()?.unwrap_or(StepOutcome::Idle))
    }

    /// Records a confirmed file with its exposure.
    fn confirmed(&mut self, outcome: Result<Confirmation, Crash>) -> Result<(), DrainError> {
        let confirmation =
            outcome.map_err(|crash| DrainError::Upload { key: crash.key, detail: crash.detail })?;
        let Some(sending) =
            self.sending.iter_mut().find(|sending| sending.exposure.exposure_id == confirmation.exposure_id)
        else {
            unreachable!("confirmation of {} for an exposure not sending", confirmation.key);
        };
        sending.confirmed.push(ManifestEntry {
            key: confirmation.key,
            size: confirmation.size_bytes,
            crc32: confirmation.crc32,
            exposure_id: confirmation.exposure_id,
            incomplete: !sending.complete,
            confirmed_ns: confirmation.confirmed_ns,
        });
        assert!(sending.confirmed.len() <= sending.files_dispatched, "more files confirmed than sent");
        Ok(())
    }

    /// Does one piece of work if there is one: assembles and submits the next file of an
    /// exposure being sent, or indexes the ring and moves the next ready exposure to sending.
    /// `false` when nothing can be done until an upload finishes or the ring grows.
    fn dispatch(&mut self) -> Result<bool, DrainError> {
        let order_length = self.order.len();
        if let Some(index) = self.sending.iter().position(|sending| !sending.all_dispatched(order_length)) {
            let Some(buffer) = self.uploader.take_buffer() else { return Ok(false) };
            self.assemble_and_submit(index, buffer)?;
            return Ok(true);
        }
        if self.sending.len() >= self.options.files_in_flight {
            return Ok(false);
        }
        let indexed = self.index_records()?;
        let Some(index) = self.next_ready() else { return Ok(indexed) };
        self.start_sending(index);
        Ok(true)
    }

    /// Indexes at most [`INDEX_BATCH_RECORDS`] durable records; whether any was read.
    fn index_records(&mut self) -> Result<bool, DrainError> {
        let mut read_any = false;
        for _ in 0..INDEX_BATCH_RECORDS {
            // An exposure evicted from the full index goes first; read no further until it went.
            if self.forced.is_some() {
                break;
            }
            // Held exposures stay indexed; past this many the drain reads no further (bounded).
            if self.open.iter().filter(|exposure| exposure.held).count() >= MAX_HELD_EXPOSURES {
                if !self.stalled_on_held {
                    self.stalled_on_held = true;
                    tracing::error!(
                        held = MAX_HELD_EXPOSURES,
                        "drain: stopped reading the ring: {MAX_HELD_EXPOSURES} exposures are held for \
                         lack of header-service metadata; nothing more drains and the ring fills: an \
                         operator must intervene (metadata arriving now lies beyond what is read)"
                    );
                }
                break;
            }
            let Some(record) = self.reader.next_record()? else { break };
            read_any = true;
            let info = record.info;
            match info.kind {
                RecordKind::Frame => match index_frame(&self.focalplane, info, record.payload) {
                    Some((exposure_id, ..)) if self.is_late(exposure_id) => {
                        self.late_record(&info, exposure_id, "frame");
                    }
                    Some((exposure_id, detector, segment, frame)) => {
                        let now_ns = self.clock.now_ns();
                        let at = self.exposure_slot(exposure_id, info.position);
                        let exposure = &mut self.open[at];
                        exposure.frames[detector][segment].push(frame);
                        exposure.last_seen_ns = now_ns;
                    }
                    None => self.unusable(&info, "frame that does not decode for this focal plane"),
                },
                RecordKind::Metadata => match dma_ingest::metadata_channel::decode_record(record.payload) {
                    Ok((event, _)) if self.is_late(event.exposure_id) => {
                        self.late_record(&info, event.exposure_id, "header-service record");
                    }
                    Ok((event, _received_ns)) => {
                        let now_ns = self.clock.now_ns();
                        let at = self.exposure_slot(event.exposure_id, info.position);
                        let exposure = &mut self.open[at];
                        exposure.last_seen_ns = now_ns;
                        // Metadata that arrives late releases an exposure held for lack of it.
                        exposure.held = false;
                        match event.kind {
                            MetadataKind::StartIntegration => exposure.start = Some(event),
                            MetadataKind::EndReadout => exposure.end = Some(event),
                        }
                    }
                    Err(error) => self.unusable(&info, &format!("metadata record: {error}")),
                },
                _ => {}
            }
        }
        Ok(read_any)
    }

    /// The open exposure to send next, if one is ready (see the module docs).
    fn next_ready(&mut self) -> Option<usize> {
        let forced =
            self.forced.and_then(|id| self.open.iter().position(|exposure| exposure.exposure_id == id));
        let now_ns = self.clock.now_ns();
        let timeout_ns = self.options.incomplete_timeout.as_nanos() as u64;
        if self.options.live {
            // Live lane: exposures it cannot complete (it started mid-exposure, or frames are
            // missing) are the backlog lane's; the newest complete one goes first.
            if let Some(index) = forced {
                self.open.remove(index);
            }
            self.forced = None;
            let focalplane = &self.focalplane;
            self.open.retain(|exposure| {
                exposure.is_complete(focalplane) || now_ns.saturating_sub(exposure.last_seen_ns) < timeout_ns
            });
            return (0..self.open.len())
                .filter(|&index| self.open[index].is_complete(&self.focalplane))
                .max_by_key(|&index| self.open[index].exposure_id);
        }
        self.forced = None;
        forced.or_else(|| {
            self.open.iter().position(|exposure| {
                !exposure.held
                    && (exposure.is_complete(&self.focalplane)
                        || now_ns.saturating_sub(exposure.last_seen_ns) >= timeout_ns)
            })
        })
    }

    /// Moves open exposure `index` to the sending queue, or holds it if it has no metadata.
    fn start_sending(&mut self, index: usize) {
        let exposure_id = self.open[index].exposure_id;
        let Some(metadata) = self.open[index].end.clone().or_else(|| self.open[index].start.clone()) else {
            // Without header-service metadata there is no OBSID, DAYOBS or DATE-BEG to write:
            // the frames stay in the ring (the cursor does not pass them) and an operator is told,
            // once; later exposures are drained meanwhile.
            self.open[index].held = true;
            DrainControl::add(&self.control.exposures_held_total, 1);
            tracing::error!(
                exposure_id,
                "drain: exposure has frames but no header-service metadata; holding it in the ring \
                 (the drain cursor stays before it) for an operator"
            );
            return;
        };
        let exposure = self.open.remove(index);
        let complete = exposure.is_complete(&self.focalplane);
        assert!(self.sending.len() < self.options.files_in_flight, "the sending queue is bounded");
        self.sending.push_back(SendingExposure {
            exposure,
            metadata,
            complete,
            next_in_order: 0,
            files_dispatched: 0,
            confirmed: Vec::with_capacity(self.order.len()),
        });
    }

    /// Assembles the next file of sending exposure `index` into `buffer` and submits it; a
    /// detector with nothing at all (of an incomplete exposure) has no file and is skipped.
    fn assemble_and_submit(&mut self, index: usize, mut buffer: Vec<u8>) -> Result<(), DrainError> {
        let order_length = self.order.len();
        let sending = &mut self.sending[index];
        while sending.next_in_order < order_length {
            let detector = self.order[sending.next_in_order];
            sending.next_in_order += 1;
            let geometry = self.focalplane.detectors()[detector];
            let exposure = &sending.exposure;
            let exposure_id = exposure.exposure_id;
            let missing = (0..geometry.segment_count())
                .filter(|&segment| exposure.rows(detector, segment) != SEGMENT_ROWS)
                .count();
            if missing == geometry.segment_count() && !sending.complete {
                // Nothing of this detector arrived: no file (the exposure is marked incomplete).
                continue;
            }
            let raw = match RawFile::new(geometry, &sending.metadata) {
                Ok(raw) => raw,
                Err(error) => {
                    self.uploader.return_buffer(buffer);
                    let key = format!("exposure {exposure_id}");
                    return Err(DrainError::Assemble { key, detail: error.to_string() });
                }
            };
            let mut source = RingSegments { reader: &mut self.reader, frames: &exposure.frames[detector] };
            let options = WriteOptions { allow_incomplete: true, verify_datasums: true };
            if let Err(error) = raw.write(&mut buffer, &mut source, &options) {
                self.uploader.return_buffer(buffer);
                let key = raw.object_key().to_owned();
                return Err(DrainError::Assemble { key, detail: error.to_string() });
            }
            let crc32 = crc32fast::hash(&buffer);
            sending.files_dispatched += 1;
            self.uploader.submit(exposure_id, raw.object_key().to_owned(), buffer, crc32);
            return Ok(());
        }
        self.uploader.return_buffer(buffer);
        Ok(())
    }

    /// Completes the oldest sending exposure if all its files are confirmed: records them in
    /// the manifest, then moves the cursor past everything before the oldest exposure still
    /// open or sending.
    fn finish_oldest(&mut self) -> Result<Option<StepOutcome>, DrainError> {
        let order_length = self.order.len();
        let Some(oldest) = self.sending.front() else { return Ok(None) };
        if !oldest.all_confirmed(order_length) {
            return Ok(None);
        }
        if let Some(manifest) = &mut self.manifest {
            // Recorded (durably, one fdatasync) before the cursor can move past the exposure:
            // every object behind the cursor is in the manifest (after a crash here, the objects
            // are found at the base and recorded again).
            manifest.record_batch(&oldest.confirmed).map_err(|error| DrainError::Manifest {
                key: oldest.confirmed.first().map_or_else(String::new, |entry| entry.key.clone()),
                source: error,
            })?;
        }
        let drained = self.sending.pop_front().expect("the oldest sending exposure");
        let exposure_id = drained.exposure.exposure_id;
        if self.recently_drained.len() == RECENTLY_DRAINED {
            self.recently_drained.pop_front();
        }
        self.recently_drained.push_back(exposure_id);
        let files = drained.confirmed.len();
        let incomplete = !drained.complete;
        DrainControl::add(&self.control.exposures_drained_total, 1);
        if incomplete {
            DrainControl::add(&self.control.exposures_incomplete_total, 1);
            tracing::warn!(exposure_id, files, "drain: exposure drained incomplete");
        } else {
            tracing::info!(exposure_id, files, "drain: exposure confirmed at the base");
        }
        // Release everything before the oldest exposure still open or sending (or everything
        // read).
        let release = self
            .open
            .iter()
            .chain(self.sending.iter().map(|sending| &sending.exposure))
            .map(|exposure| exposure.first_position)
            .min_by_key(|position| position.offset)
            .unwrap_or(self.reader.position());
        let nothing_left = self.open.is_empty() && self.sending.is_empty();
        if release.offset > drained.exposure.first_position.offset || nothing_left {
            self.reader.commit_at(release)?;
        }
        Ok(Some(StepOutcome::Drained { exposure_id, files, incomplete }))
    }

    /// The index slot of `exposure_id`, opening it if new; when that exceeds the maximum, the
    /// oldest unheld open exposure is marked to be drained next.
    fn exposure_slot(&mut self, exposure_id: u64, position: ringbuffer::Position) -> usize {
        if let Some(at) = self.open.iter().position(|exposure| exposure.exposure_id == exposure_id) {
            return at;
        }
        let frames = self
            .focalplane
            .detectors()
            .iter()
            .map(|detector| vec![Vec::new(); detector.segment_count()])
            .collect();
        self.open.push(OpenExposure {
            exposure_id,
            first_position: position,
            frames,
            start: None,
            end: None,
            last_seen_ns: self.clock.now_ns(),
            held: false,
        });
        let unheld = self.open.iter().filter(|exposure| !exposure.held).count();
        if unheld > self.options.max_open_exposures && self.forced.is_none() {
            self.forced =
                self.open.iter().find(|exposure| !exposure.held).map(|exposure| exposure.exposure_id);
        }
        self.open.len() - 1
    }

    /// A record of an exposure already sending or drained by this drain: its files are (being)
    /// made without it, and opening the exposure again would send it twice under one id.
    fn is_late(&self, exposure_id: u64) -> bool {
        self.sending.iter().any(|sending| sending.exposure.exposure_id == exposure_id)
            || self.recently_drained.contains(&exposure_id)
    }

    fn late_record(&self, info: &RecordInfo, exposure_id: u64, what: &str) {
        DrainControl::add(&self.control.records_late_total, 1);
        tracing::warn!(
            sequence = info.sequence,
            exposure_id,
            "drain: a {what} arrived after its exposure was sent (incomplete); not in its files"
        );
    }

    fn unusable(&self, info: &RecordInfo, what: &str) {
        DrainControl::add(&self.control.records_unusable_total, 1);
        tracing::error!(sequence = info.sequence, "drain: skipping an unusable ring record: {what}");
    }
}

/// Detector indexes in the order an exposure's files are sent: wavefront sensors, then science
/// CCDs, then guiders (the observatory's ingest priority), focal-plane order within each kind.
pub fn upload_order(focalplane: &Focalplane) -> Vec<usize> {
    let mut order: Vec<usize> = (0..focalplane.detectors().len()).collect();
    order.sort_by_key(|&detector| match focalplane.detectors()[detector].kind() {
        DetectorKind::WavefrontHalf => 0,
        DetectorKind::Science => 1,
        DetectorKind::Guider => 2,
    });
    order
}

/// Decodes a frame record: `(exposure, detector index, segment index, frame)` for this focal
/// plane, with the pixels' ones'-complement sum.
fn index_frame(
    focalplane: &Focalplane,
    info: RecordInfo,
    payload: &[u8],
) -> Option<(u64, usize, usize, FrameRef)> {
    let header = FrameHeader::parse(payload).ok()?;
    let detector = detector_index_from_wire(focalplane, header.raft, header.sensor)?;
    let kind = focalplane.detectors()[detector].kind();
    let segment = segment_index_from_wire(header.segment, kind)?;
    let pixels = payload
        .get(FRAME_HEADER_BLOCK_BYTES..FRAME_HEADER_BLOCK_BYTES + header.payload_length.get() as usize)?;
    let frame = FrameRef {
        info,
        first_row: header.first_row.get(),
        row_count: header.row_count.get(),
        sum: ones_complement_sum(pixels),
    };
    Some((header.exposure_id.get(), detector, segment, frame))
}

/// A detector's segments, read back from the ring frame by frame.
struct RingSegments<'a> {
    reader: &'a mut Reader,
    frames: &'a [Vec<FrameRef>],
}

impl RingSegments<'_> {
    fn ordered(&self, index: usize) -> Option<Vec<FrameRef>> {
        let mut frames = self.frames[index].clone();
        frames.sort_by_key(|frame| frame.first_row);
        let mut next_row = 0u32;
        for frame in &frames {
            if u32::from(frame.first_row) != next_row {
                return None;
            }
            next_row += u32::from(frame.row_count);
        }
        (next_row == SEGMENT_ROWS).then_some(frames)
    }
}

impl SegmentSource for RingSegments<'_> {
    fn segment_sum(&mut self, index: usize) -> io::Result<Option<u32>> {
        Ok(self.ordered(index).map(|frames| frames.iter().fold(0, |sum, frame| combine(sum, frame.sum))))
    }

    fn read_segment(
        &mut self,
        index: usize,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let frames = self
            .ordered(index)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "segment is not complete"))?;
        for frame in frames {
            let record = self.reader.fetch(&frame.info).map_err(io::Error::other)?;
            let pixels =
                usize::from(frame.row_count) * dma_ingest::protocol::geometry::SEGMENT_COLUMNS as usize * 4;
            sink(&record.payload[FRAME_HEADER_BLOCK_BYTES..FRAME_HEADER_BLOCK_BYTES + pixels])?;
        }
        Ok(())
    }
}
