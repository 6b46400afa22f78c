//! CSC events as JSON lines: [`EventPublisher`] appends every event ([`CscEvent`]) to an events
//! file and broadcasts it to every client of a local Unix socket; [`EventPublisher::spawn_heartbeat`]
//! publishes `heartbeat` every second. A Kafka adapter will later read the same lines (the
//! mapping to topics is in [`crate::csc`]).
//!
//! # Never blocking the caller
//!
//! [`EventPublisher::publish`] takes a short lock, pushes onto a queue of fixed capacity
//! ([`EVENT_QUEUE_CAPACITY`]) and returns; one publishing thread does all the I/O. When the
//! queue is full the oldest queued `heartbeat` is dropped first, then the oldest `logMessage`,
//! then the oldest event of any kind; every drop is counted (`dropped_total`). Subscriber sockets
//! are non-blocking, with a send buffer of [`SUBSCRIBER_SOCKET_BUFFER_BYTES`]: what a subscriber
//! cannot take at once waits in its own buffer of at most [`SUBSCRIBER_PENDING_BYTES_MAX`]
//! bytes; a subscriber that falls further behind, or whose socket fails (it went away), is
//! dropped, counted and logged. At most [`SUBSCRIBERS_MAX`]
//! subscribers are connected at once; more are refused (counted).
//!
//! # What a subscriber sees
//!
//! On connecting, a subscriber first receives the latest line of every state-like topic
//! (`summaryState`, `errorCode`, `softwareVersions`, `configurationApplied`, `simulationMode`,
//! `logLevel`) in the order they were published, as SAL gives late joiners the last value of an
//! event; then every line as it is published. Lines are newline-terminated JSON
//! (`{"topic":...,"private_sndStamp":...,"private_seqNum":...,...}`).
//!
//! # The file
//!
//! Each line is appended with one `write` (no user-space buffering: a line is in the file once
//! `write` returned); the file is `fdatasync`ed at shutdown. It is bounded: past
//! [`EVENTS_FILE_BYTES_MAX`] it is renamed to `<file>.1` (replacing the previous one) and a new
//! file is started.
//!
//! Architecture invariant: the publisher never reads the wall clock itself; `private_sndStamp`
//! comes from the [`Clock`] it was given, read when the event is published.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringbuffer::{Clock, SystemClock};
use serde::Serialize;

use crate::csc::{CscEvent, EventTopic};

/// Events queued for the publishing thread at most; beyond, the oldest heartbeat goes first.
pub const EVENT_QUEUE_CAPACITY: usize = 1024;
/// Subscribers connected at once at most.
pub const SUBSCRIBERS_MAX: usize = 32;
/// Bytes a subscriber may fall behind (beyond its socket buffer) before it is dropped.
pub const SUBSCRIBER_PENDING_BYTES_MAX: usize = 256 * 1024;
/// The kernel send buffer asked for each subscriber socket (Linux doubles it for bookkeeping):
/// caps the kernel memory a stalled subscriber holds, whatever `net.core.wmem_default` is.
pub const SUBSCRIBER_SOCKET_BUFFER_BYTES: usize = 64 * 1024;
/// The events file is rotated (to `<file>.1`) past this size.
pub const EVENTS_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// The events socket's mode: owner and group may connect.
pub const SOCKET_MODE: u32 = 0o660;
/// How long the publishing thread waits for an event before it looks for new subscribers
/// (the longest a new subscriber waits to be accepted).
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Queue-full drops are logged at most this often.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why the publisher could not start.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// A parent directory of the socket or the file could not be created.
    #[error("cannot create the directory {path} (for the events {what}): {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// `socket` or `file`.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The events file could not be opened for appending.
    #[error("cannot open the events file {path} for appending: {source}")]
    OpenFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Something that is not a socket is in the socket's place; it is never removed.
    #[error("{path} exists and is not a socket; remove it or choose another events.socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Another process listens on the socket (another summit-node?).
    #[error("another process is listening on {path}; stop it or choose another events.socket")]
    SocketInUse {
        /// The path.
        path: PathBuf,
    },
    /// Binding, configuring or replacing the socket failed.
    #[error("cannot listen on the events socket {path}: {source}")]
    Socket {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The publishing thread could not be started.
    #[error("cannot start the events thread: {0}")]
    Spawn(std::io::Error),
}

