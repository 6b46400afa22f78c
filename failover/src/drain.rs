//! The drain: reads a stream's ring from its persisted `drain` cursor, assembles one raw FITS
//! file per detector per exposure, uploads each to the base object store, and advances the
//! cursor, durably, only after the base confirmed every file of the exposures behind it.
//!
//! # How
//!
//! The ring holds an exposure's frames interleaved (all segments are read out in parallel) with
//! its two header-service records. The drain reads records in order and keeps a small index per
//! open exposure: for every detector and segment, the frames (their [`RecordInfo`], rows and the
//! FITS ones'-complement sum of their pixels, computed once as they pass). An exposure is ready
//! when every segment of every detector has all its rows and its `EndReadout` metadata arrived;
//! it is drained *incomplete* (`INCOMPL = T`, missing segments zero-filled, see
//! [`crate::fits`]) when nothing arrived for it for `incomplete_timeout`, or when more exposures
//! are open than the index holds. Files are written detector by detector (wavefront sensors, then
//! science CCDs, then guiders, the observatory's ingest priority) by fetching the frames again
//! from the ring ([`Reader::fetch`]) into one reused file buffer.
//!
//! # Exactly once, resumable
//!
//! Keys are deterministic (`raw/{instrument}/{dayobs}/{obsid}/{filename}`) and so are the bytes
//! (the ring's frames plus its metadata records), so a resend after a crash or a cut writes the
//! same bytes to the same key. Before uploading, the drain looks for the object: one already
//! there with the same size and CRC32 is counted as confirmed and not sent again. An object that
//! exists with *different* bytes is never overwritten: the file goes to `{key}.conflict-{crc32}`
//! and the conflict is logged as an error and counted, for an operator to resolve. After an
//! upload the object is verified: by its ETag where the store computes an MD5 of what it received
//! (S3 single-part), otherwise by reading it back and comparing CRC32s. Only when every file of
//! an exposure is confirmed does the cursor move, to the first record of the oldest exposure
//! still open: records of exposures not yet confirmed are never released. A failure (link down,
//! store error) is retried with exponential backoff; the cursor never moves on a failure.
//!
//! # Bounded
//!
//! At most `max_open_exposures` exposures are indexed; one file buffer (the largest detector
//! file, about 75.5 MB) is reused; the ring reader's buffers are fixed at open.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use ringbuffer::{Clock, Reader, RecordInfo, RecordKind};

use dma_ingest::completeness::{detector_index_from_wire, segment_index_from_wire};
use dma_ingest::protocol::frame::{FrameHeader, FRAME_HEADER_BLOCK_BYTES};
use dma_ingest::protocol::geometry::{DetectorKind, Focalplane, SEGMENT_ROWS};
use dma_ingest::protocol::metadata::{MetadataEvent, MetadataKind};

use crate::fits::{combine, ones_complement_sum, RawFile, SegmentSource, WriteOptions};
use crate::manifest::{Manifest, ManifestEntry};

/// Exposures held for lack of metadata before the drain stops reading further.
const MAX_HELD_EXPOSURES: usize = 8;

/// Multipart uploads remembered for a later abort (each holds only an upload id).
const MAX_STALE_UPLOADS: usize = 64;

/// How the drain runs.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    /// An exposure with nothing new for this long is drained incomplete.
    pub incomplete_timeout: Duration,
    /// Exposures indexed at once; opening one more drains the oldest (incomplete if it is).
    pub max_open_exposures: usize,
    /// First retry delay after a failed upload; doubles up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Files larger than this are uploaded in parts (S3 multipart upload).
    pub multipart_threshold_bytes: usize,
    /// Size of each part of a multipart upload (S3 requires at least 5 MiB but the last).
    pub part_bytes: usize,
    /// Parts of one multipart upload sent at once.
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
            multipart_threshold_bytes: 32 << 20,
            part_bytes: 16 << 20,
            parts_in_flight: 4,
            live: false,
        }
    }
}

