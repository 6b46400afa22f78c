//! The io_uring path: one thread per stream, one io_uring, a fixed pool of registered buffers.
//!
//! A frame is read from the connection straight into a registered buffer (`READ_FIXED`), at
//! byte 4096 of it; the 4096 bytes in front are left for the ring's record header block. The
//! header and the pixel CRC are checked in one pass, which also yields the record's CRC; the ring
//! places the record ([`Ring::plan_append`]); its header is written into the front block; and one
//! `WRITE_FIXED` of the same buffer (header block + frame) goes to the ring's `O_DIRECT` data file
//! (a registered file). No pixel byte is copied in user space. Group commit: whenever no
//! `fdatasync` is in flight and some writes completed since the last one, an `FSYNC`
//! (`DATASYNC`) is submitted; when it completes the ring publishes the durable head and the
//! frames are announced. A buffer is free again as soon as its write completed.
//!
//! Buffer ownership (see `docs/dma-ingest.md`): a buffer is either free, owned by the kernel
//! (a read or a write in flight: user space does not touch it), or owned by the loop (checking,
//! or parked waiting for ring space). The buffers and the registered file outlive the io_uring
//! instance: on shutdown every connection is shut down (pending reads complete), and the loop
//! waits for every operation in flight to complete before the buffers are dropped.

// io_uring is the one place of the workspace that needs `unsafe`: registering buffers, pushing
// submission entries that point at them, and shutdown(2) on a raw descriptor. Each block says why
// it is sound.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use ringbuffer::{AlignedBuf, Error as RingError, RecordKind, Ring, SyncTicket};

use crate::completeness::Admitted;
use crate::core::{
    check_payload, parse_header, ConnectionState, IngestCounters, IngestEvent, RejectKind, StreamCore,
};
use crate::metadata_channel::MetadataItem;
use crate::protocol::frame::{FrameHeader, FRAME_HEADER_BLOCK_BYTES};
use crate::source::{Accepted, Listener};

const BLOCK: usize = FRAME_HEADER_BLOCK_BYTES;
/// How often the loop accepts new connections and checks completeness deadlines.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(20);

/// Checks that this kernel (and any seccomp profile or `kernel.io_uring_disabled`) lets us create
/// an io_uring with the operations the ingest uses; the error says why not.
pub fn probe() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|error| format!("io_uring_setup failed: {error}"))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|error| format!("io_uring probe failed: {error}"))?;
    for (code, name) in [
        (opcode::ReadFixed::CODE, "READ_FIXED"),
        (opcode::WriteFixed::CODE, "WRITE_FIXED"),
        (opcode::Fsync::CODE, "FSYNC"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("io_uring operation {name} is not supported by this kernel"));
        }
    }
    Ok(())
}

/// What an operation in flight is, packed into the completion's `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read { slot: usize },
    Write { slot: usize },
    Sync,
}

impl Op {
    fn encode(self) -> u64 {
        match self {
            Op::Read { slot } => (1 << 32) | slot as u64,
            Op::Write { slot } => (2 << 32) | slot as u64,
            Op::Sync => 3 << 32,
        }
    }

    fn decode(user_data: u64) -> Op {
        let slot = (user_data & 0xffff_ffff) as usize;
        match user_data >> 32 {
            1 => Op::Read { slot },
            2 => Op::Write { slot },
            _ => Op::Sync,
        }
    }
}

/// Who owns a buffer.
#[derive(Debug)]
enum Slot {
    Free,
    /// A read in flight into it for connection `connection` (kernel-owned).
    Reading {
        connection: usize,
    },
    /// Frame checked and admitted, waiting for ring space (loop-owned).
    Parked {
        connection: usize,
        header: FrameHeader,
        admitted: Admitted,
        record_crc: u32,
    },
    /// A write in flight from it (kernel-owned).
    Writing {
        sequence: u64,
        admitted: Option<Admitted>,
        frame_bytes: u64,
        metadata: Option<(u64, String)>,
    },
    /// Written; waiting for earlier writes to be confirmed in order.
    Written {
        sequence: u64,
        admitted: Option<Admitted>,
        frame_bytes: u64,
        metadata: Option<(u64, String)>,
    },
}