/// Where events go and the publisher's limits.
#[derive(Debug, Clone)]
pub struct EventOptions {
    /// The Unix socket subscribers connect to (created with mode [`SOCKET_MODE`]).
    pub socket_path: PathBuf,
    /// The file every event is appended to (its directory is created).
    pub file_path: PathBuf,
    /// Queue capacity (default [`EVENT_QUEUE_CAPACITY`]).
    pub queue_capacity: usize,
    /// File size that triggers rotation (default [`EVENTS_FILE_BYTES_MAX`]).
    pub file_bytes_max: u64,
    /// Subscriber backlog that gets it dropped (default [`SUBSCRIBER_PENDING_BYTES_MAX`]).
    pub subscriber_pending_bytes_max: usize,
}

impl EventOptions {
    /// The default limits for these paths.
    pub fn new(socket_path: &Path, file_path: &Path) -> EventOptions {
        EventOptions {
            socket_path: socket_path.to_owned(),
            file_path: file_path.to_owned(),
            queue_capacity: EVENT_QUEUE_CAPACITY,
            file_bytes_max: EVENTS_FILE_BYTES_MAX,
            subscriber_pending_bytes_max: SUBSCRIBER_PENDING_BYTES_MAX,
        }
    }
}

/// The publisher's counters (a snapshot), for the console and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EventCounters {
    /// Events accepted by `publish` (queued).
    pub published_total: u64,
    /// Lines appended to the events file.
    pub written_total: u64,
    /// Events dropped because the queue was full (or published after shutdown).
    pub dropped_total: u64,
    /// Of `dropped_total`, heartbeats.
    pub heartbeats_dropped_total: u64,
    /// Subscribers connected now.
    pub subscribers_connected: u64,
    /// Subscribers accepted since start.
    pub subscribers_accepted_total: u64,
    /// Subscribers dropped because they fell behind or their socket failed.
    pub subscribers_dropped_total: u64,
    /// Connections refused because [`SUBSCRIBERS_MAX`] were connected.
    pub subscribers_refused_total: u64,
    /// Failed writes to the events file (each logged).
    pub file_errors_total: u64,
}

#[derive(Default)]
struct Counters {
    published_total: AtomicU64,
    written_total: AtomicU64,
    dropped_total: AtomicU64,
    heartbeats_dropped_total: AtomicU64,
    subscribers_connected: AtomicU64,
    subscribers_accepted_total: AtomicU64,
    subscribers_dropped_total: AtomicU64,
    subscribers_refused_total: AtomicU64,
    file_errors_total: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> EventCounters {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        EventCounters {
            published_total: get(&self.published_total),
            written_total: get(&self.written_total),
            dropped_total: get(&self.dropped_total),
            heartbeats_dropped_total: get(&self.heartbeats_dropped_total),
            subscribers_connected: get(&self.subscribers_connected),
            subscribers_accepted_total: get(&self.subscribers_accepted_total),
            subscribers_dropped_total: get(&self.subscribers_dropped_total),
            subscribers_refused_total: get(&self.subscribers_refused_total),
            file_errors_total: get(&self.file_errors_total),
        }
    }
}

/// An event waiting for the publishing thread, stamped when it was published.
struct Queued {
    event: CscEvent,
    published_unix_ns: u64,
}

