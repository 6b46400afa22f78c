//! The io_uring path: receiver threads fill a fixed pool of registered buffers from the
//! connections; one writer thread with one io_uring writes each frame to the ring from the very
//! buffer it arrived in, and group-commits.
//!
//! Threads and what they do (`docs/dma-ingest.md` explains the split; `receive` has the figures):
//! - **Receivers** ([`receive`]), one per connection: blocking reads of a whole frame into a
//!   leased pool buffer at byte 4096 (the block in front is left for the ring's record header),
//!   then the header and pixel CRC checked in one pass, which also yields the record's CRC. The
//!   frame and its lease go to the writer over a bounded channel, and an eventfd wakes it.
//! - **The writer** (this file; the stream's ingest thread) owns the ring and the io_uring. It
//!   accepts connections and starts their receivers, admits frames (completeness), places them
//!   ([`Ring::plan_append`]), writes the record header into the buffer's front block and submits
//!   one `WRITE_FIXED` of the buffer (header block + frame) to the ring's `O_DIRECT` data file
//!   (a registered file). Writes complete in any order and are confirmed to the ring in plan
//!   order. Group commit: whenever no `fdatasync` is in flight and some writes were confirmed
//!   since the last one, an `FSYNC` (`DATASYNC`) is submitted; when it completes the ring
//!   publishes the durable head and the frames are announced. Header-service records are
//!   written the same way, from a pool buffer.
//!
//! No pixel byte is copied in user space: the kernel copies the socket's bytes into the buffer
//! and the disk receives that buffer. Buffer ownership ([`pool`]): a buffer's single [`Lease`]
//! is held by a receiver (reading, checking), the channel, the writer (parked waiting for ring
//! space), the writer's in-flight table (a `WRITE_FIXED` in flight: the kernel reads the buffer
//! and nobody in user space touches it until the completion) or the free list; it is free again
//! as soon as its write completed. The pool outlives the io_uring: on shutdown the receivers are
//! stopped, the writer waits for every operation in flight, drops the io_uring (unregistering
//! the buffers) and only then its hold on the pool.
//!
//! [`Lease`]: pool::Lease

// io_uring is the one place of the workspace that needs `unsafe`: registering buffers, pushing
// submission entries that point at them, the buffer pool's raw memory ([`pool`]) and the
// eventfd. Each block says why it is sound. [`receive`] forbids it.
#![allow(unsafe_code)]

mod pool;
mod receive;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use ringbuffer::{
    AlignedBuf, Error as RingError, PlannedAppend, RecordKind, Ring, SyncTicket, MAX_EXTERNAL_IN_FLIGHT,
};

use self::pool::{BufferPool, FreeList, Lease};
use self::receive::Received;
use crate::completeness::Admitted;
use crate::core::{ConnectionState, IngestCounters, IngestEvent, RejectKind, StreamCore};
use crate::metadata_channel::MetadataItem;
use crate::protocol::frame::{FrameHeader, FRAME_HEADER_BLOCK_BYTES};
use crate::source::Listener;

const BLOCK: usize = FRAME_HEADER_BLOCK_BYTES;
/// Confirmed bytes after which a sync starts although writes are still in flight (about one
/// LATISS exposure; fio's reference syncs every 16 records of the same size).
const GROUP_COMMIT_BYTES: u64 = 64 << 20;
/// How often the writer accepts new connections and checks completeness deadlines.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(20);
/// Longest the writer sleeps without a completion: it then polls the metadata channel, retries
/// frames waiting for ring space and publishes statistics.
const MAX_WAIT: Duration = Duration::from_millis(5);

/// Checks that this kernel (and any seccomp profile or `kernel.io_uring_disabled`) lets us create
/// an io_uring with the operations the ingest uses; the error says why not.
pub fn probe() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|error| format!("io_uring_setup failed: {error}"))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|error| format!("io_uring probe failed: {error}"))?;
    for (code, name) in [
        (opcode::WriteFixed::CODE, "WRITE_FIXED"),
        (opcode::Fsync::CODE, "FSYNC"),
        (opcode::Read::CODE, "READ"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("io_uring operation {name} is not supported by this kernel"));
        }
    }
    Ok(())
}

/// Wakes the writer from its io_uring wait: an eventfd on which the writer keeps a `READ` armed;
/// receivers add 1 after handing over an item.
pub(crate) struct Waker {
    fd: OwnedFd,
}

