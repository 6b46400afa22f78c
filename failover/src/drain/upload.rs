//! The drain's upload side: a fixed pool of file buffers, and one thread running a tokio runtime
//! on which every file in flight is an upload task that checks, sends, verifies and retries it
//! until the base confirms it.
//!
//! # Ownership of a file buffer
//!
//! The drain assembles a file into a buffer taken from the pool (`files_in_flight` buffers, sized
//! at start for the largest file of the focal plane) and hands it to [`Uploader::submit`], which
//! wraps it in a [`Bytes`] without copying ([`Bytes::from_owner`]). Every request body, part and
//! checksum computation of that file is a slice of it. The buffer comes back to the pool (an
//! `UploadEvent::BufferFree` on the event channel) only when the last of those slices is
//! dropped, so a buffer is never reused while a request or a hash may still read it, whatever
//! happened to the upload (success, failure, cancellation). The outcome of a file (confirmed or
//! crashed) is sent before its buffer can come back, so the drain never finds a free buffer for a
//! file it still counts as uploading. A store that keeps the request body itself (object_store's
//! `InMemory` keeps it as the object) keeps the buffer too and would run the pool dry: the tests
//! that use it copy the bytes first.
//!
//! # One upload task
//!
//! 1. Wait at the gate (pause, island mode, a stopping step, the base's health, the retry
//!    backoff) and, for a file sent in one PUT, for the rate limit's tokens.
//! 2. HEAD the key. An object already there (a resend after a crash or a cut, or the live lane's
//!    copy) is compared, by ETag where the store computes one from the bytes (S3) or by reading
//!    it back, and confirmed without sending anything; one with *different* bytes is never
//!    overwritten: ours goes to `{key}.conflict-{crc32}`, counted and logged as an error.
//! 3. PUT it: one conditional PUT (`If-None-Match: *`, [`PutMode::Create`]) up to
//!    `multipart_threshold_bytes`, so that an object written by someone else between the HEAD and
//!    the PUT is found (and compared) rather than overwritten; above it, a multipart upload
//!    (`part_bytes` parts, `parts_in_flight` at once, each part waiting for its tokens; an upload
//!    that fails is aborted, or remembered and aborted before the next attempt). A store without
//!    conditional PUT (it says `NotImplemented`) is written unconditionally after the HEAD, as
//!    before, and a warning says so once.
//! 4. Verify: the ETag the store returns against the MD5 of the bytes (the S3 single-part and
//!    multipart conventions; the MD5 is computed on a blocking thread while the bytes travel),
//!    otherwise by reading the object back and comparing CRC32s (streamed through a fixed 1 MiB
//!    scratch buffer, no per-file allocation).
//! 5. Report the confirmation; the drain records it and moves its cursor in exposure order.
//!
//! # The base's health, and stopping
//!
//! While the base fails, one file probes it and the others wait: after a failed attempt, a file
//! starts uploading (and a file already uploading starts its next attempt) only once the base
//! confirmed a file, unless it is the oldest file in flight. Files assembled meanwhile wait,
//! ready, in a queue (at most `files_in_flight` with those uploading). A new drain starts with
//! one file too, until the base answers its first request (a HEAD, found or not), so a base
//! that is down at start sees one request per backoff step, not one per buffer. The retry
//! backoff is the drain's, not the file's: after `n` failed attempts in a row the next attempt
//! waits `retry_initial * 2^(n-1)`, at most `retry_max`; a confirmed file resets it, and so does
//! the next step (the caller saying "try now").
//!
//! A step whose `stop` is set holds every file before its next attempt and returns once no
//! attempt is under way (the parts of an attempt under way still go, so it can finish, and a
//! failed multipart upload is aborted): a drain dropped then leaves no request half done. The
//! next step releases the files. A drain dropped while attempts are under way abandons them (as a
//! killed process would): nothing was confirmed for them.
//!
//! Architecture invariant: every table here is bounded at start: buffers (`files_in_flight`),
//! events (2 per buffer), scratch buffers (one per buffer), the rate limit's line (one per
//! buffer), multipart uploads awaiting an abort (`MAX_STALE_UPLOADS`), blocking threads.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{
    GetResultPayload, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions,
    PutPayload, PutResult,
};
use ringbuffer::Clock;

use super::rate_limit::{Admission, RateLimiter};
use super::{DrainControl, UploadClaims, MAX_UPLOAD_CLAIMS};
use crate::link::{LinkMonitorHandle, LinkState};

/// Multipart uploads remembered for a later abort (each holds only an upload id).
const MAX_STALE_UPLOADS: usize = 64;

/// Longest sleep of a waiting upload before it looks again at pause, link, health, the rate limit
/// and cancellation: a runtime change of any of them applies within this (plus a unit in flight).
const WAIT_SLICE: Duration = Duration::from_millis(20);

/// Bytes read at a time when an object is read back to verify it.
const READ_BACK_CHUNK_BYTES: usize = 1 << 20;