/// What `publish` and the publishing thread share.
struct Shared {
    queue: Mutex<VecDeque<Queued>>,
    queue_capacity: usize,
    wake: Condvar,
    stop: AtomicBool,
    counters: Counters,
    clock: Arc<dyn Clock>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn publish(&self, event: CscEvent) {
        let published_unix_ns = self.clock.now_ns();
        let counters = &self.counters;
        let mut queue = lock(&self.queue);
        // Checked under the queue's lock, which the publishing thread holds when it takes its
        // last batch: an event is either in that batch or counted as dropped, never lost.
        if self.stop.load(Ordering::SeqCst) {
            counters.dropped_total.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if queue.len() >= self.queue_capacity {
            let victim = drop_victim(&queue);
            let dropped = queue.remove(victim).expect("the victim is an index of the full queue");
            counters.dropped_total.fetch_add(1, Ordering::Relaxed);
            if dropped.event.topic() == EventTopic::Heartbeat {
                counters.heartbeats_dropped_total.fetch_add(1, Ordering::Relaxed);
            }
        }
        debug_assert!(queue.len() < self.queue_capacity);
        queue.push_back(Queued { event, published_unix_ns });
        counters.published_total.fetch_add(1, Ordering::Relaxed);
        drop(queue);
        self.wake.notify_one();
    }
}

/// Which queued event a full queue gives up: the oldest heartbeat, else the oldest log message,
/// else the oldest event.
fn drop_victim(queue: &VecDeque<Queued>) -> usize {
    let oldest_of = |topic: EventTopic| queue.iter().position(|queued| queued.event.topic() == topic);
    oldest_of(EventTopic::Heartbeat).or_else(|| oldest_of(EventTopic::LogMessage)).unwrap_or(0)
}

/// Publishes CSC events to the events file and the events socket (see the module docs).
pub struct EventPublisher {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    socket_path: PathBuf,
    file_path: PathBuf,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EventPublisher")
            .field("socket_path", &self.socket_path)
            .field("file_path", &self.file_path)
            .field("counters", &self.counters())
            .finish()
    }
}

impl EventPublisher {
    /// Starts publishing to `socket_path` and `file_path` with the default limits and the
    /// system clock.
    pub fn start(socket_path: &Path, file_path: &Path) -> Result<EventPublisher, EventError> {
        EventPublisher::start_with(EventOptions::new(socket_path, file_path), Arc::new(SystemClock))
    }

    /// Starts publishing: creates the file's and the socket's directories, opens the file,
    /// listens on the socket (replacing a stale socket file left by a previous run, never a live
    /// one or anything that is not a socket), and starts the publishing thread.
    pub fn start_with(options: EventOptions, clock: Arc<dyn Clock>) -> Result<EventPublisher, EventError> {
        assert!(options.queue_capacity > 0, "the event queue needs room for one event");
        let file = open_events_file(&options.file_path)?;
        let listener = listen(&options.socket_path)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::with_capacity(options.queue_capacity)),
            queue_capacity: options.queue_capacity,
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            clock,
        });
        let worker = Worker::new(&options, Arc::clone(&shared), listener, file);
        let thread = std::thread::Builder::new()
            .name("csc-events".into())
            .spawn(move || worker.run())
            .map_err(EventError::Spawn)?;
        tracing::info!(
            socket = %options.socket_path.display(),
            file = %options.file_path.display(),
            "publishing CSC events"
        );
        Ok(EventPublisher {
            shared,
            thread: Mutex::new(Some(thread)),
            socket_path: options.socket_path,
            file_path: options.file_path,
        })
    }

    /// Queues an event for the file and the subscribers, stamped now. Never blocks on I/O: when
    /// the queue is full an older event is dropped (and counted).
    pub fn publish(&self, event: CscEvent) {
        self.shared.publish(event);
    }

    /// Publishes `heartbeat` every `interval` (one second for a CSC) on its own thread, until
    /// `stop` is set or the publisher shuts down. Ticks are scheduled from the start time, so
    /// they do not drift.
    pub fn spawn_heartbeat(
        &self,
        interval: Duration,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<JoinHandle<()>> {
        assert!(!interval.is_zero(), "a heartbeat interval of zero");
        let shared = Arc::clone(&self.shared);
        std::thread::Builder::new().name("csc-heartbeat".into()).spawn(move || {
            let start = Instant::now();
            let mut ticks: u32 = 0;
            let stopped = || stop.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst);
            while !stopped() {
                ticks = ticks.saturating_add(1);
                let deadline = start + interval.saturating_mul(ticks);
                loop {
                    let now = Instant::now();
                    if now >= deadline || stopped() {
                        break;
                    }
                    // Short naps, so a stop is seen within 50 ms.
                    std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
                }
                if !stopped() {
                    shared.publish(CscEvent::Heartbeat);
                }
            }
        })
    }

    /// The counters now.
    pub fn counters(&self) -> EventCounters {
        self.shared.counters.snapshot()
    }

    /// The events socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The events file.
    pub fn file_path(&self) -> &Path {
        &self.file_path
    }

    /// Publishes what is queued, syncs the file, disconnects the subscribers, removes the socket
    /// and stops the thread. Events published afterwards are dropped (counted). Idempotent;
    /// also done on drop.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the CSC events thread panicked");
            }
        }
    }
}