impl Waker {
    fn new() -> io::Result<Waker> {
        // SAFETY: eventfd(2) takes no pointers; the result is checked before use. Blocking (no
        // EFD_NONBLOCK), so io_uring waits for a write instead of completing with EAGAIN.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor eventfd(2) just created; nothing else owns it.
        Ok(Waker { fd: unsafe { OwnedFd::from_raw_fd(raw) } })
    }

    /// Wakes the writer (adds 1 to the counter; cannot block: that needs a count near 2^64).
    pub(crate) fn wake(&self) {
        if let Err(error) = rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
            tracing::warn!(%error, "waking the io_uring writer failed");
        }
    }
}

/// What an operation in flight is, packed into the completion's `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// A `WRITE_FIXED` from pool buffer `index`.
    Write { index: usize },
    /// The group commit's `FSYNC`.
    Sync,
    /// The `READ` of the wake eventfd.
    Wake,
}

impl Op {
    fn encode(self) -> u64 {
        match self {
            Op::Write { index } => (1 << 32) | index as u64,
            Op::Sync => 2 << 32,
            Op::Wake => 3 << 32,
        }
    }

    fn decode(user_data: u64) -> Op {
        match user_data >> 32 {
            1 => Op::Write { index: (user_data & 0xffff_ffff) as usize },
            2 => Op::Sync,
            3 => Op::Wake,
            kind => unreachable!("user_data {user_data:#x} of unknown kind {kind}"),
        }
    }
}

/// Sets the flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A record placed in the ring, from its write until it is announced.
#[derive(Debug)]
struct Planned {
    sequence: u64,
    admitted: Option<Admitted>,
    /// The padded payload's bytes (frame or metadata record).
    payload_bytes: u64,
    /// For a metadata record: its exposure and kind, announced when durable.
    metadata: Option<(u64, String)>,
}

/// A record whose write was submitted, until it is confirmed to the ring (in plan order).
#[derive(Debug)]
struct Unconfirmed {
    record: Planned,
    /// The write completed (its buffer is already free again).
    written: bool,
}

/// A frame admitted and waiting for ring space (its lease held: the buffer is not written to).
struct Parked {
    connection: u64,
    lease: Lease,
    header: FrameHeader,
    admitted: Admitted,
    record_crc: u32,
}

/// The writer's state. Field order matters: `uring` is dropped before the pool.
struct Writer {
    uring: IoUring,
    core: StreamCore,
    pool: Arc<BufferPool>,
    free: Arc<FreeList>,
    received: Receiver<Received>,
    /// Cloned for each receiver; `None` once no connection will be accepted any more, so the
    /// channel disconnects when the last receiver has ended.
    received_sender: Option<SyncSender<Received>>,
    waker: Arc<Waker>,
    /// The wake eventfd's `READ` target (kernel-owned while `wake_armed`).
    /// Leaked (8 bytes per ingest start) so that it outlives the io_uring whatever happens,
    /// even an unwinding panic that closes the io_uring with the wake read still in flight.
    wake_buffer: &'static mut [u8; 8],
    wake_armed: bool,
    receivers_stop: Arc<AtomicBool>,
    /// Sets `receivers_stop` when the writer goes, however it goes (a panic included), so no
    /// receiver keeps a connection open waiting for a buffer that will never come back.
    _stop_receivers: StopOnDrop,
    receivers: Vec<JoinHandle<()>>,
    accepting: Listener,
    once: bool,
    accepted_once: bool,
    connection_number: u64,
    /// Open connections (at most `max_connections`) and their admission state.
    connections: Vec<(u64, ConnectionState)>,
    /// Indexed by pool buffer: the lease and record sequence of the `WRITE_FIXED` in flight from
    /// it (kernel-owned until the completion: the lease stays here so nobody in user space can
    /// reach the buffer).
    writing: Vec<Option<(Lease, u64)>>,
    /// Records written or being written, in plan order (sequences ascending), until confirmed.
    /// At most `MAX_EXTERNAL_IN_FLIGHT` (the ring refuses to plan more).
    unconfirmed: VecDeque<Unconfirmed>,
    /// Frames waiting for ring space, oldest first.
    parked: VecDeque<Parked>,
    /// Confirmed writes not yet covered by a sync.
    confirmed: Vec<Planned>,
    /// Bytes of `confirmed`, and when its oldest entry was confirmed (group commit's triggers).
    confirmed_bytes: u64,
    oldest_confirmed_at: Option<Instant>,
    /// An empty vector kept for the next sync's list, so group commit does not allocate.
    spare: Vec<Planned>,
    /// A metadata record waiting for ring space or a buffer (policy `block`).
    waiting_metadata: Option<MetadataItem>,
    /// A buffer kept for `waiting_metadata`: otherwise the receivers take every returned buffer.
    metadata_lease: Option<Lease>,
    metadata_done: bool,
    /// The sync in flight and the writes it covers.
    sync_in_flight: Option<(SyncTicket, Vec<Planned>)>,
    writes_in_flight: usize,
    /// Every operation in flight: writes, the sync, the wake read.
    ops_in_flight: usize,
    fixed_file: bool,
    ring_fd: RawFd,
    failed: Option<String>,
}