/// Where a connection is in its current frame.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Reading the header block into `slot`: `filled` of 4096 bytes so far.
    Header { slot: usize, filled: usize },
    /// Reading the rest of the frame: `filled` of `frame_bytes` (header block included).
    Payload { slot: usize, header: FrameHeader, filled: usize, frame_bytes: usize },
    /// Waiting for a free buffer.
    NeedBuffer,
}

struct Connection {
    state: ConnectionState,
    fd: OwnedFd,
    /// `Some(offset)` for a file (positional reads), `None` for a stream.
    file_offset: Option<u64>,
    stage: Stage,
    read_in_flight: bool,
    /// Stop reading: the stream ended or cannot be trusted; closed once no read is in flight.
    finished: Option<bool>,
}

/// An accepted connection as a descriptor, and whether it is read at explicit offsets.
fn accept_fd(listener: &mut Listener, number: u64) -> io::Result<Option<(OwnedFd, String, bool)>> {
    Ok(listener.accept_raw(number)?.map(|(accepted, name)| match accepted {
        Accepted::Unix(stream) => (OwnedFd::from(stream), name, false),
        Accepted::Tcp(stream) => (OwnedFd::from(stream), name, false),
        Accepted::File(file, positional) => (OwnedFd::from(file), name, positional),
    }))
}

/// The loop's state. Field order matters: `uring` is dropped before `buffers`.
struct Loop {
    uring: IoUring,
    core: StreamCore,
    buffers: Vec<AlignedBuf>,
    slots: Vec<Slot>,
    connections: Vec<Option<Connection>>,
    accepting: Listener,
    once: bool,
    connection_number: u64,
    /// Buffers with a write in flight or written, in plan order.
    write_order: VecDeque<usize>,
    /// Parked frames, oldest first.
    parked: VecDeque<usize>,
    /// Confirmed writes not yet covered by a sync: (admitted frame or metadata, bytes, sequence).
    confirmed: Vec<Confirmed>,
    /// A metadata record waiting for ring space (policy `block`).
    waiting_metadata: Option<MetadataItem>,
    /// The sync in flight and the writes it covers.
    sync_in_flight: Option<(SyncTicket, Vec<Confirmed>)>,
    in_flight: usize,
    fixed_file: bool,
    ring_fd: RawFd,
    failed: Option<String>,
}

struct Confirmed {
    sequence: u64,
    admitted: Option<Admitted>,
    frame_bytes: u64,
    metadata: Option<(u64, String)>,
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
    let entries = (2 * options.buffer_count + 8).next_power_of_two() as u32;
    let uring =
        IoUring::new(entries).map_err(|error| format!("io_uring_setup({entries}) failed: {error}"))?;
    let mut buffers: Vec<AlignedBuf> =
        (0..options.buffer_count).map(|_| AlignedBuf::zeroed(options.buffer_bytes())).collect();
    let iovecs: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|buffer| {
            let bytes = buffer.as_mut_slice();
            libc::iovec { iov_base: bytes.as_mut_ptr().cast(), iov_len: bytes.len() }
        })
        .collect();
    // SAFETY: every iovec points into a buffer of `buffers`, which the `Loop` owns and drops only
    // after `uring` (field order) and after every operation in flight completed (`finish`). The
    // buffers are never resized or moved (a `Vec<AlignedBuf>` moves the handles, not the memory).
    unsafe { uring.submitter().register_buffers(&iovecs) }.map_err(|error| {
        format!(
            "registering {} buffers of {} bytes failed: {error} (RLIMIT_MEMLOCK?)",
            options.buffer_count,
            options.buffer_bytes()
        )
    })?;
    let fixed_file = uring.submitter().register_files(&[ring_fd]).is_ok();
    let once = accepting.is_once();
    let mut state = Loop {
        uring,
        slots: (0..options.buffer_count).map(|_| Slot::Free).collect(),
        buffers,
        core,
        connections: (0..options.max_connections).map(|_| None).collect(),
        accepting,
        once,
        connection_number: 0,
        write_order: VecDeque::new(),
        parked: VecDeque::new(),
        confirmed: Vec::new(),
        waiting_metadata: None,
        sync_in_flight: None,
        in_flight: 0,
        fixed_file,
        ring_fd,
        failed: None,
    };
    let result = state.run(metadata.as_ref(), &shutdown);
    state.finish();
    if let Some(failed) = state.failed.take() {
        return Err(failed);
    }
    result?;
    state.core.publish_ring_stats();
    let Loop { uring, core, buffers, .. } = state;
    drop(uring);
    drop(buffers);
    Ok(core.ring)
}