/// Counters and controls shared with the console.
#[derive(Debug, Default)]
pub struct DrainControl {
    /// Pause uploads (the ring keeps filling; nothing is lost).
    pub paused: AtomicBool,
    /// Largest upload rate in bytes per second; 0 = unlimited.
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

/// Reads a stream's ring and drains it to the base. Drive it with [`Drainer::step`].
pub struct Drainer {
    reader: Reader,
    store: Arc<dyn ObjectStore>,
    verify_by_etag: bool,
    runtime: tokio::runtime::Runtime,
    focalplane: Focalplane,
    clock: Arc<dyn Clock>,
    options: DrainOptions,
    control: Arc<DrainControl>,
    open: Vec<OpenExposure>,
    file: Vec<u8>,
    link: Option<Arc<crate::link::LinkMonitorHandle>>,
    /// Multipart uploads whose abort failed; aborted before the next upload.
    stale_uploads: Vec<Box<dyn object_store::MultipartUpload>>,
    /// Where confirmed objects are recorded for `verify-base`.
    manifest: Option<Manifest>,
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

impl Drainer {
    /// A drainer reading `reader` (the ring's `drain` cursor) for the detectors of `focalplane`
    /// and uploading to `store`. `verify_by_etag`: the store returns the MD5 of a single-part
    /// upload as its ETag (S3); otherwise uploads are verified by reading them back.
    pub fn new(
        reader: Reader,
        store: Arc<dyn ObjectStore>,
        verify_by_etag: bool,
        focalplane: Focalplane,
        clock: Arc<dyn Clock>,
        options: DrainOptions,
    ) -> io::Result<Drainer> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut reader = reader;
        if options.live {
            reader.skip_to_head();
        }
        Ok(Drainer {
            reader,
            store,
            verify_by_etag,
            runtime,
            focalplane,
            clock,
            options,
            control: Arc::new(DrainControl::default()),
            open: Vec::new(),
            file: Vec::new(),
            link: None,
            stale_uploads: Vec::new(),
            manifest: None,
        })
    }