impl Drop for EventPublisher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn create_parent(path: &Path, what: &'static str) -> Result<(), EventError> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => std::fs::create_dir_all(parent)
            .map_err(|source| EventError::Directory { path: parent.to_owned(), what, source }),
        _ => Ok(()),
    }
}

fn open_events_file(path: &Path) -> Result<File, EventError> {
    create_parent(path, "file")?;
    open_events_file_io(path).map_err(|source| EventError::OpenFile { path: path.to_owned(), source })
}

/// Listens on `path`, replacing a stale socket (nobody listening) but never a live one or
/// anything else.
fn listen(path: &Path) -> Result<UnixListener, EventError> {
    create_parent(path, "socket")?;
    let socket_error = |source| EventError::Socket { path: path.to_owned(), source };
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if !metadata.file_type().is_socket() => {
            return Err(EventError::NotASocket { path: path.to_owned() })
        }
        Ok(_) => {
            if UnixStream::connect(path).is_ok() {
                return Err(EventError::SocketInUse { path: path.to_owned() });
            }
            std::fs::remove_file(path).map_err(socket_error)?;
        }
        Err(error) if error.kind() == ErrorKind::NotFound => {}
        Err(error) => return Err(socket_error(error)),
    }
    let listener = UnixListener::bind(path).map_err(socket_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(socket_error)?;
    listener.set_nonblocking(true).map_err(socket_error)?;
    Ok(listener)
}

/// Why a subscriber was dropped.
enum Lagging {
    /// It did not read fast enough: its backlog passed the limit.
    Slow,
    /// Its socket failed (it disconnected).
    Failed(std::io::Error),
}

struct Subscriber {
    stream: UnixStream,
    /// Bytes of lines not yet taken by the socket (at most the limit).
    pending: Vec<u8>,
    id: u64,
}

impl Subscriber {
    /// Writes what is pending, then `line`; keeps what the socket does not take.
    fn send(&mut self, line: &[u8], pending_bytes_max: usize) -> Result<(), Lagging> {
        self.flush()?;
        let written = if self.pending.is_empty() { write_some(&mut self.stream, line)? } else { 0 };
        let rest = &line[written..];
        if self.pending.len() + rest.len() > pending_bytes_max {
            return Err(Lagging::Slow);
        }
        self.pending.extend_from_slice(rest);
        Ok(())
    }

    /// Writes as much of the pending bytes as the socket takes.
    fn flush(&mut self) -> Result<(), Lagging> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = write_some(&mut self.stream, &self.pending)?;
        self.pending.drain(..written);
        Ok(())
    }
}

/// One non-blocking write: the bytes taken (0 when the socket is full).
fn write_some(stream: &mut UnixStream, bytes: &[u8]) -> Result<usize, Lagging> {
    let mut written = 0;
    while written < bytes.len() {
        match stream.write(&bytes[written..]) {
            Ok(0) => return Err(Lagging::Failed(ErrorKind::WriteZero.into())),
            Ok(count) => written += count,
            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(Lagging::Failed(error)),
        }
    }
    Ok(written)
}

