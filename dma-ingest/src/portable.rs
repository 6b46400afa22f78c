//! The portable path: plain threads, blocking `read`, the ring's own `pwritev` and `fdatasync`.
//!
//! Chosen when io_uring is unavailable (or by configuration). Same semantics as the io_uring
//! path, through the same [`StreamCore`]: one reader thread per connection reads a frame into a
//! buffer from the fixed pool and checks it; the writer thread (which owns the ring) admits,
//! appends the very buffer the reader filled (no copy of pixel bytes; the ring computes its own
//! record CRC, one extra pass this path pays), and group-commits whatever arrived while the
//! previous `fdatasync` ran. Back-pressure: a reader waits for a free buffer before it reads, so
//! when the writer is slow or the ring is full the socket stops being read and the sender blocks.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringbuffer::{AlignedBuf, Error as RingError, RecordKind, Ring};

use crate::completeness::Admitted;
use crate::core::{
    check_payload, parse_header, ConnectionState, IngestCounters, IngestEvent, RejectKind, StreamCore,
};
use crate::metadata_channel::MetadataItem;
use crate::protocol::frame::{FrameHeader, FRAME_HEADER_BLOCK_BYTES};
use crate::source::{read_full, Filled, Listener, SHUTDOWN_POLL};

/// Unsynced frame bytes after which the writer commits even if more frames are queued.
const MAX_GROUP_BYTES: u64 = 256 << 20;

/// What reader threads hand the writer.
pub(crate) enum Item {
    Opened { connection: u64, name: String },
    Frame { connection: u64, buffer: AlignedBuf, header: FrameHeader },
    Rejected { connection: u64, kind: RejectKind, header: Option<FrameHeader>, detail: String },
    Closed { connection: u64, bad: bool },
    Metadata(MetadataItem),
}