/// How files are uploaded (the upload-side part of `DrainOptions`).
#[derive(Debug, Clone)]
pub(super) struct UploadConfig {
    pub verify_by_etag: bool,
    pub files_in_flight: usize,
    pub file_buffer_bytes: usize,
    pub multipart_threshold_bytes: usize,
    pub part_bytes: usize,
    pub parts_in_flight: usize,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

/// One file to upload: its bytes are a pool buffer.
struct UploadJob {
    /// Dispatch order: the oldest file in flight probes a failing base.
    sequence: u64,
    exposure_id: u64,
    key: String,
    file: Bytes,
    crc32: u32,
}

/// A file the base confirmed.
#[derive(Debug, Clone)]
pub(super) struct Confirmation {
    pub exposure_id: u64,
    pub key: String,
    pub size_bytes: u64,
    pub crc32: u32,
    pub confirmed_ns: u64,
}

/// An upload task that panicked (a bug, ours or a store's): the drain stops with an error
/// rather than wait forever for its confirmation.
#[derive(Debug, Clone)]
pub(super) struct Crash {
    pub key: String,
    pub detail: String,
}

/// What comes back from the upload thread.
enum UploadEvent {
    Confirmed(Confirmation),
    Crashed(Crash),
    /// A file buffer whose last user dropped it.
    BufferFree(Vec<u8>),
}

/// A pool buffer lent to a [`Bytes`]: it goes home when the last slice of it is dropped.
struct PooledFile {
    bytes: Vec<u8>,
    home: SyncSender<UploadEvent>,
}

impl AsRef<[u8]> for PooledFile {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for PooledFile {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        // The channel holds two events per buffer, so it is never full; after the drain is gone
        // nobody wants the buffer back.
        let _ = self.home.try_send(UploadEvent::BufferFree(bytes));
    }
}

/// Why an attempt did not confirm the file.
enum AttemptError {
    /// The drain is shutting down.
    Cancelled,
    /// Retried after the backoff.
    Failed(String),
}

fn failed(what: &str, error: impl std::fmt::Display) -> AttemptError {
    AttemptError::Failed(format!("{what}: {error}"))
}

/// What a waiting upload waits for; pause and island mode always hold it.
#[derive(Debug, Clone, Copy)]
struct Gate {
    /// A stopping step's hold.
    hold: bool,
    /// The base's health: while it fails, only the oldest file goes.
    health: bool,
    /// The drain's retry backoff.
    backoff: bool,
}

impl Gate {
    /// Before an attempt.
    const ATTEMPT: Gate = Gate { hold: true, health: true, backoff: true };
    /// The tokens of a file sent in one PUT, taken before its attempt.
    const BEFORE_ATTEMPT: Gate = Gate { hold: true, health: true, backoff: false };
    /// A part, within an attempt under way (which must be able to finish).
    const WITHIN_ATTEMPT: Gate = Gate { hold: false, health: false, backoff: false };
}

/// An attempt under way: counted in `attempts_in_progress` until dropped.
struct AttemptUnderWay<'a> {
    shared: &'a UploadShared,
}

impl Drop for AttemptUnderWay<'_> {
    fn drop(&mut self) {
        self.shared.attempts_in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the upload tasks share.
struct UploadShared {
    store: Arc<dyn ObjectStore>,
    config: UploadConfig,
    control: Arc<DrainControl>,
    clock: Arc<dyn Clock>,
    link: OnceLock<Arc<LinkMonitorHandle>>,
    /// Keys shared with the stream's other lane (see [`UploadClaims`]).
    claims: OnceLock<Arc<UploadClaims>>,
    limiter: Arc<RateLimiter>,
    health: Mutex<Health>,
    /// Set when the drain is dropped: waiting tasks give up.
    cancel: AtomicBool,
    /// Set while a step is stopping: no attempt starts (attempts under way finish).
    hold: AtomicBool,
    /// Attempts under way (between their start and their outcome).
    attempts_in_progress: AtomicUsize,
    /// Cleared when the store says it cannot PUT conditionally.
    conditional_put: AtomicBool,
    /// Multipart uploads whose abort failed; aborted before the next attempt.
    stale_uploads: Mutex<Vec<Box<dyn object_store::MultipartUpload>>>,
    /// Read-back buffers, one per file in flight.
    scratch: Mutex<Vec<Vec<u8>>>,
}

/// The base's health as the upload tasks see it (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BaseState {
    /// Nothing answered yet (a new drain): one file probes; the first answer makes it healthy.
    Unknown,
    /// Answering: every file goes.
    Healthy,
    /// An attempt failed: one file probes until a file is confirmed.
    Failing,
}