/// Runs the io_uring ingest on the calling thread until `shutdown` is set (or a replay file ends)
/// and everything received is durable; returns the ring.
pub(crate) fn run(
    core: StreamCore,
    accepting: Listener,
    metadata: Option<Receiver<MetadataItem>>,
    shutdown: Arc<AtomicBool>,
) -> Result<Ring, String> {
    let ring_fd = core
        .ring
        .direct_data_fd()
        .ok_or("the ring's data file is not open with O_DIRECT; io_uring writes need it")?
        .as_raw_fd();
    let options = core.options.clone();
    // Every buffer's write, the sync and the wake read can be in flight at once.
    let entries = (options.buffer_count + 2).next_power_of_two() as u32;
    // The pool is declared before the io_uring, so an early return drops the io_uring first.
    let (pool, leases) = BufferPool::new(options.buffer_count, options.buffer_bytes());
    let pool = Arc::new(pool);
    let uring =
        IoUring::new(entries).map_err(|error| format!("io_uring_setup({entries}) failed: {error}"))?;
    // SAFETY: every iovec points into `pool`, whose memory never moves and is freed only when
    // the last `Arc` on it goes, after the writer dropped `uring` (field order, and `finish`
    // waits for every operation in flight first).
    unsafe { uring.submitter().register_buffers(&pool.iovecs()) }.map_err(|error| {
        format!(
            "registering {} buffers of {} bytes failed: {error} (RLIMIT_MEMLOCK?)",
            pool.count(),
            pool.buffer_bytes()
        )
    })?;
    let fixed_file = uring.submitter().register_files(&[ring_fd]).is_ok();
    let waker = Waker::new().map_err(|error| format!("eventfd for the io_uring writer failed: {error}"))?;
    let (received_sender, received) =
        std::sync::mpsc::sync_channel(options.buffer_count + 2 * options.max_connections);
    let once = accepting.is_once();
    let receivers_stop = Arc::new(AtomicBool::new(false));
    let mut writer = Writer {
        uring,
        writing: (0..options.buffer_count).map(|_| None).collect(),
        core,
        pool,
        free: Arc::new(FreeList::new(leases)),
        received,
        received_sender: Some(received_sender),
        waker: Arc::new(waker),
        wake_buffer: Box::leak(Box::new([0; 8])),
        wake_armed: false,
        receivers_stop: Arc::clone(&receivers_stop),
        _stop_receivers: StopOnDrop(receivers_stop),
        receivers: Vec::with_capacity(options.max_connections),
        accepting,
        once,
        accepted_once: false,
        connection_number: 0,
        connections: Vec::with_capacity(options.max_connections),
        unconfirmed: VecDeque::with_capacity(MAX_EXTERNAL_IN_FLIGHT),
        parked: VecDeque::with_capacity(options.buffer_count),
        confirmed: Vec::with_capacity(options.buffer_count),
        confirmed_bytes: 0,
        oldest_confirmed_at: None,
        spare: Vec::with_capacity(options.buffer_count),
        waiting_metadata: None,
        metadata_lease: None,
        metadata_done: metadata.is_none(),
        sync_in_flight: None,
        writes_in_flight: 0,
        ops_in_flight: 0,
        fixed_file,
        ring_fd,
        failed: None,
    };
    let result = writer.run(metadata.as_ref(), &shutdown);
    writer.finish();
    if let Some(failed) = writer.failed.take() {
        writer.end();
        return Err(failed);
    }
    if let Err(error) = result {
        writer.end();
        return Err(error);
    }
    writer.core.publish_ring_stats();
    Ok(writer.end())
}