/// Runs the portable ingest on the calling thread until `shutdown` is set (or a replay file
/// ends) and everything received is durable; returns the ring.
pub(crate) fn run(
    mut core: StreamCore,
    listener: Listener,
    metadata: Option<Receiver<MetadataItem>>,
    shutdown: Arc<AtomicBool>,
) -> Result<Ring, String> {
    let options = core.options.clone();
    let (free_tx, free_rx) = std::sync::mpsc::sync_channel::<AlignedBuf>(options.buffer_count);
    for _ in 0..options.buffer_count {
        free_tx
            .send(AlignedBuf::zeroed(options.buffer_bytes()))
            .expect("the pool holds buffer_count buffers");
    }
    let free_rx = Arc::new(std::sync::Mutex::new(free_rx));
    let (items_tx, items_rx) = std::sync::mpsc::sync_channel::<Item>(options.buffer_count + 8);
    let open_connections = Arc::new(AtomicUsize::new(0));
    let readers_stop = Arc::new(AtomicBool::new(false));

    // Forward metadata into the writer's queue so it is written in arrival order with frames.
    let metadata_forwarder = metadata.map(|metadata| {
        let items_tx = items_tx.clone();
        thread::Builder::new()
            .name(format!("{}-metadata-fwd", options.stream))
            .spawn(move || loop {
                match metadata.recv_timeout(SHUTDOWN_POLL) {
                    Ok(item) => {
                        if items_tx.send(Item::Metadata(item)).is_err() {
                            return;
                        }
                    }
                    // Ends when the metadata thread has ended (shutdown or end of file), so
                    // messages it already received are never dropped.
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            })
            .expect("spawn the metadata forwarder")
    });

    let acceptor = Acceptor {
        listener,
        items: items_tx.clone(),
        free: Arc::clone(&free_rx),
        free_tx: free_tx.clone(),
        stop: Arc::clone(&readers_stop),
        observer: Arc::clone(&core.observer),
        open: Arc::clone(&open_connections),
        options: options.clone(),
    };
    let acceptor = thread::Builder::new()
        .name(format!("{}-accept", options.stream))
        .spawn(move || acceptor.run())
        .expect("spawn the acceptor");
    drop(items_tx);

    let mut writer = Writer {
        connections: Vec::new(),
        unsynced_frames: Vec::new(),
        unsynced_metadata: Vec::new(),
        unsynced_bytes: 0,
        free: free_tx,
    };
    let result = writer.run(&mut core, &items_rx, &shutdown, &readers_stop);
    readers_stop.store(true, Ordering::Relaxed);
    // Unblock readers waiting for queue space, then wait for them.
    drop(items_rx);
    let _ = acceptor.join();
    if let Some(forwarder) = metadata_forwarder {
        let _ = forwarder.join();
    }
    result?;
    core.publish_ring_stats();
    Ok(core.ring)
}

/// Accepts frame connections and starts a reader thread for each, up to `max_connections`.
struct Acceptor {
    listener: Listener,
    items: SyncSender<Item>,
    free: Arc<std::sync::Mutex<Receiver<AlignedBuf>>>,
    free_tx: SyncSender<AlignedBuf>,
    stop: Arc<AtomicBool>,
    observer: Arc<crate::core::IngestObserver>,
    open: Arc<AtomicUsize>,
    options: crate::config::IngestOptions,
}

impl Acceptor {
    fn run(mut self) {
        let once = self.listener.is_once();
        let mut number = 0u64;
        let mut readers: Vec<thread::JoinHandle<()>> = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            match self.listener.accept(number + 1) {
                Ok(Some((stream, name))) => {
                    number += 1;
                    IngestCounters::add(&self.observer.counters.connections_total, 1);
                    if self.open.load(Ordering::Relaxed) >= self.options.max_connections {
                        IngestCounters::add(&self.observer.counters.connections_refused_total, 1);
                        let (stream, max) = (&self.options.stream, self.options.max_connections);
                        tracing::warn!(%stream, %name, max, "connection refused: too many open");
                        continue;
                    }
                    readers.retain(|reader| !reader.is_finished());
                    readers.push(self.spawn_reader(number, name, stream));
                }
                Ok(None) if once => break,
                Ok(None) => thread::sleep(Duration::from_millis(5)),
                Err(error) => {
                    tracing::warn!(stream = %self.options.stream, %error, "accept failed");
                    thread::sleep(SHUTDOWN_POLL);
                }
            }
        }
        for reader in readers {
            let _ = reader.join();
        }
    }

    fn spawn_reader(
        &self,
        connection: u64,
        name: String,
        input: Box<dyn Read + Send>,
    ) -> thread::JoinHandle<()> {
        self.open.fetch_add(1, Ordering::Relaxed);
        let reader = Reader {
            connection,
            name,
            input,
            items: self.items.clone(),
            free: Arc::clone(&self.free),
            free_tx: self.free_tx.clone(),
            stop: Arc::clone(&self.stop),
            observer: Arc::clone(&self.observer),
            max_frame_bytes: self.options.max_frame_bytes,
        };
        let open = Arc::clone(&self.open);
        thread::Builder::new()
            .name(format!("{}-read-{connection}", self.options.stream))
            .spawn(move || {
                reader.run();
                open.fetch_sub(1, Ordering::Relaxed);
            })
            .expect("spawn a reader")
    }
}

struct Reader {
    connection: u64,
    name: String,
    input: Box<dyn Read + Send>,
    items: SyncSender<Item>,
    free: Arc<std::sync::Mutex<Receiver<AlignedBuf>>>,
    free_tx: SyncSender<AlignedBuf>,
    stop: Arc<AtomicBool>,
    observer: Arc<crate::core::IngestObserver>,
    max_frame_bytes: usize,
}

impl Reader {
    fn run(mut self) {
        tracing::info!(connection = %self.name, "frame connection opened");
        let _ = self.items.send(Item::Opened { connection: self.connection, name: self.name.clone() });
        let bad = self.read_frames();
        tracing::info!(connection = %self.name, bad, "frame connection closed");
        let _ = self.items.send(Item::Closed { connection: self.connection, bad });
    }