/// The publishing thread's state.
struct Worker {
    shared: Arc<Shared>,
    listener: UnixListener,
    socket_path: PathBuf,
    file: File,
    file_path: PathBuf,
    file_bytes: u64,
    file_bytes_max: u64,
    subscribers: Vec<Subscriber>,
    subscriber_pending_bytes_max: usize,
    next_subscriber_id: u64,
    /// `private_seqNum` of the last line of each topic.
    seq_nums: [u64; EventTopic::ALL.len()],
    /// The latest line of each latched topic, with its publication order, for late joiners.
    latched: [Option<(u64, Vec<u8>)>; EventTopic::ALL.len()],
    lines_total: u64,
    /// Swapped with the shared queue, so events are written without holding its lock.
    batch: VecDeque<Queued>,
    line: Vec<u8>,
    drops_logged: u64,
    drops_logged_at: Option<Instant>,
    /// Consecutive failed `accept`s.
    accept_errors: u64,
}

impl Worker {
    fn new(options: &EventOptions, shared: Arc<Shared>, listener: UnixListener, file: File) -> Worker {
        let file_bytes = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
        Worker {
            batch: VecDeque::with_capacity(options.queue_capacity),
            shared,
            listener,
            socket_path: options.socket_path.clone(),
            file,
            file_path: options.file_path.clone(),
            file_bytes,
            file_bytes_max: options.file_bytes_max,
            subscribers: Vec::with_capacity(SUBSCRIBERS_MAX),
            subscriber_pending_bytes_max: options.subscriber_pending_bytes_max,
            next_subscriber_id: 1,
            seq_nums: [0; EventTopic::ALL.len()],
            latched: Default::default(),
            lines_total: 0,
            line: Vec::with_capacity(4096),
            drops_logged: 0,
            drops_logged_at: None,
            accept_errors: 0,
        }
    }

    fn run(mut self) {
        loop {
            self.accept_subscribers();
            let stopping = self.take_batch();
            while let Some(queued) = self.batch.pop_front() {
                self.write_event(&queued);
            }
            self.flush_subscribers();
            self.log_drops();
            if stopping {
                break;
            }
        }
        self.finish();
    }

    /// Waits up to the poll interval for events and takes them all. Returns `true` when told to
    /// stop (with everything queued before taken).
    fn take_batch(&mut self) -> bool {
        let mut queue = lock(&self.shared.queue);
        if queue.is_empty() && !self.shared.stop.load(Ordering::SeqCst) {
            queue = self.shared.wake.wait_timeout(queue, POLL_INTERVAL).unwrap_or_else(|e| e.into_inner()).0;
        }
        std::mem::swap(&mut *queue, &mut self.batch);
        self.shared.stop.load(Ordering::SeqCst) && queue.is_empty()
    }