/// What the upload tasks know of the base (see the module docs).
#[derive(Debug)]
struct Health {
    state: BaseState,
    /// Failed attempts in a row, and when the last one failed.
    consecutive_failures: u32,
    last_failure: Option<Instant>,
    /// Files in flight, in dispatch order (at most `files_in_flight`).
    in_flight: VecDeque<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The upload side of one drain: the buffer pool, the upload thread and its runtime.
pub(super) struct Uploader {
    shared: Arc<UploadShared>,
    handle: tokio::runtime::Handle,
    events: Receiver<UploadEvent>,
    event_sender: SyncSender<UploadEvent>,
    free: Vec<Vec<u8>>,
    /// Files assembled and waiting to start: while the base is not known healthy only one file
    /// uploads, the next ones wait here, ready (at most `files_in_flight` with the running ones).
    pending: VecDeque<UploadJob>,
    /// Upload tasks started and not yet finished.
    running: usize,
    next_sequence: u64,
    shutdown: Option<futures::channel::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Uploader {
    /// Allocates the pool and starts the upload thread.
    pub(super) fn start(
        store: Arc<dyn ObjectStore>,
        config: UploadConfig,
        control: Arc<DrainControl>,
        clock: Arc<dyn Clock>,
    ) -> io::Result<Uploader> {
        let files = config.files_in_flight;
        assert!(files > 0, "the drain needs at least one file buffer");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Per file at most one hash or file-system call at a time, plus slack.
            .max_blocking_threads(2 * files + 2)
            .thread_name("drain-blocking")
            .build()?;
        let handle = runtime.handle().clone();
        let (shutdown, shutdown_received) = futures::channel::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("drain-upload".into()).spawn(move || {
            runtime.block_on(async {
                let _ = shutdown_received.await;
            });
            runtime.shutdown_timeout(Duration::from_secs(10));
        })?;
        let (event_sender, events) = std::sync::mpsc::sync_channel(2 * files);
        let free = (0..files).map(|_| Vec::with_capacity(config.file_buffer_bytes)).collect();
        let limiter = RateLimiter::new(config.part_bytes as u64, files, clock.now_ns());
        let scratch = (0..files).map(|_| vec![0u8; READ_BACK_CHUNK_BYTES]).collect();
        let shared = Arc::new(UploadShared {
            store,
            control,
            clock,
            link: OnceLock::new(),
            claims: OnceLock::new(),
            limiter,
            health: Mutex::new(Health {
                state: BaseState::Unknown,
                consecutive_failures: 0,
                last_failure: None,
                in_flight: VecDeque::with_capacity(files),
            }),
            cancel: AtomicBool::new(false),
            hold: AtomicBool::new(false),
            attempts_in_progress: AtomicUsize::new(0),
            conditional_put: AtomicBool::new(true),
            stale_uploads: Mutex::new(Vec::new()),
            scratch: Mutex::new(scratch),
            config,
        });
        Ok(Uploader {
            shared,
            handle,
            events,
            event_sender,
            free,
            pending: VecDeque::with_capacity(files),
            running: 0,
            next_sequence: 0,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Uploads wait while `link` says DOWN.
    pub(super) fn set_link(&self, link: Arc<LinkMonitorHandle>) {
        let _ = self.shared.link.set(link);
    }

    /// Uploads claim their key in `claims` first (see [`UploadClaims`]).
    pub(super) fn set_claims(&self, claims: Arc<UploadClaims>) {
        let _ = self.shared.claims.set(claims);
    }

    /// A free file buffer (empty), if any.
    pub(super) fn take_buffer(&mut self) -> Option<Vec<u8>> {
        let mut buffer = self.free.pop()?;
        buffer.clear();
        Some(buffer)
    }

    /// Gives back a buffer that was not submitted.
    pub(super) fn return_buffer(&mut self, buffer: Vec<u8>) {
        assert!(self.free.len() < self.shared.config.files_in_flight, "more buffers returned than lent");
        self.free.push(buffer);
    }

    /// Forgets the failures in a row: the next attempt goes without waiting (the base's health is
    /// kept: while it fails, only the oldest file tries).
    pub(super) fn reset_backoff(&self) {
        let mut health = lock(&self.shared.health);
        health.consecutive_failures = 0;
        health.last_failure = None;
    }

    /// Files submitted and not yet confirmed (waiting to start, or uploading).
    pub(super) fn jobs_in_flight(&self) -> usize {
        self.pending.len() + self.running
    }

    /// Something is still out: a file in flight, or a buffer not yet back.
    pub(super) fn busy(&self) -> bool {
        self.jobs_in_flight() > 0 || self.free.len() < self.shared.config.files_in_flight
    }

    /// Queues `file` (a pool buffer) for upload to `key`; its CRC32 is `crc32`. It starts at the
    /// next [`Uploader::start_ready`].
    pub(super) fn submit(&mut self, exposure_id: u64, key: String, file: Vec<u8>, crc32: u32) {
        assert!(
            self.jobs_in_flight() < self.shared.config.files_in_flight,
            "more files in flight than buffers"
        );
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let file = Bytes::from_owner(PooledFile { bytes: file, home: self.event_sender.clone() });
        self.pending.push_back(UploadJob { sequence, exposure_id, key, file, crc32 });
    }

    /// Starts the queued files that may start: all of them while the base is healthy, else one
    /// when nothing is uploading (the probe).
    pub(super) fn start_ready(&mut self) {
        while !self.pending.is_empty() {
            {
                let mut health = lock(&self.shared.health);
                if health.state != BaseState::Healthy && self.running > 0 {
                    return;
                }
                health.in_flight.push_back(self.pending[0].sequence);
            }
            let job = self.pending.pop_front().expect("a queued file");
            self.spawn(job);
        }
    }

    fn spawn(&mut self, job: UploadJob) {
        let crash_key = job.key.clone();
        // Held until the outcome is on the channel: the buffer comes back (`BufferFree`) only
        // after it, so the drain never sees a free buffer while the file still counts as running
        // (it would then submit one file more than it has buffers).
        let hold_buffer = job.file.clone();
        let shared = Arc::clone(&self.shared);
        let events = self.event_sender.clone();
        self.running += 1;
        self.handle.spawn(async move {
            use futures::FutureExt;
            let upload = std::panic::AssertUnwindSafe(upload_until_confirmed(&shared, job));
            // The channel holds two events per buffer: never full.
            match upload.catch_unwind().await {
                Ok(Some(confirmation)) => {
                    let _ = events.try_send(UploadEvent::Confirmed(confirmation));
                }
                Ok(None) => {}
                Err(panic) => {
                    let detail = panic
                        .downcast_ref::<&str>()
                        .map(|text| text.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_owned());
                    let _ = events.try_send(UploadEvent::Crashed(Crash { key: crash_key, detail }));
                }
            }
            drop(hold_buffer);
        });
    }

    /// Holds (or releases) every upload before its next attempt; attempts under way go on.
    pub(super) fn set_hold(&self, hold: bool) {
        self.shared.hold.store(hold, Ordering::SeqCst);
    }

    /// Attempts under way (a step stopping waits for none).
    pub(super) fn attempts_in_progress(&self) -> usize {
        self.shared.attempts_in_progress.load(Ordering::SeqCst)
    }

    /// The next confirmation (or crash), waiting at most `wait` for one; buffers that come back
    /// meanwhile return to the pool (and end the wait: a free buffer is progress too).
    pub(super) fn poll(&mut self, wait: Duration) -> Option<Result<Confirmation, Crash>> {
        while let Ok(event) = self.events.try_recv() {
            if let Some(confirmation) = self.absorb(event) {
                return Some(confirmation);
            }
        }
        if wait.is_zero() {
            return None;
        }
        let event = self.events.recv_timeout(wait).ok()?;
        self.absorb(event)
    }

    fn absorb(&mut self, event: UploadEvent) -> Option<Result<Confirmation, Crash>> {
        let outcome = match event {
            UploadEvent::BufferFree(buffer) => {
                self.return_buffer(buffer);
                return None;
            }
            UploadEvent::Confirmed(confirmation) => Ok(confirmation),
            UploadEvent::Crashed(crash) => Err(crash),
        };
        assert!(self.running > 0, "an upload outcome with no file uploading");
        self.running -= 1;
        Some(outcome)
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        // Uploads in flight stop where they are, as if the process had been killed: nothing
        // was confirmed for them, so the cursor is before them and a restart sends them again.
        self.shared.cancel.store(true, Ordering::SeqCst);
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One file

/// The ETag an S3 store gives the file, computed once, on a blocking thread.
enum ExpectedEtag {
    NotUsed,
    Pending(tokio::task::JoinHandle<String>),
    Ready(String),
}

impl ExpectedEtag {
    fn start(shared: &UploadShared, file: &Bytes) -> ExpectedEtag {
        if !shared.config.verify_by_etag {
            return ExpectedEtag::NotUsed;
        }
        let (file, threshold, part) =
            (file.clone(), shared.config.multipart_threshold_bytes, shared.config.part_bytes);
        ExpectedEtag::Pending(tokio::task::spawn_blocking(move || {
            if file.len() > threshold {
                multipart_etag(file.chunks(part))
            } else {
                md5_hex(&file)
            }
        }))
    }

    async fn get(&mut self) -> Result<Option<&str>, AttemptError> {
        if let ExpectedEtag::Pending(handle) = self {
            let etag = handle.await.map_err(|error| failed("computing the MD5", error))?;
            *self = ExpectedEtag::Ready(etag);
        }
        Ok(match self {
            ExpectedEtag::Ready(etag) => Some(etag.as_str()),
            _ => None,
        })
    }
}

/// A key claimed in an [`UploadClaims`] until dropped.
struct Claim {
    claims: Arc<UploadClaims>,
    key: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.claims.keys).retain(|claimed| *claimed != self.key);
    }
}

impl UploadShared {
    /// Waits until the other lane does not upload `key`, then claims it (`None` without shared
    /// claims, or if the drain was dropped while waiting).
    async fn claim(&self, key: &str) -> Option<Claim> {
        let claims = self.claims.get()?;
        loop {
            {
                let mut keys = lock(&claims.keys);
                if !keys.iter().any(|claimed| claimed == key) {
                    assert!(keys.len() < MAX_UPLOAD_CLAIMS, "more keys claimed than two lanes can upload");
                    keys.push(key.to_owned());
                    return Some(Claim { claims: Arc::clone(claims), key: key.to_owned() });
                }
            }
            if self.cancel.load(Ordering::Relaxed) {
                return None;
            }
            tokio::time::sleep(WAIT_SLICE).await;
        }
    }
}

/// Retries `job` until the base confirms it; `None` if the drain was dropped first.
async fn upload_until_confirmed(shared: &UploadShared, job: UploadJob) -> Option<Confirmation> {
    let mut etag = ExpectedEtag::start(shared, &job.file);
    // Held until this file is confirmed or given up: the other lane's copy waits, then finds it.
    let claim = shared.claim(&job.key).await;
    let length = job.file.len() as u64;
    let single_put = job.file.len() <= shared.config.multipart_threshold_bytes;
    let confirmed = loop {
        if shared.gate(job.sequence, Gate::ATTEMPT).await.is_err() {
            break false;
        }
        // A file sent in one PUT is one unit: its tokens are taken before the attempt (and its
        // HEAD), so that the check is as close as can be to the PUT.
        if single_put && shared.admit(job.sequence, length, Gate::BEFORE_ATTEMPT).await.is_err() {
            break false;
        }
        let Some(underway) = shared.begin_attempt() else {
            if single_put {
                shared.limiter.refund(length);
            }
            continue;
        };
        shared.abort_stale_uploads().await;
        let outcome = attempt(shared, &job, &mut etag, single_put).await;
        drop(underway);
        match outcome {
            Ok(()) => {
                shared.succeeded();
                break true;
            }
            Err(AttemptError::Cancelled) => break false,
            Err(AttemptError::Failed(error)) => {
                DrainControl::add(&shared.control.upload_failures_total, 1);
                let retry_in = shared.failed();
                tracing::warn!(key = job.key, %error, ?retry_in, "drain: upload failed; retrying");
            }
        }
    };
    drop(claim);
    lock(&shared.health).in_flight.retain(|&sequence| sequence != job.sequence);
    let UploadJob { exposure_id, key, file, crc32, .. } = job;
    let size_bytes = file.len() as u64;
    drop(file);
    drop(etag);
    confirmed.then(|| Confirmation {
        exposure_id,
        key,
        size_bytes,
        crc32,
        confirmed_ns: shared.clock.now_ns(),
    })
}

/// One attempt: HEAD, then (if absent) PUT and verify; see the module docs. `tokens_taken`: the
/// tokens of a single PUT were taken for it.
async fn attempt(
    shared: &UploadShared,
    job: &UploadJob,
    etag: &mut ExpectedEtag,
    tokens_taken: bool,
) -> Result<(), AttemptError> {
    let path = ObjectPath::from(job.key.as_str());
    match shared.store.head(&path).await {
        Ok(meta) => {
            shared.answered();
            return shared.settle_existing(job, &path, &meta, etag, tokens_taken).await;
        }
        Err(object_store::Error::NotFound { .. }) => shared.answered(),
        Err(error) => return Err(failed(&format!("head {path}"), error)),
    }
    match shared.put_and_verify(job, &path, etag).await? {
        Stored::Written => Ok(()),
        Stored::AlreadyThere => {
            // Written by someone else between the HEAD and the PUT (the live lane, another
            // node): compare it like any object found there. Our bytes went out: no refund.
            let meta =
                shared.store.head(&path).await.map_err(|error| failed(&format!("head {path}"), error))?;
            shared.settle_existing(job, &path, &meta, etag, false).await
        }
    }
}

/// What a conditional PUT did.
enum Stored {
    /// Our bytes are the object, verified.
    Written,
    /// An object was there already; nothing was overwritten.
    AlreadyThere,
}

impl UploadShared {
    fn paused_or_island(&self) -> bool {
        self.control.paused.load(Ordering::Relaxed)
            || self.link.get().is_some_and(|link| link.state() == LinkState::Down)
    }

    /// How long the file `sequence` must still wait at `gate` (see [`Gate`]).
    fn wait_before(&self, sequence: u64, gate: Gate) -> Option<Duration> {
        if self.paused_or_island() || (gate.hold && self.hold.load(Ordering::SeqCst)) {
            return Some(WAIT_SLICE);
        }
        if !gate.health && !gate.backoff {
            return None;
        }
        let health = lock(&self.health);
        if gate.health && health.state != BaseState::Healthy && health.in_flight.front() != Some(&sequence) {
            return Some(WAIT_SLICE);
        }
        if gate.backoff && health.consecutive_failures > 0 {
            let delay = self.retry_delay(health.consecutive_failures);
            let since = health.last_failure.map_or(delay, |at| at.elapsed());
            if since < delay {
                return Some(delay - since);
            }
        }
        None
    }

    /// Waits until file `sequence` may pass `gate`; `Cancelled` if the drain is dropped
    /// meanwhile.
    async fn gate(&self, sequence: u64, gate: Gate) -> Result<(), AttemptError> {
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(AttemptError::Cancelled);
            }
            match self.wait_before(sequence, gate) {
                None => return Ok(()),
                Some(wait) => tokio::time::sleep(wait.min(WAIT_SLICE)).await,
            }
        }
    }

    /// Waits at `gate` and for the rate limit's tokens for a unit of `unit_bytes`. A file held
    /// at the gate holds no place in the rate limit's line (it would block the files behind it).
    async fn admit(&self, sequence: u64, unit_bytes: u64, gate: Gate) -> Result<(), AttemptError> {
        let mut ticket = None;
        loop {
            if self.cancel.load(Ordering::Relaxed) || self.wait_before(sequence, gate).is_some() {
                ticket = None;
                self.gate(sequence, gate).await?;
            }
            let ticket = ticket.get_or_insert_with(|| self.limiter.ticket());
            let rate = self.control.rate_limit_bytes_per_second.load(Ordering::Relaxed);
            let poll_ns = WAIT_SLICE.as_nanos() as u64;
            match ticket.try_admit(unit_bytes, rate, self.clock.now_ns(), poll_ns) {
                Admission::Admitted => return Ok(()),
                Admission::WaitNs(wait_ns) => {
                    tokio::time::sleep(Duration::from_nanos(wait_ns).min(WAIT_SLICE)).await
                }
            }
        }
    }

    /// Marks an attempt under way, unless the drain is holding (a step is stopping). Counted
    /// before the hold is read, and the step sets the hold before it counts, so a stopping step
    /// that counts none under way knows none will start.
    fn begin_attempt(&self) -> Option<AttemptUnderWay<'_>> {
        self.attempts_in_progress.fetch_add(1, Ordering::SeqCst);
        let underway = AttemptUnderWay { shared: self };
        if self.hold.load(Ordering::SeqCst) {
            return None;
        }
        Some(underway)
    }

    fn retry_delay(&self, consecutive_failures: u32) -> Duration {
        let doublings = consecutive_failures.saturating_sub(1).min(20);
        (self.config.retry_initial * (1u32 << doublings)).min(self.config.retry_max)
    }

    /// Records a failed attempt; returns the backoff before the next one.
    fn failed(&self) -> Duration {
        let mut health = lock(&self.health);
        health.state = BaseState::Failing;
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        health.last_failure = Some(Instant::now());
        self.retry_delay(health.consecutive_failures)
    }

    /// The base answered a request of a new drain: the other files may go.
    fn answered(&self) {
        let mut health = lock(&self.health);
        if health.state == BaseState::Unknown {
            health.state = BaseState::Healthy;
        }
    }

    fn succeeded(&self) {
        let mut health = lock(&self.health);
        health.state = BaseState::Healthy;
        health.consecutive_failures = 0;
        health.last_failure = None;
    }

    /// Aborts multipart uploads an earlier attempt could not abort (the link was down), so no
    /// orphaned parts stay at the base. An upload the store no longer knows is simply dropped.
    async fn abort_stale_uploads(&self) {
        let stale = std::mem::take(&mut *lock(&self.stale_uploads));
        if stale.is_empty() {
            return;
        }
        let mut still_stale = Vec::new();
        for mut upload in stale {
            match upload.abort().await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(_) => still_stale.push(upload),
            }
        }
        let mut stale = lock(&self.stale_uploads);
        stale.extend(still_stale);
        if stale.len() > MAX_STALE_UPLOADS {
            let dropped = stale.len() - MAX_STALE_UPLOADS;
            stale.drain(..dropped);
            tracing::error!(
                dropped,
                "drain: giving up aborting old multipart uploads; their parts stay at the base \
                 until a bucket lifecycle rule (AbortIncompleteMultipartUpload) removes them"
            );
        }
    }