    /// Reads frames until the stream ends; returns whether it was closed as untrustworthy.
    fn read_frames(&mut self) -> bool {
        let stop = Arc::clone(&self.stop);
        let stopping = move || stop.load(Ordering::Relaxed);
        loop {
            let Some(mut buffer) = self.take_buffer() else { return false };
            let block = FRAME_HEADER_BLOCK_BYTES..2 * FRAME_HEADER_BLOCK_BYTES;
            match read_full(&mut self.input, &mut buffer.as_mut_slice()[block.clone()], &stopping) {
                Ok(Filled::Full) => {}
                Ok(Filled::CleanEnd | Filled::Shutdown) => return false,
                Ok(Filled::Truncated { found }) => {
                    self.rejected(
                        RejectKind::Truncated,
                        None,
                        format!("stream ended {found} bytes into a frame header"),
                    );
                    return true;
                }
                Err(error) => {
                    tracing::warn!(connection = %self.name, %error, "read failed");
                    return true;
                }
            }
            let header = match parse_header(&buffer.as_slice()[block], self.max_frame_bytes) {
                Ok(header) => header,
                Err((kind, detail)) => {
                    self.rejected(
                        kind,
                        None,
                        format!("{detail}; closing the connection (its framing is lost)"),
                    );
                    return true;
                }
            };
            let frame_bytes = header.frame_length_bytes();
            let rest = 2 * FRAME_HEADER_BLOCK_BYTES..FRAME_HEADER_BLOCK_BYTES + frame_bytes;
            match read_full(&mut self.input, &mut buffer.as_mut_slice()[rest], &stopping) {
                Ok(Filled::Full) => {}
                Ok(Filled::Shutdown) => return false,
                Ok(Filled::CleanEnd) | Ok(Filled::Truncated { .. }) => {
                    self.rejected(
                        RejectKind::Truncated,
                        Some(header),
                        "stream ended inside a frame's pixels".into(),
                    );
                    return true;
                }
                Err(error) => {
                    tracing::warn!(connection = %self.name, %error, "read failed");
                    return true;
                }
            }
            IngestCounters::add(&self.observer.counters.frames_received_total, 1);
            let frame = &buffer.as_slice()[FRAME_HEADER_BLOCK_BYTES..FRAME_HEADER_BLOCK_BYTES + frame_bytes];
            if let Err(error) = check_payload(&header, frame) {
                self.rejected(RejectKind::of_frame_error(&error), Some(header), error.to_string());
                self.give_back(buffer);
                continue;
            }
            if self.items.send(Item::Frame { connection: self.connection, buffer, header }).is_err() {
                return false;
            }
        }
    }