    fn accept_subscribers(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => {
                    self.accept_errors = 0;
                    stream
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => {
                    // Out of descriptors, say: this repeats every poll, so log the first of
                    // a run of failures and every 1000th.
                    self.accept_errors += 1;
                    if self.accept_errors == 1 || self.accept_errors.is_multiple_of(1000) {
                        let errors = self.accept_errors;
                        tracing::warn!(%error, errors, "accepting an events subscriber");
                    }
                    return;
                }
            };
            let counters = &self.shared.counters;
            if self.subscribers.len() >= SUBSCRIBERS_MAX {
                counters.subscribers_refused_total.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(limit = SUBSCRIBERS_MAX, "events subscriber refused: too many");
                continue;
            }
            if let Err(error) = stream.set_nonblocking(true) {
                tracing::warn!(%error, "events subscriber refused: cannot make its socket non-blocking");
                continue;
            }
            if let Err(error) =
                rustix::net::sockopt::set_socket_send_buffer_size(&stream, SUBSCRIBER_SOCKET_BUFFER_BYTES)
            {
                // Not fatal: the subscriber only gets the system's default buffer.
                tracing::debug!(%error, "cannot set an events subscriber's send buffer");
            }
            let mut subscriber = Subscriber { stream, pending: Vec::new(), id: self.next_subscriber_id };
            self.next_subscriber_id += 1;
            counters.subscribers_accepted_total.fetch_add(1, Ordering::Relaxed);
            if self.replay_latched(&mut subscriber) {
                tracing::debug!(subscriber = subscriber.id, "events subscriber connected");
                self.subscribers.push(subscriber);
            }
            counters.subscribers_connected.store(self.subscribers.len() as u64, Ordering::Relaxed);
        }
    }

    /// Sends a new subscriber the latest line of each latched topic, oldest first.
    fn replay_latched(&self, subscriber: &mut Subscriber) -> bool {
        let mut latched: heapless::Vec<&(u64, Vec<u8>), { EventTopic::ALL.len() }> =
            self.latched.iter().flatten().collect();
        latched.sort_unstable_by_key(|(order, _)| *order);
        for (_, line) in latched {
            if let Err(lagging) = subscriber.send(line, self.subscriber_pending_bytes_max) {
                self.count_dropped_subscriber(subscriber.id, &lagging);
                return false;
            }
        }
        true
    }

    fn write_event(&mut self, queued: &Queued) {
        let topic = queued.event.topic();
        let seq_num = &mut self.seq_nums[topic.index()];
        *seq_num += 1;
        queued.event.write_json_line(*seq_num, queued.published_unix_ns, &mut self.line);
        self.line.push(b'\n');
        self.lines_total += 1;
        self.append_to_file();
        if topic.is_latched() {
            let slot = &mut self.latched[topic.index()];
            let mut line = slot.take().map(|(_, line)| line).unwrap_or_default();
            line.clear();
            line.extend_from_slice(&self.line);
            *slot = Some((self.lines_total, line));
        }
        let line = std::mem::take(&mut self.line);
        self.broadcast(&line);
        self.line = line;
    }

    fn append_to_file(&mut self) {
        if self.file_bytes >= self.file_bytes_max {
            self.rotate_file();
        }
        let counters = &self.shared.counters;
        match self.file.write_all(&self.line) {
            Ok(()) => {
                self.file_bytes += self.line.len() as u64;
                counters.written_total.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                let errors = counters.file_errors_total.fetch_add(1, Ordering::Relaxed) + 1;
                // Every error would flood the log when the disk is full: the first, then every 1000th.
                if errors == 1 || errors.is_multiple_of(1000) {
                    tracing::error!(file = %self.file_path.display(), %error, errors, "writing an event");
                }
            }
        }
    }

    /// `<file>` becomes `<file>.1` (replacing the older one) and a new `<file>` starts.
    fn rotate_file(&mut self) {
        let mut rotated = self.file_path.clone().into_os_string();
        rotated.push(".1");
        let rotated = PathBuf::from(rotated);
        let _ = self.file.sync_data();
        let reopened =
            std::fs::rename(&self.file_path, &rotated).and_then(|()| open_events_file_io(&self.file_path));
        match reopened {
            Ok(file) => {
                self.file = file;
                self.file_bytes = 0;
                let file = self.file_path.display();
                tracing::info!(%file, rotated = %rotated.display(), "events file rotated");
            }
            Err(error) => {
                // Keep appending to the current file rather than lose events.
                self.file_bytes = 0;
                tracing::error!(file = %self.file_path.display(), %error, "rotating the events file");
            }
        }
    }

    fn broadcast(&mut self, line: &[u8]) {
        let pending_bytes_max = self.subscriber_pending_bytes_max;
        let mut index = 0;
        while index < self.subscribers.len() {
            match self.subscribers[index].send(line, pending_bytes_max) {
                Ok(()) => index += 1,
                Err(lagging) => {
                    let subscriber = self.subscribers.swap_remove(index);
                    self.count_dropped_subscriber(subscriber.id, &lagging);
                }
            }
        }
        self.shared.counters.subscribers_connected.store(self.subscribers.len() as u64, Ordering::Relaxed);
    }

    fn flush_subscribers(&mut self) {
        let mut index = 0;
        while index < self.subscribers.len() {
            match self.subscribers[index].flush() {
                Ok(()) => index += 1,
                Err(lagging) => {
                    let subscriber = self.subscribers.swap_remove(index);
                    self.count_dropped_subscriber(subscriber.id, &lagging);
                }
            }
        }
        self.shared.counters.subscribers_connected.store(self.subscribers.len() as u64, Ordering::Relaxed);
    }

    fn count_dropped_subscriber(&self, id: u64, lagging: &Lagging) {
        self.shared.counters.subscribers_dropped_total.fetch_add(1, Ordering::Relaxed);
        match lagging {
            Lagging::Slow => {
                let limit_bytes = self.subscriber_pending_bytes_max;
                tracing::warn!(subscriber = id, limit_bytes, "events subscriber dropped: not reading");
            }
            Lagging::Failed(error) => {
                tracing::info!(subscriber = id, %error, "events subscriber gone");
            }
        }
    }

    /// Logs queue-full drops, at most every [`DROP_LOG_INTERVAL`].
    fn log_drops(&mut self) {
        let dropped_total = self.shared.counters.dropped_total.load(Ordering::Relaxed);
        if dropped_total == self.drops_logged {
            return;
        }
        let due = self.drops_logged_at.is_none_or(|at| at.elapsed() >= DROP_LOG_INTERVAL);
        if due {
            let dropped = dropped_total - self.drops_logged;
            tracing::warn!(dropped, dropped_total, "CSC event queue full: events dropped");
            self.drops_logged = dropped_total;
            self.drops_logged_at = Some(Instant::now());
        }
    }

    fn finish(mut self) {
        self.flush_subscribers();
        if let Err(error) = self.file.sync_data() {
            tracing::error!(file = %self.file_path.display(), %error, "syncing the events file");
        }
        self.subscribers.clear();
        self.shared.counters.subscribers_connected.store(0, Ordering::Relaxed);
        if let Err(error) = std::fs::remove_file(&self.socket_path) {
            tracing::warn!(socket = %self.socket_path.display(), %error, "removing the events socket");
        }
        tracing::info!(lines = self.lines_total, "CSC events publisher stopped");
    }
}

