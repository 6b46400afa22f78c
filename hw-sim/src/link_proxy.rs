//! TCP link fault proxy between summit and base (issue 3 item 9, library part), in the manner of
//! Toxiproxy: a [`LinkProxy`] listens on a local address, forwards every accepted connection to
//! one upstream address, and lets a test cut, black-hole, slow down or delay the link through a
//! cheaply cloneable [`LinkControl`].
//!
//! What each fault looks like to the two ends:
//!
//! | state | existing connections | new connections |
//! |-------|----------------------|-----------------|
//! | [`LinkState::Up`] | bytes forwarded (after the latency, within the bandwidth limit) | connected upstream |
//! | [`LinkState::Down`]`(`[`CutMode::Reset`]`)` | both sockets shut down in both directions | accepted then closed at once (refused in effect) |
//! | [`LinkState::Down`]`(`[`CutMode::BlackHole`]`)` | bytes read and silently dropped; sockets stay open | accepted and held open, never forwarded |
//!
//! [`LinkControl::restore`] brings the link back up for new connections and for black-holed
//! existing ones; connections cut by a reset stay closed and connections held while black-holed
//! are closed. A [`FlapSchedule`] applies a timed list of states from a background thread.
//!
//! Limits: at most [`MAX_CONNECTIONS`] connections forwarded or held at once (more are closed on
//! accept and counted as resets); every thread checks the stop flag at least every
//! [`POLL_INTERVAL`], so dropping the proxy joins all its threads within a few polls plus
//! [`CONNECT_TIMEOUT`]. A forwarding write that makes no progress for [`WRITE_STALL_LIMIT`]
//! closes its connection. Traffic is plain `std::net`; the proxy knows nothing of the protocol.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Most connections forwarded or held open at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 64;
/// Most steps in one [`FlapSchedule`].
pub const MAX_SCHEDULE_STEPS: usize = 1024;
/// Longest any proxy thread goes without checking whether the proxy was dropped.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Time allowed to connect to the upstream address before the client connection is closed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A forwarding write that makes no progress for this long closes its connection.
pub const WRITE_STALL_LIMIT: Duration = Duration::from_secs(30);
/// Largest chunk read, delayed and forwarded at once.
const CHUNK_SIZE_BYTES: usize = 16 * 1024;

/// How a cut link fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// Existing connections are shut down; new ones are accepted then closed immediately.
    Reset,
    /// Bytes are silently dropped and sockets stay open; new connections are never forwarded.
    BlackHole,
}

/// State of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Bytes flow (subject to latency and bandwidth limit).
    Up,
    /// The link is cut in the given way.
    Down(CutMode),
}

/// A timed list of link states, each applied at its offset from the start of
/// [`LinkProxy::run_schedule`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlapSchedule {
    /// `(offset from start, state)` pairs, offsets non-decreasing, at most [`MAX_SCHEDULE_STEPS`].
    pub steps: Vec<(Duration, LinkState)>,
}

impl FlapSchedule {
    /// A schedule from `(offset, state)` pairs.
    ///
    /// # Panics
    /// If offsets decrease or there are more than [`MAX_SCHEDULE_STEPS`] steps (programmer errors).
    pub fn new(steps: Vec<(Duration, LinkState)>) -> FlapSchedule {
        assert!(steps.len() <= MAX_SCHEDULE_STEPS, "flap schedule has {} steps", steps.len());
        assert!(
            steps.windows(2).all(|pair| pair[0].0 <= pair[1].0),
            "flap schedule offsets must not decrease"
        );
        FlapSchedule { steps }
    }
}

/// Settings changed through [`LinkControl`].
#[derive(Debug)]
struct Settings {
    state: LinkState,
    bandwidth_limit_bytes_per_second: Option<u64>,
    latency: Duration,
}

/// Sockets of one forwarded connection, kept so a reset can shut them down.
struct Connection {
    id: u64,
    client: TcpStream,
    upstream: TcpStream,
    /// Forwarding threads (0 to 2) still running for this connection.
    directions_running: u8,
}

struct Shared {
    settings: Mutex<Settings>,
    stopping: AtomicBool,
    connections: Mutex<Vec<Connection>>,
    /// Client sockets accepted while black-holed, held open until restore or drop.
    held: Mutex<Vec<TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_connection_id: AtomicU64,
    bytes_forwarded_total: AtomicU64,
    connections_total: AtomicU64,
    connections_reset_total: AtomicU64,
}