impl Loop {
    fn run(
        &mut self,
        metadata: Option<&Receiver<MetadataItem>>,
        shutdown: &AtomicBool,
    ) -> Result<(), String> {
        let mut last_stats = Instant::now();
        let mut last_housekeeping = Instant::now() - HOUSEKEEPING_INTERVAL;
        let mut accepted_once = false;
        // Until the metadata thread has ended (it stops at shutdown or at the end of a file),
        // messages it already received may still arrive: the loop ends only after them.
        let mut metadata_done = metadata.is_none();
        loop {
            if self.failed.is_some() {
                return Ok(());
            }
            let stopping = shutdown.load(Ordering::Relaxed);
            // Housekeeping (accept, deadlines) at most every HOUSEKEEPING_INTERVAL: the loop turns
            // once per completion, many times per frame while a socket delivers it in pieces.
            let housekeeping = last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL;
            if housekeeping {
                last_housekeeping = Instant::now();
                self.core.poll_deadlines();
            }
            if !stopping {
                if housekeeping || !accepted_once {
                    accepted_once |= self.accept_connections();
                }
            } else {
                self.stop_reading();
            }
            // Metadata waiting for ring space first, then new messages, in arrival order.
            while self.free_slot().is_some() {
                let item = match self.waiting_metadata.take() {
                    Some(item) => item,
                    None => match metadata.map(Receiver::try_recv) {
                        Some(Ok(item)) => item,
                        Some(Err(TryRecvError::Disconnected)) => {
                            metadata_done = true;
                            break;
                        }
                        _ => break,
                    },
                };
                if let Some(item) = self.write_metadata(item, stopping) {
                    self.waiting_metadata = Some(item);
                    break;
                }
            }
            self.retry_parked(stopping);
            self.start_reads();
            self.start_sync();
            let idle_connections = self.connections.iter().all(Option::is_none);
            if (stopping || (self.once && accepted_once && idle_connections))
                && self.in_flight == 0
                && self.parked.is_empty()
                && self.waiting_metadata.is_none()
                && metadata_done
                && self.confirmed.is_empty()
            {
                return Ok(());
            }
            self.wait_and_complete(Duration::from_millis(5).min(self.core.options.max_commit_delay))?;
            if last_stats.elapsed() >= Duration::from_millis(200) {
                self.core.publish_ring_stats();
                last_stats = Instant::now();
            }
        }
    }

    fn accept_connections(&mut self) -> bool {
        let mut accepted = false;
        loop {
            let number = self.connection_number + 1;
            match accept_fd(&mut self.accepting, number) {
                Ok(Some((fd, name, is_file))) => {
                    self.connection_number = number;
                    accepted = true;
                    IngestCounters::add(&self.core.counters().connections_total, 1);
                    let Some(index) = self.connections.iter().position(Option::is_none) else {
                        IngestCounters::add(&self.core.counters().connections_refused_total, 1);
                        let stream = &self.core.options.stream;
                        tracing::warn!(%stream, connection = %name, "connection refused: too many open");
                        continue;
                    };
                    let stream = &self.core.options.stream;
                    tracing::info!(%stream, connection = %name, "frame connection opened");
                    self.connections[index] = Some(Connection {
                        state: ConnectionState::new(name),
                        fd,
                        file_offset: is_file.then_some(0),
                        stage: Stage::NeedBuffer,
                        read_in_flight: false,
                        finished: None,
                    });
                }
                Ok(None) => return accepted,
                Err(error) => {
                    tracing::warn!(stream = %self.core.options.stream, %error, "accept failed");
                    return accepted;
                }
            }
        }
    }