impl Writer {
    fn run(
        &mut self,
        metadata: Option<&Receiver<MetadataItem>>,
        shutdown: &AtomicBool,
    ) -> Result<(), String> {
        let mut last_stats = Instant::now();
        let mut last_housekeeping = Instant::now() - HOUSEKEEPING_INTERVAL;
        loop {
            if self.failed.is_some() {
                return Ok(());
            }
            let stopping = shutdown.load(Ordering::Relaxed);
            // Housekeeping (accept, deadlines) at most every HOUSEKEEPING_INTERVAL: the writer
            // turns at least once per completed write.
            let housekeeping = last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL;
            if housekeeping {
                last_housekeeping = Instant::now();
                self.core.poll_deadlines();
            }
            if stopping {
                self.stop_receiving();
            } else if housekeeping || !self.accepted_once {
                self.accept_connections();
            }
            // Metadata first (as the old single loop did), then what the receivers handed over.
            self.take_metadata(metadata, stopping);
            let receivers_done = self.take_received();
            self.retry_parked(stopping);
            self.start_sync(false);
            let input_ended = stopping || (self.once && self.accepted_once);
            if input_ended
                && receivers_done
                && self.writes_in_flight == 0
                && self.parked.is_empty()
                && self.waiting_metadata.is_none()
                && self.metadata_done
                && self.confirmed.is_empty()
                && self.sync_in_flight.is_none()
            {
                return Ok(());
            }
            self.arm_wake();
            self.wait_and_complete(MAX_WAIT.min(self.core.options.max_commit_delay))?;
            if last_stats.elapsed() >= Duration::from_millis(200) {
                self.core.publish_ring_stats();
                last_stats = Instant::now();
            }
        }
    }