    /// Follows `link`: while it is DOWN the drain sends nothing (island mode) and each step
    /// reports the backlog to it (RECOVERING while a backlog drains after a cut).
    pub fn with_link_monitor(mut self, link: Arc<crate::link::LinkMonitorHandle>) -> Drainer {
        self.link = Some(link);
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

    /// Exposures indexed and not yet drained.
    pub fn open_exposures(&self) -> Vec<u64> {
        self.open.iter().map(|exposure| exposure.exposure_id).collect()
    }

    /// Gives the ring reader back (for a clean shutdown).
    pub fn into_reader(self) -> Reader {
        self.reader
    }

    /// Reads what the ring has, and drains at most one ready exposure. Retries failed uploads
    /// (with backoff) until they succeed or `stop` is set; returns `Idle` without moving the
    /// cursor when stopped mid-exposure.
    pub fn step(&mut self, stop: &AtomicBool) -> Result<StepOutcome, DrainError> {
        if let Some(link) = &self.link {
            link.set_backlog(self.reader.backlog_bytes());
        }
        if self.control.paused.load(Ordering::Relaxed) {
            return Ok(StepOutcome::Paused);
        }
        if self.link_down() {
            return Ok(StepOutcome::Island);
        }
        let mut forced = None;
        // Index what is durable, a bounded batch at a time so a ready exposure is not delayed.
        for _ in 0..4096 {
            // Held exposures stay indexed; past this many the drain reads no further (bounded).
            if self.open.iter().filter(|exposure| exposure.held).count() >= MAX_HELD_EXPOSURES {
                break;
            }
            let Some(record) = self.reader.next_record()? else { break };
            let info = record.info;
            match info.kind {
                RecordKind::Frame => match index_frame(&self.focalplane, info, record.payload) {
                    Some((exposure_id, detector, segment, frame)) => {
                        let at = self.exposure_slot(exposure_id, info.position, &mut forced);
                        let exposure = &mut self.open[at];
                        exposure.frames[detector][segment].push(frame);
                        exposure.last_seen_ns = self.clock.now_ns();
                    }
                    None => self.unusable(&info, "frame that does not decode for this focal plane"),
                },
                RecordKind::Metadata => match dma_ingest::metadata_channel::decode_record(record.payload) {
                    Ok((event, _received_ns)) => {
                        let at = self.exposure_slot(event.exposure_id, info.position, &mut forced);
                        let exposure = &mut self.open[at];
                        exposure.last_seen_ns = self.clock.now_ns();
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
            if forced.is_some() {
                break;
            }
        }
        let now_ns = self.clock.now_ns();
        let timeout_ns = self.options.incomplete_timeout.as_nanos() as u64;
        let ready = if self.options.live {
            // Live lane: exposures it cannot complete (it started mid-exposure, or frames are
            // missing) are the backlog lane's; the newest complete one goes first.
            if forced.is_some() {
                self.open.remove(0);
            }
            let focalplane = &self.focalplane;
            self.open.retain(|exposure| {
                exposure.is_complete(focalplane) || now_ns.saturating_sub(exposure.last_seen_ns) < timeout_ns
            });
            (0..self.open.len())
                .filter(|&index| self.open[index].is_complete(&self.focalplane))
                .max_by_key(|&index| self.open[index].exposure_id)
        } else {
            forced.or_else(|| {
                self.open.iter().position(|exposure| {
                    !exposure.held
                        && (exposure.is_complete(&self.focalplane)
                            || now_ns.saturating_sub(exposure.last_seen_ns) >= timeout_ns)
                })
            })
        };
        let Some(index) = ready else {
            if self.open.is_empty() {
                // Caught up with nothing open: everything read is drained (or unusable).
                let position = self.reader.position();
                self.reader.commit_at(position)?;
            }
            return Ok(StepOutcome::Idle);
        };
        self.drain_exposure(index, stop)
    }

    /// The index slot of `exposure_id`, opening it if new; when that exceeds the maximum, the
    /// oldest open exposure is marked to be drained now.
    fn exposure_slot(
        &mut self,
        exposure_id: u64,
        position: ringbuffer::Position,
        forced: &mut Option<usize>,
    ) -> usize {
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
        if unheld > self.options.max_open_exposures && forced.is_none() {
            *forced = self.open.iter().position(|exposure| !exposure.held);
        }
        self.open.len() - 1
    }

    fn unusable(&self, info: &RecordInfo, what: &str) {
        DrainControl::add(&self.control.records_unusable_total, 1);
        tracing::error!(sequence = info.sequence, "drain: skipping an unusable ring record: {what}");
    }

    fn drain_exposure(&mut self, index: usize, stop: &AtomicBool) -> Result<StepOutcome, DrainError> {
        let complete = self.open[index].is_complete(&self.focalplane);
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
            return Ok(StepOutcome::Idle);
        };
        let mut files = 0;
        for detector in upload_order(&self.focalplane) {
            let geometry = self.focalplane.detectors()[detector];
            let raw = RawFile::new(geometry, &metadata).map_err(|error| DrainError::Assemble {
                key: format!("exposure {exposure_id}"),
                detail: error.to_string(),
            })?;
            let key = raw.object_key().to_owned();
            let exposure = &self.open[index];
            let missing: Vec<usize> = (0..geometry.segment_count())
                .filter(|&segment| exposure.rows(detector, segment) != SEGMENT_ROWS)
                .collect();
            if missing.len() == geometry.segment_count() && !complete {
                // Nothing of this detector arrived: no file (the exposure is marked incomplete).
                continue;
            }
            self.file.clear();
            let mut source = RingSegments { reader: &mut self.reader, frames: &exposure.frames[detector] };
            let options = WriteOptions { allow_incomplete: true, verify_datasums: true };
            raw.write(&mut self.file, &mut source, &options)
                .map_err(|error| DrainError::Assemble { key: key.clone(), detail: error.to_string() })?;
            if !self.upload_until_confirmed(&key, stop) {
                return Ok(StepOutcome::Idle);
            }
            if let Some(manifest) = &mut self.manifest {
                // Recorded before the cursor can move past the exposure: every object behind the
                // cursor is in the manifest (after a crash here, it is confirmed and recorded again).
                let entry =
                    ManifestEntry::for_bytes(&key, &self.file, exposure_id, !complete, self.clock.now_ns());
                manifest
                    .record(&entry)
                    .map_err(|error| DrainError::Manifest { key: key.clone(), source: error })?;
            }
            files += 1;
        }
        let drained = self.open.remove(index);
        let incomplete = !complete;
        DrainControl::add(&self.control.exposures_drained_total, 1);
        if incomplete {
            DrainControl::add(&self.control.exposures_incomplete_total, 1);
            tracing::warn!(exposure_id, files, "drain: exposure drained incomplete");
        } else {
            tracing::info!(exposure_id, files, "drain: exposure confirmed at the base");
        }
        // Release everything before the oldest exposure still open (or everything read).
        let release = self
            .open
            .iter()
            .map(|exposure| exposure.first_position)
            .min_by_key(|position| position.offset)
            .unwrap_or(self.reader.position());
        if release.offset > drained.first_position.offset || self.open.is_empty() {
            self.reader.commit_at(release)?;
        }
        Ok(StepOutcome::Drained { exposure_id, files, incomplete })
    }

    /// Uploads `self.file` to `key` and verifies it, retrying with backoff until confirmed;
    /// `false` if `stop` was set first.
    fn upload_until_confirmed(&mut self, key: &str, stop: &AtomicBool) -> bool {
        let mut delay = self.options.retry_initial;
        loop {
            match self.upload_once(key) {
                Ok(()) => return true,
                Err(error) => {
                    DrainControl::add(&self.control.upload_failures_total, 1);
                    tracing::warn!(key, %error, retry_in = ?delay, "drain: upload failed; retrying");
                }
            }
            let deadline = std::time::Instant::now() + delay;
            while std::time::Instant::now() < deadline {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20).min(delay));
            }
            delay = (delay * 2).min(self.options.retry_max);
        }
    }

    /// Aborts multipart uploads an earlier attempt could not abort (the link was down), so no
    /// orphaned parts stay at the base. An upload the store no longer knows is simply dropped.
    fn abort_stale_uploads(&mut self) {
        let mut still_stale = Vec::new();
        for mut upload in std::mem::take(&mut self.stale_uploads) {
            match self.runtime.block_on(upload.abort()) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(_) => still_stale.push(upload),
            }
        }
        if still_stale.len() > MAX_STALE_UPLOADS {
            let dropped = still_stale.len() - MAX_STALE_UPLOADS;
            still_stale.drain(..dropped);
            tracing::error!(
                dropped,
                "drain: giving up aborting old multipart uploads; their parts stay at the base until a \
                 bucket lifecycle rule (AbortIncompleteMultipartUpload) removes them"
            );
        }
        self.stale_uploads = still_stale;
    }