    /// An object is at `path` already: confirm it if it holds our bytes; otherwise keep it and
    /// send ours to the conflict key. `tokens_unused`: the PUT's tokens were taken and nothing
    /// was sent yet.
    async fn settle_existing(
        &self,
        job: &UploadJob,
        path: &ObjectPath,
        meta: &ObjectMeta,
        etag: &mut ExpectedEtag,
        tokens_unused: bool,
    ) -> Result<(), AttemptError> {
        let length = job.file.len() as u64;
        let existing_crc32 = self.existing_crc32(job, path, meta, etag).await?;
        if existing_crc32 == Some(job.crc32) {
            if tokens_unused {
                self.limiter.refund(length);
            }
            DrainControl::add(&self.control.objects_confirmed_total, 1);
            DrainControl::add(&self.control.objects_already_present_total, 1);
            tracing::info!(key = job.key, "drain: object already at the base with the same bytes");
            return Ok(());
        }
        DrainControl::add(&self.control.conflicts_total, 1);
        tracing::error!(
            key = job.key,
            existing_size = meta.size,
            existing_crc32 = existing_crc32.map(|crc| format!("{crc:08x}")),
            crc32 = format!("{:08x}", job.crc32),
            "drain: the base holds different bytes under this key; not overwriting it"
        );
        let conflict = ObjectPath::from(format!("{}.conflict-{:08x}", job.key, job.crc32));
        match self.store.head(&conflict).await {
            Ok(meta) => {
                // A resend: the conflict copy is there from an earlier attempt.
                if self.existing_crc32(job, &conflict, &meta, etag).await? == Some(job.crc32) {
                    DrainControl::add(&self.control.objects_confirmed_total, 1);
                    return Ok(());
                }
                return Err(AttemptError::Failed(format!(
                    "{conflict} holds other bytes too; an operator must resolve {}",
                    job.key
                )));
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(failed(&format!("head {conflict}"), error)),
        }
        let single_put = job.file.len() <= self.config.multipart_threshold_bytes;
        if single_put && !tokens_unused {
            self.admit(job.sequence, length, Gate::WITHIN_ATTEMPT).await?;
        }
        match self.put_and_verify(job, &conflict, etag).await? {
            Stored::Written => Ok(()),
            Stored::AlreadyThere => Err(AttemptError::Failed(format!("{conflict} appeared meanwhile"))),
        }
    }

    /// The CRC32 of the object at `path` if it has our size (`None` if not): by ETag when it
    /// matches the MD5 of our bytes, otherwise read back.
    async fn existing_crc32(
        &self,
        job: &UploadJob,
        path: &ObjectPath,
        meta: &ObjectMeta,
        etag: &mut ExpectedEtag,
    ) -> Result<Option<u32>, AttemptError> {
        if meta.size != job.file.len() as u64 {
            return Ok(None);
        }
        // S3 computed the ETag from the bytes it holds: a match needs no read-back.
        if let (Some(expected), Some(found)) = (etag.get().await?, meta.e_tag.as_deref()) {
            if found.trim_matches('"') == expected {
                return Ok(Some(job.crc32));
            }
        }
        let (size, crc32) = self.read_back(path).await?;
        Ok((size == job.file.len() as u64).then_some(crc32))
    }

    /// PUTs the file to `path` (conditionally when the store can) and verifies it.
    async fn put_and_verify(
        &self,
        job: &UploadJob,
        path: &ObjectPath,
        etag: &mut ExpectedEtag,
    ) -> Result<Stored, AttemptError> {
        // The file's CRC32 travels with the object as user metadata (`x-amz-meta-crc32`) so any
        // client can check it; only S3-like stores (the ETag mode) keep user metadata.
        let mut attributes = object_store::Attributes::new();
        if self.config.verify_by_etag {
            attributes.insert(
                object_store::Attribute::Metadata("crc32".into()),
                format!("{:08x}", job.crc32).into(),
            );
        }
        let result = if job.file.len() <= self.config.multipart_threshold_bytes {
            match self.put_single(job, path, attributes).await? {
                Some(result) => result,
                None => return Ok(Stored::AlreadyThere),
            }
        } else {
            self.put_multipart(job, path, attributes).await?
        };
        let verified_by_etag = match (etag.get().await?, result.e_tag.as_deref()) {
            (Some(expected), Some(returned)) => returned.trim_matches('"') == expected,
            _ => false,
        };
        if !verified_by_etag {
            let (size, stored) = self.read_back(path).await?;
            if size != job.file.len() as u64 || stored != job.crc32 {
                return Err(AttemptError::Failed(format!(
                    "{path}: read back {size} B with CRC32 {stored:08x}, sent {} B with {:08x}",
                    job.file.len(),
                    job.crc32
                )));
            }
        }
        DrainControl::add(&self.control.objects_confirmed_total, 1);
        DrainControl::add(&self.control.bytes_uploaded_total, job.file.len() as u64);
        Ok(Stored::Written)
    }

    /// One PUT of the whole file (its tokens are taken); `None` if the object exists already.
    async fn put_single(
        &self,
        job: &UploadJob,
        path: &ObjectPath,
        attributes: object_store::Attributes,
    ) -> Result<Option<PutResult>, AttemptError> {
        loop {
            let conditional = self.conditional_put.load(Ordering::Relaxed);
            let mode = if conditional { PutMode::Create } else { PutMode::Overwrite };
            let options = PutOptions { mode, attributes: attributes.clone(), ..PutOptions::default() };
            match self.store.put_opts(path, PutPayload::from(job.file.clone()), options).await {
                Ok(result) => return Ok(Some(result)),
                Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                    return Ok(None)
                }
                Err(object_store::Error::NotImplemented { .. }) if conditional => {
                    self.conditional_put.store(false, Ordering::Relaxed);
                    tracing::warn!(
                        store = %self.store,
                        "drain: the store cannot PUT conditionally; writing after the HEAD only"
                    );
                }
                Err(error) => return Err(failed(&format!("put {path}"), error)),
            }
        }
    }