fn open_events_file_io(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringbuffer::ManualClock;

    use crate::csc::SummaryState;

    fn shared_without_worker(queue_capacity: usize) -> Shared {
        Shared {
            queue: Mutex::new(VecDeque::with_capacity(queue_capacity)),
            queue_capacity,
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            clock: Arc::new(ManualClock::new(1)),
        }
    }

    fn queued_topics(shared: &Shared) -> Vec<EventTopic> {
        lock(&shared.queue).iter().map(|queued| queued.event.topic()).collect()
    }

    fn log_message(message: &str) -> CscEvent {
        CscEvent::LogMessage {
            name: "test".into(),
            level: 30,
            message: message.into(),
            traceback: String::new(),
            file_path: String::new(),
            function_name: String::new(),
            line_number: 0,
            process: 0,
        }
    }

    #[test]
    fn full_queue_gives_up_the_oldest_heartbeat_then_log_message_then_oldest_event() {
        let shared = shared_without_worker(3);
        shared.publish(CscEvent::summary_state(SummaryState::Standby));
        shared.publish(log_message("first"));
        shared.publish(CscEvent::Heartbeat);
        shared.publish(CscEvent::summary_state(SummaryState::Disabled));
        use EventTopic::{LogMessage, SummaryState as State};
        assert_eq!(queued_topics(&shared), [State, LogMessage, State], "the heartbeat went first");
        assert_eq!(shared.counters.snapshot().heartbeats_dropped_total, 1);

        shared.publish(CscEvent::summary_state(SummaryState::Enabled));
        assert_eq!(queued_topics(&shared), [State, State, State], "then the log message");

        shared.publish(CscEvent::summary_state(SummaryState::Disabled));
        let codes: Vec<CscEvent> = lock(&shared.queue).iter().map(|queued| queued.event.clone()).collect();
        let expected = [1, 2, 1].map(|code| CscEvent::SummaryState { summary_state: code });
        assert_eq!(codes, expected, "then the oldest event (STANDBY)");
        let counters = shared.counters.snapshot();
        assert_eq!(counters.dropped_total, 3);
        assert_eq!(counters.published_total, 6);
    }
}