    fn take_buffer(&self) -> Option<AlignedBuf> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            let free = self.free.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match free.recv_timeout(SHUTDOWN_POLL) {
                Ok(buffer) => return Some(buffer),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    fn give_back(&self, buffer: AlignedBuf) {
        let _ = self.free_tx.try_send(buffer);
    }

    fn rejected(&self, kind: RejectKind, header: Option<FrameHeader>, detail: String) {
        let _ = self.items.send(Item::Rejected { connection: self.connection, kind, header, detail });
    }
}

struct Writer {
    connections: Vec<(u64, ConnectionState)>,
    unsynced_frames: Vec<(Admitted, u64)>,
    unsynced_metadata: Vec<(u64, String, u64)>,
    unsynced_bytes: u64,
    free: SyncSender<AlignedBuf>,
}

impl Writer {
    fn run(
        &mut self,
        core: &mut StreamCore,
        items: &Receiver<Item>,
        shutdown: &AtomicBool,
        readers_stop: &AtomicBool,
    ) -> Result<(), String> {
        let mut last_stats = Instant::now();
        loop {
            if shutdown.load(Ordering::Relaxed) {
                readers_stop.store(true, Ordering::Relaxed);
            }
            match items.recv_timeout(SHUTDOWN_POLL) {
                Ok(item) => {
                    self.handle(core, item, shutdown)?;
                    while let Ok(item) = items.try_recv() {
                        self.handle(core, item, shutdown)?;
                        if self.unsynced_bytes >= MAX_GROUP_BYTES {
                            break;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.commit(core)?;
                    return Ok(());
                }
            }
            self.commit(core)?;
            core.poll_deadlines();
            if last_stats.elapsed() >= Duration::from_millis(200) {
                core.publish_ring_stats();
                last_stats = Instant::now();
            }
        }
    }

    fn connection(&mut self, id: u64) -> &mut ConnectionState {
        let index = self.connections.iter().position(|(known, _)| *known == id).unwrap_or_else(|| {
            self.connections.push((id, ConnectionState::new(format!("connection#{id}"))));
            self.connections.len() - 1
        });
        &mut self.connections[index].1
    }

    fn handle(&mut self, core: &mut StreamCore, item: Item, shutdown: &AtomicBool) -> Result<(), String> {
        match item {
            Item::Opened { connection, name } => {
                self.connections.push((connection, ConnectionState::new(name)));
            }
            Item::Closed { connection, bad } => {
                if bad {
                    IngestCounters::add(&core.counters().connections_closed_bad_total, 1);
                }
                self.connections.retain(|(known, _)| *known != connection);
                core.connection_lost();
            }
            Item::Rejected { connection, kind, header, detail } => {
                let name = self.connection(connection).name.clone();
                core.reject(kind, &name, header.as_ref(), detail);
            }
            Item::Frame { connection, buffer, header } => {
                let (admitted, name) = {
                    let state = self.connection(connection);
                    (core.admit(state, &header), state.name.clone())
                };
                if let Some(admitted) = admitted {
                    self.append_frame(core, &name, &buffer, &header, admitted, shutdown)?;
                }
                let _ = self.free.try_send(buffer);
            }
            Item::Metadata(item) => self.append_metadata(core, item, shutdown)?,
        }
        Ok(())
    }

    fn append_metadata(
        &mut self,
        core: &mut StreamCore,
        item: MetadataItem,
        shutdown: &AtomicBool,
    ) -> Result<(), String> {
        IngestCounters::add(&core.counters().metadata_bytes_copied_total, item.record.len() as u64);
        loop {
            match core.ring.append_copy(RecordKind::Metadata, 0, &item.record) {
                Ok(appended) => {
                    self.unsynced_bytes += item.record.len() as u64;
                    self.unsynced_metadata.push((item.exposure_id, item.kind, appended.sequence));
                    return Ok(());
                }
                Err(RingError::WouldBlock { needed_bytes, .. }) if !shutdown.load(Ordering::Relaxed) => {
                    self.commit(core)?;
                    IngestCounters::add(&core.counters().ring_full_waits_total, 1);
                    core.ring.wait_for_space(needed_bytes, core.options.full_retry_interval);
                }
                Err(error @ (RingError::Rejected { .. } | RingError::WouldBlock { .. })) => {
                    let detail = format!("metadata of exposure {}: {error}", item.exposure_id);
                    core.reject(RejectKind::RingFull, &item.connection, None, detail);
                    return Ok(());
                }
                Err(error) => return Err(core.fail(&error)),
            }
        }
    }

    fn append_frame(
        &mut self,
        core: &mut StreamCore,
        connection: &str,
        buffer: &AlignedBuf,
        header: &FrameHeader,
        admitted: Admitted,
        shutdown: &AtomicBool,
    ) -> Result<(), String> {
        let frame_bytes = header.frame_length_bytes();
        let frame = &buffer.as_slice()[FRAME_HEADER_BLOCK_BYTES..FRAME_HEADER_BLOCK_BYTES + frame_bytes];
        loop {
            match core.ring.append(RecordKind::Frame, header.flags, frame, frame_bytes) {
                Ok(_) => {
                    IngestCounters::add(&core.counters().frames_written_in_place_total, 1);
                    self.unsynced_frames.push((admitted, frame_bytes as u64));
                    self.unsynced_bytes += frame_bytes as u64;
                    return Ok(());
                }
                Err(RingError::WouldBlock { needed_bytes, .. }) => {
                    // Make our own records durable first: the drain can only free durable space.
                    self.commit(core)?;
                    IngestCounters::add(&core.counters().ring_full_waits_total, 1);
                    if shutdown.load(Ordering::Relaxed) {
                        core.abandon(admitted);
                        let exposure_id = header.exposure_id.get();
                        tracing::warn!(connection, exposure_id, "{}", crate::core::NOT_WRITTEN_AT_SHUTDOWN);
                        return Ok(());
                    }
                    core.ring.wait_for_space(needed_bytes, core.options.full_retry_interval);
                }
                Err(error @ RingError::Rejected { .. }) => {
                    core.abandon(admitted);
                    core.reject(RejectKind::RingFull, connection, Some(header), error.to_string());
                    return Ok(());
                }
                Err(error) => return Err(core.fail(&error)),
            }
        }
    }

    fn commit(&mut self, core: &mut StreamCore) -> Result<(), String> {
        if self.unsynced_frames.is_empty() && self.unsynced_metadata.is_empty() {
            return Ok(());
        }
        core.ring.commit().map_err(|error| core.fail(&error))?;
        IngestCounters::add(&core.counters().syncs_total, 1);
        self.unsynced_bytes = 0;
        core.frames_durable(self.unsynced_frames.drain(..));
        for (exposure_id, kind, sequence) in self.unsynced_metadata.drain(..) {
            IngestCounters::add(&core.counters().metadata_durable_total, 1);
            core.emit(IngestEvent::MetadataDurable { exposure_id, kind, sequence });
        }
        Ok(())
    }
}