    /// A multipart upload: parts of `part_bytes`, `parts_in_flight` at once, each admitted by
    /// the rate limit; aborted if it fails (or remembered for a later abort).
    async fn put_multipart(
        &self,
        job: &UploadJob,
        path: &ObjectPath,
        attributes: object_store::Attributes,
    ) -> Result<PutResult, AttemptError> {
        let options = PutMultipartOptions { attributes, ..PutMultipartOptions::default() };
        let mut upload = self
            .store
            .put_multipart_opts(path, options)
            .await
            .map_err(|error| failed(&format!("create multipart {path}"), error))?;
        let (length, part_bytes) = (job.file.len(), self.config.part_bytes);
        let mut sending = FuturesUnordered::new();
        let mut outcome = Ok(());
        'parts: for start in (0..length).step_by(part_bytes) {
            let end = (start + part_bytes).min(length);
            if let Err(error) = self.admit(job.sequence, (end - start) as u64, Gate::WITHIN_ATTEMPT).await {
                outcome = Err(error);
                break;
            }
            // put_part numbers the parts in call order; they travel `parts_in_flight` at a time.
            sending.push(upload.put_part(PutPayload::from(job.file.slice(start..end))));
            while sending.len() >= self.config.parts_in_flight.max(1) {
                if let Some(Err(error)) = sending.next().await {
                    outcome = Err(failed(&format!("put part of {path}"), error));
                    break 'parts;
                }
            }
        }
        while outcome.is_ok() {
            match sending.next().await {
                None => break,
                Some(Ok(())) => {}
                Some(Err(error)) => outcome = Err(failed(&format!("put part of {path}"), error)),
            }
        }
        drop(sending);
        let result = match outcome {
            Ok(()) => upload.complete().await.map_err(|error| failed(&format!("complete {path}"), error)),
            Err(error) => Err(error),
        };
        if result.is_err() && upload.abort().await.is_err() {
            // Leave no parts behind: if the abort fails too (the link is down), it is retried
            // before the next attempt.
            lock(&self.stale_uploads).push(upload);
        }
        result
    }