    /// Accepts waiting connections and starts a receiver for each, up to `max_connections`.
    fn accept_connections(&mut self) {
        loop {
            let Some(sender) = self.received_sender.as_ref() else { return };
            let number = self.connection_number + 1;
            let (input, name) = match self.accepting.accept(number) {
                Ok(Some(accepted)) => accepted,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(stream = %self.core.options.stream, %error, "accept failed");
                    return;
                }
            };
            self.connection_number = number;
            self.accepted_once = true;
            let sender = sender.clone();
            if self.once {
                // A file or device is the only connection: the channel may disconnect after it.
                self.received_sender = None;
            }
            IngestCounters::add(&self.core.counters().connections_total, 1);
            let stream = self.core.options.stream.clone();
            if self.connections.len() >= self.core.options.max_connections {
                IngestCounters::add(&self.core.counters().connections_refused_total, 1);
                tracing::warn!(%stream, connection = %name, "connection refused: too many open");
                continue;
            }
            tracing::info!(%stream, connection = %name, "frame connection opened");
            let receiver = receive::Receiver {
                connection: number,
                name: name.clone(),
                input,
                pool: Arc::clone(&self.pool),
                free: Arc::clone(&self.free),
                writer: sender,
                waker: Arc::clone(&self.waker),
                stop: Arc::clone(&self.receivers_stop),
                observer: Arc::clone(&self.core.observer),
                max_frame_bytes: self.core.options.max_frame_bytes,
            };
            let spawned = std::thread::Builder::new()
                .name(format!("{stream}-receive-{number}"))
                .spawn(move || receiver.run());
            match spawned {
                Ok(handle) => {
                    self.receivers.retain(|receiver| !receiver.is_finished());
                    self.receivers.push(handle);
                    self.connections.push((number, ConnectionState::new(name)));
                }
                Err(error) => {
                    IngestCounters::add(&self.core.counters().connections_refused_total, 1);
                    tracing::warn!(%stream, connection = %name, %error, "connection refused: no thread");
                }
            }
        }
    }

    /// Accepts no more connections and tells the receivers to stop (within `SHUTDOWN_POLL`; a
    /// partly read frame is dropped: it was never acknowledged).
    fn stop_receiving(&mut self) {
        self.receivers_stop.store(true, Ordering::Relaxed);
        self.received_sender = None;
    }

    /// Handles what the receivers handed over; returns whether every receiver has ended and no
    /// new one can start (the channel is disconnected and empty).
    fn take_received(&mut self) -> bool {
        loop {
            match self.received.try_recv() {
                Ok(Received::Frame { connection, lease, header, record_crc }) => {
                    self.frame_received(connection, lease, header, record_crc);
                }
                Ok(Received::Rejected { connection, kind, header, detail }) => {
                    let name = self.connection_name(connection);
                    self.core.reject(kind, &name, header.as_ref(), detail);
                }
                Ok(Received::Closed { connection, bad }) => self.connection_closed(connection, bad),
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return true,
            }
            if self.failed.is_some() {
                return false;
            }
        }
    }

    fn frame_received(&mut self, connection: u64, lease: Lease, header: FrameHeader, record_crc: u32) {
        let position = self.connections.iter().position(|(number, _)| *number == connection);
        let Some(position) = position else {
            unreachable!("a frame from connection {connection}, which is not open")
        };
        let Some(admitted) = self.core.admit(&mut self.connections[position].1, &header) else {
            self.free.give(lease);
            return;
        };
        self.parked.push_back(Parked { connection, lease, header, admitted, record_crc });
        self.retry_parked(false);
    }

    fn connection_closed(&mut self, connection: u64, bad: bool) {
        if bad {
            IngestCounters::add(&self.core.counters().connections_closed_bad_total, 1);
        }
        self.connections.retain(|(number, _)| *number != connection);
        self.core.connection_lost();
    }

    fn connection_name(&self, connection: u64) -> String {
        self.connections
            .iter()
            .find(|(number, _)| *number == connection)
            .map_or_else(|| format!("connection#{connection}"), |(_, state)| state.name.clone())
    }

    /// Metadata waiting for ring space first, then new messages, in arrival order.
    fn take_metadata(&mut self, metadata: Option<&Receiver<MetadataItem>>, stopping: bool) {
        loop {
            let item = match self.waiting_metadata.take() {
                Some(item) => item,
                None => match metadata.map(Receiver::try_recv) {
                    Some(Ok(item)) => item,
                    Some(Err(TryRecvError::Disconnected)) => {
                        // The metadata thread has ended (shutdown or end of file): nothing more.
                        self.metadata_done = true;
                        return;
                    }
                    Some(Err(TryRecvError::Empty)) | None => return,
                },
            };
            if let Some(item) = self.write_metadata(item, stopping) {
                self.waiting_metadata = Some(item);
                return;
            }
        }
    }

    /// Places parked frames in the ring, oldest first, and starts their writes.
    fn retry_parked(&mut self, stopping: bool) {
        while self.failed.is_none() {
            let Some(parked) = self.parked.pop_front() else { return };
            let frame_bytes = parked.header.frame_length_bytes();
            let flags = parked.header.flags;
            match self.core.ring.plan_append(RecordKind::Frame, flags, frame_bytes, parked.record_crc) {
                Ok(planned) => {
                    self.announce_durable();
                    let record = Planned {
                        sequence: planned.sequence,
                        admitted: Some(parked.admitted),
                        payload_bytes: frame_bytes as u64,
                        metadata: None,
                    };
                    self.write_planned(parked.lease, &planned, record);
                    IngestCounters::add(&self.core.counters().frames_written_in_place_total, 1);
                }
                Err(error @ (RingError::WouldBlock { .. } | RingError::SyncRequired { .. })) => {
                    // Too much written and not yet durable is not a full ring: the writes in
                    // flight complete and a sync follows, even when stopping.
                    let full = matches!(error, RingError::WouldBlock { .. });
                    if stopping && full {
                        // Shutting down with a full ring: these frames were never acknowledged.
                        self.free.give(parked.lease);
                        self.core.abandon(parked.admitted);
                        let exposure_id = parked.header.exposure_id.get();
                        tracing::warn!(exposure_id, "{}", crate::core::NOT_WRITTEN_AT_SHUTDOWN);
                        continue;
                    }
                    self.parked.push_front(parked);
                    if full {
                        IngestCounters::add(&self.core.counters().ring_full_waits_total, 1);
                    }
                    return;
                }
                Err(error @ RingError::Rejected { .. }) => {
                    self.free.give(parked.lease);
                    self.core.abandon(parked.admitted);
                    let name = self.connection_name(parked.connection);
                    self.core.reject(RejectKind::RingFull, &name, Some(&parked.header), error.to_string());
                }
                Err(error) => {
                    self.free.give(parked.lease);
                    self.fail(&error);
                    return;
                }
            }
        }
    }

    /// Writes a metadata record from a pool buffer; gives the item back when it must wait for
    /// ring space (policy `block`) or a buffer, so it is retried before any newer message.
    fn write_metadata(&mut self, item: MetadataItem, stopping: bool) -> Option<MetadataItem> {
        let length = item.record.len();
        if length > self.core.options.max_frame_bytes {
            let detail = format!("metadata record of {length} bytes");
            self.core.reject(RejectKind::TooLarge, &item.connection, None, detail);
            return None;
        }
        let Some(mut lease) = self.metadata_lease.take().or_else(|| self.free.try_take()) else {
            return Some(item);
        };
        let crc = crc32fast::hash(&item.record);
        match self.core.ring.plan_append(RecordKind::Metadata, 0, length, crc) {
            Ok(planned) => {
                let padded = length.div_ceil(BLOCK) * BLOCK;
                let buffer = self.pool.bytes_mut(&mut lease);
                buffer[BLOCK..BLOCK + length].copy_from_slice(&item.record);
                buffer[BLOCK + length..BLOCK + padded].fill(0);
                IngestCounters::add(&self.core.counters().metadata_bytes_copied_total, length as u64);
                self.announce_durable();
                let record = Planned {
                    sequence: planned.sequence,
                    admitted: None,
                    payload_bytes: padded as u64,
                    metadata: Some((item.exposure_id, item.kind)),
                };
                self.write_planned(lease, &planned, record);
                None
            }
            Err(RingError::SyncRequired { .. }) => {
                // Not a full ring: the writes in flight complete and a sync follows, even when
                // stopping.
                self.metadata_lease = Some(lease);
                Some(item)
            }
            Err(RingError::WouldBlock { .. }) if !stopping => {
                self.metadata_lease = Some(lease);
                IngestCounters::add(&self.core.counters().ring_full_waits_total, 1);
                Some(item)
            }
            Err(error @ (RingError::WouldBlock { .. } | RingError::Rejected { .. })) => {
                self.free.give(lease);
                let detail = format!("metadata of exposure {}: {error}", item.exposure_id);
                self.core.reject(RejectKind::RingFull, &item.connection, None, detail);
                None
            }
            Err(error) => {
                self.free.give(lease);
                self.fail(&error);
                None
            }
        }
    }

    /// Records the ingest's failure: the first one only (later errors of a poisoned ring would
    /// only repeat it, each with its own `Failed` event).
    fn fail(&mut self, error: &RingError) {
        if self.failed.is_none() {
            self.failed = Some(self.core.fail(error));
        }
    }

    /// Writes the planned record's header into the buffer's front block and submits one
    /// `WRITE_FIXED` of header block + payload; the lease goes into the in-flight table.
    fn write_planned(&mut self, mut lease: Lease, planned: &PlannedAppend, record: Planned) {
        if let Some(padding) = &planned.padding {
            // Once per lap: a padding record's header block, written synchronously.
            if let Err(error) = self.write_padding(padding.physical_offset, &padding.header) {
                let error = self.core.ring.external_write_failed(planned.sequence, error);
                self.fail(&error);
                self.free.give(lease);
                return;
            }
        }
        let index = lease.index();
        let length = BLOCK + usize::try_from(record.payload_bytes).expect("a buffer's length fits");
        let buffer = self.pool.bytes_mut(&mut lease);
        assert!(length <= buffer.len(), "a record of {length} bytes in a buffer of {}", buffer.len());
        buffer[..64].copy_from_slice(&planned.record.header);
        buffer[64..BLOCK].fill(0);
        let source = buffer[..length].as_ptr();
        let entry = if self.fixed_file {
            opcode::WriteFixed::new(types::Fixed(0), source, length as u32, index as u16)
        } else {
            opcode::WriteFixed::new(types::Fd(self.ring_fd), source, length as u32, index as u16)
        }
        .offset(planned.record.physical_offset)
        .build()
        .user_data(Op::Write { index }.encode());
        assert!(self.writing[index].is_none(), "buffer {index} is already being written");
        let sequence = record.sequence;
        assert!(self.unconfirmed.back().is_none_or(|last| last.record.sequence < sequence), "plan order");
        self.writing[index] = Some((lease, sequence));
        self.unconfirmed.push_back(Unconfirmed { record, written: false });
        self.writes_in_flight += 1;
        self.push(&entry);
    }

    fn write_padding(&self, physical_offset: u64, header: &[u8; 64]) -> io::Result<()> {
        let mut block = AlignedBuf::zeroed(BLOCK);
        block.as_mut_slice()[..64].copy_from_slice(header);
        let fd = self.core.ring.direct_data_fd().expect("checked at start");
        let written = rustix::io::pwrite(fd, block.as_slice(), physical_offset).map_err(io::Error::from)?;
        if written != BLOCK {
            let detail = format!("short padding write: {written} bytes");
            return Err(io::Error::new(io::ErrorKind::WriteZero, detail));
        }
        Ok(())
    }

    fn write_done(&mut self, index: usize, result: i32) {
        self.writes_in_flight -= 1;
        let Some((lease, sequence)) = self.writing[index].take() else {
            unreachable!("a write completed from buffer {index}, which was not being written")
        };
        // The kernel is done with the buffer: free again (kept for waiting metadata first).
        if self.waiting_metadata.is_some() && self.metadata_lease.is_none() {
            self.metadata_lease = Some(lease);
        } else {
            self.free.give(lease);
        }
        let Ok(position) = self.unconfirmed.binary_search_by_key(&sequence, |entry| entry.record.sequence)
        else {
            unreachable!("record {sequence} was written but is not waiting for confirmation")
        };
        let entry = &mut self.unconfirmed[position];
        assert!(!entry.written, "record {sequence} written twice");
        let expected = BLOCK as u64 + entry.record.payload_bytes;
        if result < 0 || result as u64 != expected {
            let error = if result < 0 {
                io::Error::from_raw_os_error(-result)
            } else {
                io::Error::new(io::ErrorKind::WriteZero, format!("short write: {result} of {expected} bytes"))
            };
            let error = self.core.ring.external_write_failed(sequence, error);
            self.fail(&error);
            return;
        }
        entry.written = true;
        // Confirm in plan order.
        while self.unconfirmed.front().is_some_and(|front| front.written) {
            let Some(Unconfirmed { record, .. }) = self.unconfirmed.pop_front() else {
                unreachable!("checked above")
            };
            if let Err(error) = self.core.ring.confirm_written(record.sequence) {
                self.fail(&error);
                return;
            }
            self.confirmed_bytes += record.payload_bytes;
            self.oldest_confirmed_at.get_or_insert_with(Instant::now);
            self.confirmed.push(record);
        }
    }

    /// Group commit: an `fdatasync` for every confirmed write, when none is in flight and either
    /// no write is in flight either (nothing more is coming now: sync at once, for latency),
    /// [`GROUP_COMMIT_BYTES`] are waiting, the oldest has waited `max_commit_delay`, or `now`.
    fn start_sync(&mut self, now: bool) {
        if self.sync_in_flight.is_some() || self.confirmed.is_empty() || self.failed.is_some() {
            return;
        }
        let waited =
            self.oldest_confirmed_at.is_some_and(|at| at.elapsed() >= self.core.options.max_commit_delay);
        if !(now || self.writes_in_flight == 0 || self.confirmed_bytes >= GROUP_COMMIT_BYTES || waited) {
            return;
        }
        let Some(ticket) = self.core.ring.begin_sync() else {
            // Already durable (a sync the ring made itself while placing a record).
            self.announce_durable();
            return;
        };
        let covered = std::mem::replace(&mut self.confirmed, std::mem::take(&mut self.spare));
        self.confirmed_bytes = 0;
        self.oldest_confirmed_at = None;
        let entry = if self.fixed_file {
            opcode::Fsync::new(types::Fixed(0))
        } else {
            opcode::Fsync::new(types::Fd(self.ring_fd))
        }
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .user_data(Op::Sync.encode());
        self.sync_in_flight = Some((ticket, covered));
        IngestCounters::add(&self.core.counters().syncs_total, 1);
        self.push(&entry);
    }

    fn sync_done(&mut self, result: i32) {
        let (ticket, covered) = self.sync_in_flight.take().expect("a sync completed while one was in flight");
        let outcome = if result < 0 { Err(io::Error::from_raw_os_error(-result)) } else { Ok(()) };
        if let Err(error) = self.core.ring.finish_sync(ticket, outcome) {
            self.fail(&error);
            return;
        }
        self.announce(covered);
        self.announce_durable();
    }

    /// Announces confirmed writes the ring made durable on its own (a sync inside `plan_append`).
    fn announce_durable(&mut self) {
        if self.sync_in_flight.is_some() {
            // The records that sync covers are older: they go first, when it completes
            // (`sync_done` announces them, then calls this again). Announcements keep ring order.
            return;
        }
        let durable = self.core.ring.durable_sequence();
        if self.confirmed.first().is_some_and(|first| first.sequence <= durable) {
            let split = self.confirmed.partition_point(|confirmed| confirmed.sequence <= durable);
            let mut done = std::mem::take(&mut self.spare);
            done.extend(self.confirmed.drain(..split));
            let bytes: u64 = done.iter().map(|record| record.payload_bytes).sum();
            self.confirmed_bytes -= bytes;
            if self.confirmed.is_empty() {
                self.oldest_confirmed_at = None;
            }
            self.announce(done);
        }
    }

    /// Announces durable records (metadata events, then the frames' completeness), and keeps the
    /// emptied vector for the next sync.
    fn announce(&mut self, mut covered: Vec<Planned>) {
        for record in &mut covered {
            if let (None, Some((exposure_id, kind))) = (&record.admitted, record.metadata.take()) {
                IngestCounters::add(&self.core.counters().metadata_durable_total, 1);
                let sequence = record.sequence;
                self.core.emit(IngestEvent::MetadataDurable { exposure_id, kind, sequence });
            }
        }
        self.core.frames_durable(
            covered.drain(..).filter_map(|record| Some((record.admitted?, record.payload_bytes))),
        );
        if covered.capacity() > self.spare.capacity() {
            self.spare = covered;
        }
    }

    /// Keeps a `READ` of the wake eventfd in flight while the writer runs, so a receiver's
    /// hand-over ends the writer's wait.
    fn arm_wake(&mut self) {
        if self.wake_armed {
            return;
        }
        let target = self.wake_buffer.as_mut_ptr();
        let entry = opcode::Read::new(types::Fd(self.waker.fd.as_fd().as_raw_fd()), target, 8)
            .offset(u64::MAX)
            .build()
            .user_data(Op::Wake.encode());
        self.wake_armed = true;
        self.push(&entry);
    }

    fn push(&mut self, entry: &io_uring::squeue::Entry) {
        // SAFETY: every entry refers to memory that stays valid and untouched until its
        // completion: a pool buffer whose lease sits in `writing` (nobody lends it out until the
        // write completes; the pool outlives `uring`), or `wake_buffer` (not touched while
        // `wake_armed`; leaked, so never freed); and to descriptors that stay open until then:
        // the ring's data file (owned by `core.ring`) and the eventfd (owned by `waker`, dropped
        // after `uring`). The fsync refers to no memory.
        while unsafe { self.uring.submission().push(entry) }.is_err() {
            if let Err(error) = self.uring.submit() {
                tracing::error!(%error, "io_uring submit failed while the queue was full");
            }
        }
        self.ops_in_flight += 1;
    }

    fn wait_and_complete(&mut self, timeout: Duration) -> Result<(), String> {
        if self.ops_in_flight == 0 {
            // Nothing can complete: io_uring_enter would return at once. Sleep instead of spinning.
            std::thread::sleep(timeout);
            return Ok(());
        }
        let timespec = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&timespec);
        match self.uring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(error)
                if error.raw_os_error() == Some(libc::ETIME)
                    || error.kind() == io::ErrorKind::Interrupted
                    || error.raw_os_error() == Some(libc::EBUSY) => {}
            Err(error) => return Err(format!("io_uring_enter failed: {error}")),
        }
        loop {
            let next = self.uring.completion().next().map(|cqe| (cqe.user_data(), cqe.result()));
            let Some((user_data, result)) = next else { return Ok(()) };
            self.ops_in_flight -= 1;
            match Op::decode(user_data) {
                Op::Write { index } => self.write_done(index, result),
                Op::Sync => self.sync_done(result),
                Op::Wake => {
                    self.wake_armed = false;
                    if result < 0 {
                        let error = io::Error::from_raw_os_error(-result);
                        tracing::warn!(%error, "reading the io_uring writer's wake eventfd failed");
                    }
                }
            }
        }
    }

    /// Stops the receivers and waits for every operation in flight, so no buffer is freed while
    /// the kernel may read it; then makes what was written durable.
    fn finish(&mut self) {
        self.stop_receiving();
        if self.wake_armed {
            // Completes the wake read: nothing else will once the receivers are gone.
            self.waker.wake();
        }
        while self.ops_in_flight > 0 {
            if let Err(error) = self.wait_and_complete(Duration::from_millis(50)) {
                tracing::error!(
                    %error,
                    "io_uring wait failed while draining; leaking the buffers rather than freeing memory \
                     the kernel may still use"
                );
                std::mem::forget(Arc::clone(&self.pool));
                if self.failed.is_none() {
                    self.failed = Some(format!(
                        "{error}; writes in flight were abandoned and nothing after the last sync is durable"
                    ));
                }
                return;
            }
            if self.failed.is_none() {
                self.start_sync(true);
            }
        }
        if self.failed.is_none() && (!self.confirmed.is_empty() || self.core.ring.begin_sync().is_some()) {
            if let Err(error) = self.core.ring.commit() {
                self.fail(&error);
            } else {
                let remaining = std::mem::take(&mut self.confirmed);
                self.announce(remaining);
            }
        }
    }

    /// Tears down in the safe order: the io_uring (unregistering the buffers), then the channel
    /// (a receiver blocked handing over gives up), then the receivers (they stop within
    /// `SHUTDOWN_POLL`); returns the ring.
    fn end(self) -> Ring {
        let Writer { uring, core, received, receivers, parked, writing, .. } = self;
        drop(uring);
        drop((received, parked, writing));
        for receiver in receivers {
            if receiver.join().is_err() {
                tracing::error!(stream = %core.options.stream, "a frame receiver panicked");
            }
        }
        core.ring
    }
}