    fn stop_reading(&mut self) {
        for connection in self.connections.iter_mut().flatten() {
            if connection.finished.is_none() {
                connection.finished = Some(false);
                // Wakes a read blocked on a silent peer; it completes with 0 or an error.
                // SAFETY: plain shutdown(2) on a descriptor we own; failure (not a socket) is fine.
                unsafe { libc::shutdown(connection.fd.as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
        self.close_finished_connections();
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|slot| matches!(slot, Slot::Free))
    }

    fn start_reads(&mut self) {
        for index in 0..self.connections.len() {
            let Some(connection) = self.connections[index].as_mut() else { continue };
            if connection.read_in_flight || connection.finished.is_some() {
                continue;
            }
            if let Stage::NeedBuffer = connection.stage {
                let Some(slot) = self.slots.iter().position(|slot| matches!(slot, Slot::Free)) else {
                    return;
                };
                self.slots[slot] = Slot::Reading { connection: index };
                connection.stage = Stage::Header { slot, filled: 0 };
            }
            let (slot, start, end) = match connection.stage {
                Stage::Header { slot, filled } => (slot, BLOCK + filled, 2 * BLOCK),
                Stage::Payload { slot, filled, frame_bytes, .. } => {
                    (slot, BLOCK + filled, BLOCK + frame_bytes)
                }
                Stage::NeedBuffer => unreachable!("given a buffer above"),
            };
            self.slots[slot] = Slot::Reading { connection: index };
            let target = &mut self.buffers[slot].as_mut_slice()[start..end];
            let offset = connection.file_offset.unwrap_or(u64::MAX);
            let entry = opcode::ReadFixed::new(
                types::Fd(connection.fd.as_raw_fd()),
                target.as_mut_ptr(),
                target.len() as u32,
                slot as u16,
            )
            .offset(offset)
            .build()
            .user_data(Op::Read { slot }.encode());
            connection.read_in_flight = true;
            self.push(&entry);
        }
    }

    fn push(&mut self, entry: &io_uring::squeue::Entry) {
        // SAFETY: every entry refers to a registered buffer slot owned by the kernel until its
        // completion (the slot's state says so and nothing else touches it), to a descriptor
        // that stays open until then (connections are closed only with no read in flight; the
        // ring's file lives in `core.ring`), or to nothing (fsync).
        while unsafe { self.uring.submission().push(entry) }.is_err() {
            if let Err(error) = self.uring.submit() {
                tracing::error!(%error, "io_uring submit failed while the queue was full");
            }
        }
        self.in_flight += 1;
    }

    fn wait_and_complete(&mut self, timeout: Duration) -> Result<(), String> {
        let timespec = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&timespec);
        if self.in_flight == 0 {
            // Nothing can complete: io_uring_enter would return at once. Sleep instead of spinning.
            std::thread::sleep(timeout);
            return Ok(());
        }
        match self.uring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(error)
                if error.raw_os_error() == Some(libc::ETIME)
                    || error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {}
            Err(error) => return Err(format!("io_uring_enter failed: {error}")),
        }
        let completions: Vec<(u64, i32)> =
            self.uring.completion().map(|cqe| (cqe.user_data(), cqe.result())).collect();
        for (user_data, result) in completions {
            self.in_flight -= 1;
            match Op::decode(user_data) {
                Op::Read { slot } => self.read_done(slot, result),
                Op::Write { slot } => self.write_done(slot, result),
                Op::Sync => self.sync_done(result),
            }
        }
        self.close_finished_connections();
        Ok(())
    }

    fn read_done(&mut self, slot: usize, result: i32) {
        let Slot::Reading { connection: index } = self.slots[slot] else {
            unreachable!("a read completed on a slot that was not reading")
        };
        let connection = self.connections[index].as_mut().expect("a connection with a read in flight exists");
        connection.read_in_flight = false;
        if connection.finished.is_some() {
            self.slots[slot] = Slot::Free;
            connection.stage = Stage::NeedBuffer;
            return;
        }
        if result < 0 {
            let error = io::Error::from_raw_os_error(-result);
            tracing::warn!(connection = %connection.state.name, %error, "read failed");
            connection.finished = Some(true);
            self.slots[slot] = Slot::Free;
            return;
        }
        let read = result as usize;
        if let Some(offset) = connection.file_offset.as_mut() {
            *offset += read as u64;
        }
        match connection.stage {
            Stage::Header { slot, filled } => {
                if read == 0 {
                    self.slots[slot] = Slot::Free;
                    connection.stage = Stage::NeedBuffer;
                    if filled == 0 {
                        connection.finished = Some(false);
                    } else {
                        let name = connection.state.name.clone();
                        connection.finished = Some(true);
                        self.core.reject(
                            RejectKind::Truncated,
                            &name,
                            None,
                            format!("stream ended {filled} bytes into a frame header"),
                        );
                    }
                    return;
                }
                let filled = filled + read;
                if filled < BLOCK {
                    connection.stage = Stage::Header { slot, filled };
                    return;
                }
                match parse_header(
                    &self.buffers[slot].as_slice()[BLOCK..2 * BLOCK],
                    self.core.options.max_frame_bytes,
                ) {
                    Ok(header) => {
                        let frame_bytes = header.frame_length_bytes();
                        connection.stage = Stage::Payload { slot, header, filled, frame_bytes };
                        if filled == frame_bytes {
                            self.frame_received(index, slot, header, frame_bytes);
                        }
                    }
                    Err((kind, detail)) => {
                        let name = connection.state.name.clone();
                        connection.finished = Some(true);
                        connection.stage = Stage::NeedBuffer;
                        self.slots[slot] = Slot::Free;
                        self.core.reject(
                            kind,
                            &name,
                            None,
                            format!("{detail}; closing the connection (its framing is lost)"),
                        );
                    }
                }
            }
            Stage::Payload { slot, header, filled, frame_bytes } => {
                if read == 0 {
                    let name = connection.state.name.clone();
                    connection.finished = Some(true);
                    connection.stage = Stage::NeedBuffer;
                    self.slots[slot] = Slot::Free;
                    self.core.reject(
                        RejectKind::Truncated,
                        &name,
                        Some(&header),
                        "stream ended inside a frame's pixels".into(),
                    );
                    return;
                }
                let filled = filled + read;
                connection.stage = Stage::Payload { slot, header, filled, frame_bytes };
                if filled == frame_bytes {
                    self.frame_received(index, slot, header, frame_bytes);
                }
            }
            Stage::NeedBuffer => unreachable!("a read completed for a connection without a buffer"),
        }
    }

    fn frame_received(&mut self, index: usize, slot: usize, header: FrameHeader, frame_bytes: usize) {
        IngestCounters::add(&self.core.counters().frames_received_total, 1);
        let connection = self.connections[index].as_mut().expect("connection exists");
        connection.stage = Stage::NeedBuffer;
        let frame = &self.buffers[slot].as_slice()[BLOCK..BLOCK + frame_bytes];
        let record_crc = match check_payload(&header, frame) {
            Ok(crc) => crc,
            Err(error) => {
                let name = connection.state.name.clone();
                self.slots[slot] = Slot::Free;
                self.core.reject(RejectKind::of_frame_error(&error), &name, Some(&header), error.to_string());
                return;
            }
        };
        let Some(admitted) = self.core.admit(&mut connection.state, &header) else {
            self.slots[slot] = Slot::Free;
            return;
        };
        self.slots[slot] = Slot::Parked { connection: index, header, admitted, record_crc };
        self.parked.push_back(slot);
        self.retry_parked(false);
    }

    /// Places parked frames in the ring, oldest first, and starts their writes.
    fn retry_parked(&mut self, stopping: bool) {
        while let Some(&slot) = self.parked.front() {
            let Slot::Parked { connection, header, admitted, record_crc } =
                std::mem::replace(&mut self.slots[slot], Slot::Free)
            else {
                unreachable!("parked slots are parked")
            };
            let frame_bytes = header.frame_length_bytes();
            match self.core.ring.plan_append(RecordKind::Frame, header.flags, frame_bytes, record_crc) {
                Ok(planned) => {
                    self.parked.pop_front();
                    self.announce_durable();
                    self.write_planned(slot, planned, frame_bytes, Some(admitted), None);
                    IngestCounters::add(&self.core.counters().frames_written_in_place_total, 1);
                }
                Err(RingError::WouldBlock { .. } | RingError::SyncRequired { .. }) => {
                    if stopping {
                        // Shutting down with a full ring: these frames were never acknowledged.
                        self.parked.pop_front();
                        self.core.abandon(admitted);
                        let exposure_id = header.exposure_id.get();
                        tracing::warn!(exposure_id, "{}", crate::core::NOT_WRITTEN_AT_SHUTDOWN);
                        continue;
                    }
                    self.slots[slot] = Slot::Parked { connection, header, admitted, record_crc };
                    IngestCounters::add(&self.core.counters().ring_full_waits_total, 1);
                    return;
                }
                Err(error @ RingError::Rejected { .. }) => {
                    self.parked.pop_front();
                    self.core.abandon(admitted);
                    let name = self.connection_name(connection);
                    self.core.reject(RejectKind::RingFull, &name, Some(&header), error.to_string());
                }
                Err(error) => {
                    self.parked.pop_front();
                    self.failed = Some(self.core.fail(&error));
                    return;
                }
            }
        }
    }

    fn connection_name(&self, index: usize) -> String {
        self.connections[index]
            .as_ref()
            .map_or_else(|| format!("connection slot {index}"), |connection| connection.state.name.clone())
    }

    /// Writes a metadata record; gives the item back when it must wait for ring space (policy
    /// `block`), so it is retried before any newer message.
    fn write_metadata(&mut self, item: MetadataItem, stopping: bool) -> Option<MetadataItem> {
        let slot = self.free_slot()?;
        let length = item.record.len();
        if length > self.core.options.max_frame_bytes {
            let detail = format!("metadata record of {length} bytes");
            self.core.reject(RejectKind::TooLarge, &item.connection, None, detail);
            return None;
        }
        let crc = crc32fast::hash(&item.record);
        match self.core.ring.plan_append(RecordKind::Metadata, 0, length, crc) {
            Ok(planned) => {
                let buffer = self.buffers[slot].as_mut_slice();
                let padded = length.div_ceil(BLOCK) * BLOCK;
                buffer[BLOCK..BLOCK + length].copy_from_slice(&item.record);
                buffer[BLOCK + length..BLOCK + padded].fill(0);
                IngestCounters::add(&self.core.counters().metadata_bytes_copied_total, length as u64);
                self.announce_durable();
                self.write_planned(slot, planned, padded, None, Some((item.exposure_id, item.kind)));
                None
            }
            Err(RingError::WouldBlock { .. } | RingError::SyncRequired { .. }) if !stopping => {
                IngestCounters::add(&self.core.counters().ring_full_waits_total, 1);
                Some(item)
            }
            Err(
                error @ (RingError::WouldBlock { .. }
                | RingError::Rejected { .. }
                | RingError::SyncRequired { .. }),
            ) => {
                let detail = format!("metadata of exposure {}: {error}", item.exposure_id);
                self.core.reject(RejectKind::RingFull, &item.connection, None, detail);
                None
            }
            Err(error) => {
                self.failed = Some(self.core.fail(&error));
                None
            }
        }
    }

    fn write_planned(
        &mut self,
        slot: usize,
        planned: ringbuffer::PlannedAppend,
        padded_payload_bytes: usize,
        admitted: Option<Admitted>,
        metadata: Option<(u64, String)>,
    ) {
        if let Some(padding) = planned.padding {
            // Once per lap: a padding record's header block, written synchronously.
            let mut block = AlignedBuf::zeroed(BLOCK);
            block.as_mut_slice()[..64].copy_from_slice(&padding.header);
            if let Err(error) = rustix::io::pwrite(
                self.core.ring.direct_data_fd().expect("checked at start"),
                block.as_slice(),
                padding.physical_offset,
            )
            .map_err(io::Error::from)
            .and_then(|written| {
                if written == BLOCK {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("short padding write: {written} bytes"),
                    ))
                }
            }) {
                let error = self.core.ring.external_write_failed(planned.sequence, error);
                self.failed = Some(self.core.fail(&error));
                self.slots[slot] = Slot::Free;
                return;
            }
        }
        let buffer = self.buffers[slot].as_mut_slice();
        buffer[..64].copy_from_slice(&planned.record.header);
        buffer[64..BLOCK].fill(0);
        let length = BLOCK + padded_payload_bytes;
        let source = &buffer[..length];
        let entry = if self.fixed_file {
            opcode::WriteFixed::new(types::Fixed(0), source.as_ptr(), length as u32, slot as u16)
        } else {
            opcode::WriteFixed::new(types::Fd(self.ring_fd), source.as_ptr(), length as u32, slot as u16)
        }
        .offset(planned.record.physical_offset)
        .build()
        .user_data(Op::Write { slot }.encode());
        self.slots[slot] = Slot::Writing {
            sequence: planned.sequence,
            admitted,
            frame_bytes: padded_payload_bytes as u64,
            metadata,
        };
        self.write_order.push_back(slot);
        self.push(&entry);
    }

    fn write_done(&mut self, slot: usize, result: i32) {
        let Slot::Writing { sequence, admitted, frame_bytes, metadata } =
            std::mem::replace(&mut self.slots[slot], Slot::Free)
        else {
            unreachable!("a write completed on a slot that was not writing")
        };
        let expected = BLOCK as u64 + frame_bytes;
        if result < 0 || result as u64 != expected {
            let error = if result < 0 {
                io::Error::from_raw_os_error(-result)
            } else {
                io::Error::new(io::ErrorKind::WriteZero, format!("short write: {result} of {expected} bytes"))
            };
            let error = self.core.ring.external_write_failed(sequence, error);
            self.failed = Some(self.core.fail(&error));
            return;
        }
        self.slots[slot] = Slot::Written { sequence, admitted, frame_bytes, metadata };
        // Confirm in plan order; each confirmed buffer is free again.
        while let Some(&front) = self.write_order.front() {
            let Slot::Written { .. } = self.slots[front] else { break };
            let Slot::Written { sequence, admitted, frame_bytes, metadata } =
                std::mem::replace(&mut self.slots[front], Slot::Free)
            else {
                unreachable!()
            };
            self.write_order.pop_front();
            if let Err(error) = self.core.ring.confirm_written(sequence) {
                self.failed = Some(self.core.fail(&error));
                return;
            }
            self.confirmed.push(Confirmed { sequence, admitted, frame_bytes, metadata });
        }
    }

    fn start_sync(&mut self) {
        if self.sync_in_flight.is_some() || self.confirmed.is_empty() || self.failed.is_some() {
            return;
        }
        let Some(ticket) = self.core.ring.begin_sync() else {
            // Already durable (a sync the ring made itself while placing a record).
            self.announce_durable();
            return;
        };
        let covered = std::mem::take(&mut self.confirmed);
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
            self.failed = Some(self.core.fail(&error));
            return;
        }
        self.announce(covered);
        self.announce_durable();
    }

    /// Announces confirmed writes the ring made durable on its own (a sync inside `plan_append`).
    fn announce_durable(&mut self) {
        let durable = self.core.ring.durable_sequence();
        if self.confirmed.first().is_some_and(|first| first.sequence <= durable) {
            let split = self.confirmed.partition_point(|confirmed| confirmed.sequence <= durable);
            let done: Vec<Confirmed> = self.confirmed.drain(..split).collect();
            self.announce(done);
        }
    }

    fn announce(&mut self, covered: Vec<Confirmed>) {
        let mut frames = Vec::with_capacity(covered.len());
        for confirmed in covered {
            match (confirmed.admitted, confirmed.metadata) {
                (Some(admitted), _) => frames.push((admitted, confirmed.frame_bytes)),
                (None, Some((exposure_id, kind))) => {
                    IngestCounters::add(&self.core.counters().metadata_durable_total, 1);
                    self.core.emit(IngestEvent::MetadataDurable {
                        exposure_id,
                        kind,
                        sequence: confirmed.sequence,
                    });
                }
                (None, None) => {}
            }
        }
        self.core.frames_durable(frames);
    }

    fn close_finished_connections(&mut self) {
        for index in 0..self.connections.len() {
            let done = self.connections[index]
                .as_ref()
                .is_some_and(|connection| connection.finished.is_some() && !connection.read_in_flight);
            if done {
                let connection = self.connections[index].take().expect("checked above");
                let bad = connection.finished == Some(true);
                if bad {
                    IngestCounters::add(&self.core.counters().connections_closed_bad_total, 1);
                }
                if let Stage::Header { slot, .. } | Stage::Payload { slot, .. } = connection.stage {
                    self.slots[slot] = Slot::Free;
                }
                tracing::info!(connection = %connection.state.name, bad, "frame connection closed");
                self.core.connection_lost();
            }
        }
    }

    /// Waits for every operation in flight (reads are woken by shutting their sockets down), so
    /// no buffer is dropped while the kernel owns it.
    fn finish(&mut self) {
        self.stop_reading();
        while self.in_flight > 0 {
            if let Err(error) = self.wait_and_complete(Duration::from_millis(50)) {
                tracing::error!(
                    %error,
                    "io_uring wait failed while draining; leaking the buffers rather than freeing memory \
                     the kernel may still use"
                );
                std::mem::forget(std::mem::take(&mut self.buffers));
                return;
            }
            if self.failed.is_none() {
                self.start_sync();
            }
        }
        if self.failed.is_none() && (!self.confirmed.is_empty() || self.core.ring.begin_sync().is_some()) {
            if let Err(error) = self.core.ring.commit() {
                self.failed = Some(self.core.fail(&error));
            } else {
                let remaining = std::mem::take(&mut self.confirmed);
                self.announce(remaining);
            }
        }
    }
}