    /// Size and CRC32 of the object at `path`, read back in chunks.
    async fn read_back(&self, path: &ObjectPath) -> Result<(u64, u32), AttemptError> {
        let what = || format!("read back {path}");
        let result = self.store.get(path).await.map_err(|error| failed(&what(), error))?;
        let range = result.range.clone();
        match result.payload {
            GetResultPayload::File(file, _) => {
                let mut scratch = lock(&self.scratch).pop().expect("one read-back buffer per file in flight");
                let (scratch, outcome) = tokio::task::spawn_blocking(move || {
                    let outcome = crc32_of_file(&file, range, &mut scratch);
                    (scratch, outcome)
                })
                .await
                .map_err(|error| failed(&what(), error))?;
                lock(&self.scratch).push(scratch);
                outcome.map_err(|error| failed(&what(), error))
            }
            GetResultPayload::Stream(mut stream) => {
                let mut hasher = crc32fast::Hasher::new();
                let mut size = 0u64;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|error| failed(&what(), error))?;
                    hasher.update(&chunk);
                    size += chunk.len() as u64;
                }
                Ok((size, hasher.finalize()))
            }
        }
    }
}

/// Size and CRC32 of `range` of `file`, read through `scratch`.
fn crc32_of_file(
    file: &std::fs::File,
    range: std::ops::Range<u64>,
    scratch: &mut [u8],
) -> io::Result<(u64, u32)> {
    use std::os::unix::fs::FileExt;
    let mut hasher = crc32fast::Hasher::new();
    let mut offset = range.start;
    while offset < range.end {
        let wanted = scratch.len().min((range.end - offset) as usize);
        let read = file.read_at(&mut scratch[..wanted], offset)?;
        if read == 0 {
            break;
        }
        hasher.update(&scratch[..read]);
        offset += read as u64;
    }
    Ok((offset - range.start, hasher.finalize()))
}

/// Lower-case hex MD5 of `bytes`: the ETag S3 gives a single-part upload.
fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The ETag S3 gives a multipart upload: the MD5 of the parts' binary MD5s, then `-{parts}`.
fn multipart_etag<'a>(parts: impl Iterator<Item = &'a [u8]>) -> String {
    use md5::Digest;
    let mut outer = md5::Md5::new();
    let mut count = 0;
    for part in parts {
        outer.update(md5::Md5::digest(part));
        count += 1;
    }
    let digest: String = outer.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{digest}-{count}")
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_file_is_read_back_whole_through_a_small_scratch_buffer() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("object");
        let bytes: Vec<u8> = (0..3_000_003u32).map(|index| (index % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let mut scratch = vec![0u8; 4096];
        let (size, crc) = crc32_of_file(&file, 0..bytes.len() as u64, &mut scratch).expect("read");
        assert_eq!((size, crc), (bytes.len() as u64, crc32fast::hash(&bytes)));
    }
}