/// Locks a mutex, recovering the data if a thread panicked while holding it (the data here is
/// always left consistent).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    fn state(&self) -> LinkState {
        lock(&self.settings).state
    }

    /// Sleeps for `duration` in [`POLL_INTERVAL`] steps; false if the proxy is stopping.
    fn sleep_while_running(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        loop {
            if self.stopping() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            thread::sleep((deadline - now).min(POLL_INTERVAL));
        }
    }

    fn spawn(self: &Arc<Self>, name: &str, body: impl FnOnce(Arc<Shared>) + Send + 'static) {
        let shared = Arc::clone(self);
        let spawned = thread::Builder::new().name(name.to_owned()).spawn(move || body(shared));
        let mut threads = lock(&self.threads);
        threads.retain(|handle| !handle.is_finished());
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(error) => tracing::error!(thread = name, %error, "link proxy cannot spawn a thread"),
        }
    }

    /// Shuts down connection `id` if still registered; returns how many were shut down (0 or 1).
    fn shut_down_connection(&self, id: u64) -> u64 {
        let mut connections = lock(&self.connections);
        let Some(index) = connections.iter().position(|connection| connection.id == id) else {
            return 0;
        };
        let connection = connections.swap_remove(index);
        let _ = connection.client.shutdown(Shutdown::Both);
        let _ = connection.upstream.shutdown(Shutdown::Both);
        1
    }

    fn shut_down_all_connections(&self) -> u64 {
        let connections = std::mem::take(&mut *lock(&self.connections));
        for connection in &connections {
            let _ = connection.client.shutdown(Shutdown::Both);
            let _ = connection.upstream.shutdown(Shutdown::Both);
        }
        connections.len() as u64
    }
}

/// Thread-safe, cheaply cloneable handle that changes the link and reads its counters.
#[derive(Clone)]
pub struct LinkControl {
    shared: Arc<Shared>,
}

impl LinkControl {
    /// Cuts the link: see the table in the module docs.
    pub fn cut(&self, mode: CutMode) {
        self.apply(LinkState::Down(mode));
    }

    /// Brings the link up; connections held while black-holed are closed.
    pub fn restore(&self) {
        self.apply(LinkState::Up);
    }

    /// Sets the link state (what [`cut`](Self::cut), [`restore`](Self::restore) and schedules call).
    pub fn apply(&self, state: LinkState) {
        let previous = std::mem::replace(&mut lock(&self.shared.settings).state, state);
        if previous != state {
            tracing::info!(from = ?previous, to = ?state, "link proxy state changed");
        }
        match state {
            LinkState::Up => lock(&self.shared.held).clear(),
            LinkState::Down(CutMode::BlackHole) => {}
            LinkState::Down(CutMode::Reset) => {
                lock(&self.shared.held).clear();
                let reset_count = self.shared.shut_down_all_connections();
                self.shared.connections_reset_total.fetch_add(reset_count, Ordering::Relaxed);
            }
        }
    }

    /// Current link state.
    pub fn state(&self) -> LinkState {
        self.shared.state()
    }

    /// Limits each direction of each connection to `bytes_per_second` (token bucket holding
    /// 100 ms worth of bytes); `None` removes the limit.
    ///
    /// # Panics
    /// If the limit is zero (use [`cut`](Self::cut) to stop traffic).
    pub fn set_bandwidth_limit(&self, bytes_per_second: Option<u64>) {
        assert_ne!(bytes_per_second, Some(0), "bandwidth limit must be positive");
        tracing::info!(?bytes_per_second, "link proxy bandwidth limit set");
        lock(&self.shared.settings).bandwidth_limit_bytes_per_second = bytes_per_second;
    }

    /// Delays every forwarded chunk (each read of up to 16 KiB) by `latency` in each direction.
    pub fn set_latency(&self, latency: Duration) {
        tracing::info!(?latency, "link proxy latency set");
        lock(&self.shared.settings).latency = latency;
    }

    /// Bytes written to either end since start.
    pub fn bytes_forwarded_total(&self) -> u64 {
        self.shared.bytes_forwarded_total.load(Ordering::Relaxed)
    }

    /// Connections accepted since start.
    pub fn connections_total(&self) -> u64 {
        self.shared.connections_total.load(Ordering::Relaxed)
    }

    /// Connections shut down by a reset cut or closed on accept (reset cut or too many).
    pub fn connections_reset_total(&self) -> u64 {
        self.shared.connections_reset_total.load(Ordering::Relaxed)
    }
}

/// A running proxy; dropping it closes every socket and joins every thread.
pub struct LinkProxy {
    local_addr: SocketAddr,
    control: LinkControl,
    accept_thread: Option<JoinHandle<()>>,
}