    fn upload_once(&mut self, key: &str) -> Result<(), String> {
        self.abort_stale_uploads();
        let crc = crc32fast::hash(&self.file);
        let length = self.file.len() as u64;
        let path = ObjectPath::from(key);
        let store = Arc::clone(&self.store);
        // Already there? (A resend after a crash or a cut.)
        match self.runtime.block_on(store.head(&path)) {
            Ok(meta) => {
                // S3 computed the ETag from the bytes it holds: a match needs no read-back.
                let same_etag = self.verify_by_etag
                    && meta.size == length
                    && meta
                        .e_tag
                        .as_deref()
                        .is_some_and(|etag| etag.trim_matches('"') == self.expected_etag());
                let existing = if same_etag { crc } else { self.read_back_crc(&path)? };
                if meta.size == length && existing == crc {
                    DrainControl::add(&self.control.objects_confirmed_total, 1);
                    DrainControl::add(&self.control.objects_already_present_total, 1);
                    tracing::info!(key, "drain: object already at the base with the same bytes");
                    return Ok(());
                }
                DrainControl::add(&self.control.conflicts_total, 1);
                tracing::error!(
                    key,
                    existing_size = meta.size,
                    existing_crc32 = format!("{existing:08x}"),
                    crc32 = format!("{crc:08x}"),
                    "drain: the base holds different bytes under this key; not overwriting it"
                );
                let conflict = ObjectPath::from(format!("{key}.conflict-{crc:08x}"));
                return self.put_and_verify(&conflict, crc);
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(format!("head {key}: {error}")),
        }
        self.put_and_verify(&path, crc)
    }

    /// The ETag an S3 store gives `self.file` as this drain uploads it (single part or multipart).
    fn expected_etag(&self) -> String {
        if self.file.len() > self.options.multipart_threshold_bytes {
            multipart_etag(self.file.chunks(self.options.part_bytes))
        } else {
            md5_hex(&self.file)
        }
    }

    fn put_and_verify(&mut self, path: &ObjectPath, crc: u32) -> Result<(), String> {
        self.throttle();
        let store = Arc::clone(&self.store);
        // One copy of the file into shared memory; the parts are slices of it.
        let file = bytes::Bytes::copy_from_slice(&self.file);
        let verify_by_etag = self.verify_by_etag;
        let expected_etag = if verify_by_etag { self.expected_etag() } else { String::new() };
        // The file's CRC32 travels with the object as user metadata (`x-amz-meta-crc32`) so any
        // client can check it; only S3-like stores (the ETag mode) keep user metadata.
        let mut attributes = object_store::Attributes::new();
        if verify_by_etag {
            attributes.insert(object_store::Attribute::Metadata("crc32".into()), format!("{crc:08x}").into());
        }
        let result = if file.len() > self.options.multipart_threshold_bytes {
            let parts: Vec<bytes::Bytes> = (0..file.len())
                .step_by(self.options.part_bytes)
                .map(|start| file.slice(start..(start + self.options.part_bytes).min(file.len())))
                .collect();
            let in_flight = self.options.parts_in_flight.max(1);
            let stale = &mut self.stale_uploads;
            let result = self.runtime.block_on(async {
                use futures::{StreamExt, TryStreamExt};
                let mut upload = store.put_multipart_opts(path, attributes.clone().into()).await?;
                // put_part numbers the parts in call order; the uploads themselves run
                // `parts_in_flight` at a time.
                let uploads: Vec<_> =
                    parts.into_iter().map(|part| upload.put_part(PutPayload::from(part))).collect();
                let sent: Result<Vec<()>, object_store::Error> =
                    futures::stream::iter(uploads).buffer_unordered(in_flight).try_collect().await;
                let outcome = match sent {
                    Ok(_) => upload.complete().await,
                    Err(error) => Err(error),
                };
                if outcome.is_err() && upload.abort().await.is_err() {
                    // Leave no parts behind: if the abort fails too (the link is down), it is
                    // retried before the next upload.
                    stale.push(upload);
                }
                outcome
            });
            result
        } else {
            self.runtime.block_on(store.put_opts(path, PutPayload::from(file), attributes.into()))
        };
        let result = result.map_err(|error| format!("put {path}: {error}"))?;
        let verified_by_etag = self.verify_by_etag
            && result.e_tag.as_deref().is_some_and(|etag| etag.trim_matches('"') == expected_etag);
        if !verified_by_etag {
            let stored = self.read_back_crc(path)?;
            if stored != crc {
                return Err(format!("{path}: read back CRC32 {stored:08x}, sent {crc:08x}"));
            }
        }
        DrainControl::add(&self.control.objects_confirmed_total, 1);
        DrainControl::add(&self.control.bytes_uploaded_total, self.file.len() as u64);
        Ok(())
    }

    fn read_back_crc(&self, path: &ObjectPath) -> Result<u32, String> {
        let store = Arc::clone(&self.store);
        let bytes = self
            .runtime
            .block_on(async { store.get(path).await?.bytes().await })
            .map_err(|error| format!("read back {path}: {error}"))?;
        Ok(crc32fast::hash(&bytes))
    }

    fn throttle(&self) {
        let rate = self.control.rate_limit_bytes_per_second.load(Ordering::Relaxed);
        if rate > 0 {
            std::thread::sleep(Duration::from_secs_f64(self.file.len() as f64 / rate as f64));
        }
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

/// Lower-case hex MD5 of `bytes`: the ETag S3 gives a single-part upload.
fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The ETag S3 gives a multipart upload: the MD5 of the parts' binary MD5s, then `-{parts}`.
fn multipart_etag<'a>(parts: impl Iterator<Item = &'a [u8]>) -> String {
    use md5::Digest;
    let mut digests = Vec::new();
    let mut count = 0;
    for part in parts {
        digests.extend_from_slice(&md5::Md5::digest(part));
        count += 1;
    }
    format!("{}-{count}", md5_hex(&digests))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_go_out_wavefront_first_then_science_then_guiders() {
        let focalplane = Focalplane::lsstcam_subset(&["R00", "R22", "R44"]).expect("rafts");
        let kinds: Vec<DetectorKind> =
            upload_order(&focalplane).iter().map(|&index| focalplane.detectors()[index].kind()).collect();
        assert_eq!(kinds.len(), focalplane.detectors().len());
        let first_science = kinds.iter().position(|kind| *kind == DetectorKind::Science).expect("science");
        let first_guider = kinds.iter().position(|kind| *kind == DetectorKind::Guider).expect("guiders");
        assert!(kinds[..first_science].iter().all(|kind| *kind == DetectorKind::WavefrontHalf));
        assert_eq!(first_science, 4, "two corner rafts, two wavefront half-sensors each");
        assert!(kinds[first_science..first_guider].iter().all(|kind| *kind == DetectorKind::Science));
        assert!(kinds[first_guider..].iter().all(|kind| *kind == DetectorKind::Guider));
    }

    #[test]
    fn the_multipart_etag_is_the_md5_of_the_part_md5s_and_the_part_count() {
        // The S3 convention, computed independently with python's hashlib.
        let output = std::process::Command::new("python3")
            .args([
                "-c",
                "import hashlib; print(hashlib.md5(hashlib.md5(b'a').digest() + hashlib.md5(b'b').digest()).hexdigest())",
            ])
            .output()
            .expect("python3");
        let expected = format!("{}-2", String::from_utf8(output.stdout).expect("utf-8").trim());
        assert_eq!(multipart_etag([&b"a"[..], &b"b"[..]].into_iter()), expected);
    }
}