impl LinkProxy {
    /// Listens on `listen` (use port 0 for an ephemeral port) and forwards to `upstream`.
    pub fn start(listen: SocketAddr, upstream: SocketAddr) -> io::Result<LinkProxy> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            settings: Mutex::new(Settings {
                state: LinkState::Up,
                bandwidth_limit_bytes_per_second: None,
                latency: Duration::ZERO,
            }),
            stopping: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            next_connection_id: AtomicU64::new(0),
            bytes_forwarded_total: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_reset_total: AtomicU64::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name("link-proxy-accept".to_owned())
            .spawn(move || accept_loop(&accept_shared, &listener, upstream))?;
        Ok(LinkProxy { local_addr, control: LinkControl { shared }, accept_thread: Some(accept_thread) })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that changes the link and reads its counters.
    pub fn control(&self) -> LinkControl {
        self.control.clone()
    }

    /// Applies `schedule` from a background thread, starting now; the thread stops early when
    /// the proxy is dropped.
    pub fn run_schedule(&self, schedule: FlapSchedule) {
        let control = self.control.clone();
        self.control.shared.spawn("link-proxy-schedule", move |shared| {
            let start = Instant::now();
            for (offset, state) in schedule.steps {
                let wait = (start + offset).saturating_duration_since(Instant::now());
                if !shared.sleep_while_running(wait) {
                    return;
                }
                control.apply(state);
            }
        });
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        let shared = &self.control.shared;
        shared.stopping.store(true, Ordering::Relaxed);
        if let Some(handle) = self.accept_thread.take() {
            let _ = handle.join();
        }
        shared.shut_down_all_connections();
        lock(&shared.held).clear();
        let threads = std::mem::take(&mut *lock(&shared.threads));
        for handle in threads {
            let _ = handle.join();
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener, upstream: SocketAddr) {
    while !shared.stopping() {
        match listener.accept() {
            Ok((client, _)) => {
                shared.connections_total.fetch_add(1, Ordering::Relaxed);
                admit(shared, client, upstream);
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => thread::sleep(POLL_INTERVAL),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::warn!(listen = ?listener.local_addr(), %error, "link proxy accept failed");
                thread::sleep(POLL_INTERVAL);
            }
        }
    }
}

/// Decides what happens to a newly accepted client connection.
fn admit(shared: &Arc<Shared>, client: TcpStream, upstream: SocketAddr) {
    let open_count = lock(&shared.connections).len() + lock(&shared.held).len();
    let state = shared.state();
    if state == LinkState::Down(CutMode::Reset) || open_count >= MAX_CONNECTIONS {
        shared.connections_reset_total.fetch_add(1, Ordering::Relaxed);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    if state == LinkState::Down(CutMode::BlackHole) {
        lock(&shared.held).push(client);
        return;
    }
    shared.spawn("link-proxy-connect", move |shared| {
        if let Err(error) = connect_and_forward(&shared, client, upstream) {
            tracing::warn!(%upstream, %error, "link proxy cannot forward a connection");
        }
    });
}

fn connect_and_forward(shared: &Arc<Shared>, client: TcpStream, upstream_addr: SocketAddr) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let upstream = TcpStream::connect_timeout(&upstream_addr, CONNECT_TIMEOUT)?;
    for stream in [&client, &upstream] {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(POLL_INTERVAL))?;
        stream.set_write_timeout(Some(POLL_INTERVAL))?;
    }
    let id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
    let connection = Connection {
        id,
        client: client.try_clone()?,
        upstream: upstream.try_clone()?,
        directions_running: 2,
    };
    lock(&shared.connections).push(connection);
    // A reset cut between accept and registration would otherwise miss this connection.
    if shared.state() == LinkState::Down(CutMode::Reset) {
        shared.connections_reset_total.fetch_add(shared.shut_down_connection(id), Ordering::Relaxed);
    }
    let (client_reader, upstream_reader) = (client.try_clone()?, upstream.try_clone()?);
    shared.spawn("link-proxy-to-upstream", move |shared| forward(&shared, id, client_reader, upstream));
    shared.spawn("link-proxy-to-client", move |shared| forward(&shared, id, upstream_reader, client));
    Ok(())
}

/// Copies `source` to `destination` until EOF, error, reset or stop, then closes its half.
fn forward(shared: &Shared, id: u64, mut source: TcpStream, mut destination: TcpStream) {
    let mut buffer = vec![0_u8; CHUNK_SIZE_BYTES];
    let mut bucket = TokenBucket::new();
    let finished_cleanly = loop {
        if shared.stopping() {
            break false;
        }
        let read_size = match source.read(&mut buffer) {
            Ok(0) => break true,
            Ok(read_size) => read_size,
            Err(error) if is_timeout(&error) || error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break false,
        };
        let (state, latency) = {
            let settings = lock(&shared.settings);
            (settings.state, settings.latency)
        };
        match state {
            LinkState::Down(CutMode::BlackHole) => continue,
            LinkState::Down(CutMode::Reset) => break false,
            LinkState::Up => {}
        }
        if !shared.sleep_while_running(latency) {
            break false;
        }
        if send_limited(shared, &mut bucket, &mut destination, &buffer[..read_size]).is_err() {
            break false;
        }
    };
    if finished_cleanly {
        let _ = destination.shutdown(Shutdown::Write);
    } else {
        let _ = source.shutdown(Shutdown::Both);
        let _ = destination.shutdown(Shutdown::Both);
    }
    // The second direction to finish removes the connection from the registry.
    let mut connections = lock(&shared.connections);
    if let Some(index) = connections.iter().position(|connection| connection.id == id) {
        connections[index].directions_running -= 1;
        if connections[index].directions_running == 0 {
            connections.swap_remove(index);
        }
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Writes `bytes` in pieces the bandwidth limit allows, retrying timed-out writes until
/// [`WRITE_STALL_LIMIT`] passes without progress.
fn send_limited(
    shared: &Shared,
    bucket: &mut TokenBucket,
    destination: &mut TcpStream,
    bytes: &[u8],
) -> io::Result<()> {
    let mut offset = 0;
    let mut last_progress = Instant::now();
    while offset < bytes.len() {
        if shared.stopping() {
            return Err(io::Error::new(ErrorKind::Interrupted, "link proxy stopping"));
        }
        let limit = lock(&shared.settings).bandwidth_limit_bytes_per_second;
        let allowed = match limit {
            None => bytes.len() - offset,
            Some(rate) => match bucket.take(rate, bytes.len() - offset) {
                0 => {
                    thread::sleep(Duration::from_millis(2));
                    continue;
                }
                allowed => allowed,
            },
        };
        match destination.write(&bytes[offset..offset + allowed]) {
            Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "peer closed")),
            Ok(written) => {
                if let Some(rate) = limit {
                    bucket.refund(rate, (allowed - written) as u64);
                }
                offset += written;
                last_progress = Instant::now();
                shared.bytes_forwarded_total.fetch_add(written as u64, Ordering::Relaxed);
            }
            Err(error) if is_timeout(&error) || error.kind() == ErrorKind::Interrupted => {
                if let Some(rate) = limit {
                    bucket.refund(rate, allowed as u64);
                }
                if last_progress.elapsed() > WRITE_STALL_LIMIT {
                    return Err(error);
                }
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Token bucket for one direction of one connection: holds at most 100 ms of bytes at the
/// current rate (at least one byte), starts full.
struct TokenBucket {
    tokens_bytes: f64,
    last_refill: Instant,
    started: bool,
}

impl TokenBucket {
    fn new() -> TokenBucket {
        TokenBucket { tokens_bytes: 0.0, last_refill: Instant::now(), started: false }
    }

    fn capacity_bytes(rate_bytes_per_second: u64) -> f64 {
        (rate_bytes_per_second as f64 / 10.0).max(1.0)
    }

    /// Takes up to `wanted_bytes` tokens; returns how many were taken (0 means wait).
    fn take(&mut self, rate_bytes_per_second: u64, wanted_bytes: usize) -> usize {
        let capacity = Self::capacity_bytes(rate_bytes_per_second);
        let now = Instant::now();
        if !self.started {
            self.started = true;
            self.tokens_bytes = capacity;
        } else {
            let refill = now.duration_since(self.last_refill).as_secs_f64() * rate_bytes_per_second as f64;
            self.tokens_bytes = (self.tokens_bytes + refill).min(capacity);
        }
        self.last_refill = now;
        let taken = (self.tokens_bytes.floor() as usize).min(wanted_bytes);
        self.tokens_bytes -= taken as f64;
        taken
    }

    fn refund(&mut self, rate_bytes_per_second: u64, unused_bytes: u64) {
        let capacity = Self::capacity_bytes(rate_bytes_per_second);
        self.tokens_bytes = (self.tokens_bytes + unused_bytes as f64).min(capacity);
    }
}
