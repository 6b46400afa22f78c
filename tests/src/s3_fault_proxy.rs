//! An HTTP fault proxy in front of a real S3-protocol server (moto), for the drain's fault tests:
//! it forwards each request unchanged and answers for the server when a [`FaultMode`] says so.
//!
//! # What it injects
//!
//! | [`Fault`] | forwarded to the server? | the client sees |
//! |-----------|--------------------------|-----------------|
//! | [`Fault::SlowDown`] | no | `503 Slow Down`, S3 error code `SlowDown` |
//! | [`Fault::InternalError`] | no | `500 Internal Server Error`, S3 error code `InternalError` |
//! | [`Fault::OkWithInternalErrorBody`] | yes (the server acted on it) | `200 OK` whose body is an S3 `InternalError` |
//!
//! plus slow answers (a delay before the answer is sent). The first two are what a real S3 answers
//! under load; moto never does, so the proxy answers in its place (the request did not reach the
//! base, as with S3). The third is what S3 documents for `CompleteMultipartUpload` (the request
//! may or may not have taken effect) and moto cannot produce at all: the proxy forwards the
//! request, so the object IS complete at the base, and replaces the answer.
//!
//! # Determinism
//!
//! [`FaultMode::Random`] decides from the seed and the request's *signature* (its class, path and
//! part number, and how many requests with that signature came before), never from arrival order,
//! so parts sent in parallel get the same faults in every run with the same seed.
//!
//! # Framing, and the limits
//!
//! One request per client connection: the proxy reads one request (its head, then a
//! `Content-Length` or chunked body), asks the server with `Connection: close`, reads the answer
//! to EOF, relays it with `Connection: close`, and closes. The client (hyper) then never reuses
//! the connection, so the proxy needs no knowledge of the answer's framing. At most
//! [`MAX_CONNECTIONS`] connections at once (more are closed on accept and counted), request heads
//! of at most [`MAX_HEAD_BYTES`], the last [`MAX_LOG_ENTRIES`] requests logged, at most
//! [`MAX_SIGNATURES`] distinct signatures counted. Every thread checks the stop flag at least
//! every [`POLL_INTERVAL`]; dropping the proxy joins them all.

use std::collections::{HashMap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Most client connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest request or response head read.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Requests kept in the log (oldest dropped first).
pub const MAX_LOG_ENTRIES: usize = 16 * 1024;
/// Distinct request signatures counted for [`FaultMode::Random`].
pub const MAX_SIGNATURES: usize = 64 * 1024;
/// Longest any proxy thread goes without checking whether the proxy was dropped.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Longest wait for a client's request or the server's answer before the connection is closed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed to connect to the server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What kind of S3 request it is, from its method and query (path-style addressing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestClass {
    /// `HEAD /bucket/key`.
    HeadObject,
    /// `GET /bucket/key`.
    GetObject,
    /// `GET /bucket?list-type=2`, `GET /bucket?uploads` and other listings.
    List,
    /// `PUT /bucket/key` without `partNumber` (a single-part upload; also bucket creation).
    PutObject,
    /// `POST /bucket/key?uploads`.
    CreateMultipart,
    /// `PUT /bucket/key?partNumber=N&uploadId=U`.
    UploadPart,
    /// `POST /bucket/key?uploadId=U`.
    CompleteMultipart,
    /// `DELETE /bucket/key?uploadId=U`.
    AbortMultipart,
    /// Anything else.
    Other,
}

impl RequestClass {
    /// Classifies a request by its method and target (`/path?query`).
    pub fn of(method: &str, target: &str) -> RequestClass {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let has = |name: &str| query.split('&').any(|pair| pair.split('=').next() == Some(name));
        let bucket_only = path.trim_matches('/').split('/').count() <= 1;
        match method {
            "HEAD" => RequestClass::HeadObject,
            "GET" if bucket_only || has("uploads") || has("list-type") => RequestClass::List,
            "GET" => RequestClass::GetObject,
            "PUT" if has("partNumber") && has("uploadId") => RequestClass::UploadPart,
            "PUT" => RequestClass::PutObject,
            "POST" if has("uploads") => RequestClass::CreateMultipart,
            "POST" if has("uploadId") => RequestClass::CompleteMultipart,
            "DELETE" if has("uploadId") => RequestClass::AbortMultipart,
            _ => RequestClass::Other,
        }
    }
}

/// An answer the proxy gives in the server's place (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `503 Slow Down`, not forwarded.
    SlowDown,
    /// `500 Internal Server Error`, not forwarded.
    InternalError,
    /// Forwarded; the answer replaced by `200 OK` with an `InternalError` body.
    OkWithInternalErrorBody,
}

/// Seeded faults: see the module docs on determinism.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomFaults {
    /// Seed of every decision.
    pub seed: u64,
    /// Fraction of requests answered [`Fault::SlowDown`] or [`Fault::InternalError`] (half each).
    pub error_fraction: f64,
    /// Fraction of `CompleteMultipartUpload` requests answered [`Fault::OkWithInternalErrorBody`].
    pub complete_error_fraction: f64,
    /// Fraction of answers delayed by `slow_delay`.
    pub slow_fraction: f64,
    /// Delay of a slow answer.
    pub slow_delay: Duration,
    /// The classes that may get an error; empty: every class (delays apply to all).
    pub classes: Vec<RequestClass>,
}

/// How the proxy treats requests; switched at any time with [`S3FaultProxy::set_mode`].
#[derive(Clone, Debug, PartialEq)]
pub enum FaultMode {
    /// Everything forwarded, nothing changed.
    PassThrough,
    /// Every request of `classes` (all requests if empty) gets `fault`.
    FailAll {
        /// The answer.
        fault: Fault,
        /// The classes that fail; empty: every class.
        classes: Vec<RequestClass>,
    },
    /// Seeded random faults and delays.
    Random(RandomFaults),
}

/// One request as the proxy handled it.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRecord {
    /// When its head was read.
    pub at: Instant,
    /// Its class.
    pub class: RequestClass,
    /// `HEAD`, `PUT`...
    pub method: String,
    /// The target (`/bucket/key?query`).
    pub target: String,
    /// The fault injected, if any.
    pub fault: Option<Fault>,
    /// Whether the answer was delayed.
    pub delayed: bool,
    /// The status the client was sent (0: the connection was closed without an answer).
    pub status: u16,
}

/// Counters, all `_total` since start.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    /// Requests read in full.
    pub requests_total: AtomicU64,
    /// Requests forwarded to the server.
    pub forwarded_total: AtomicU64,
    /// Answers replaced by a fault.
    pub faults_injected_total: AtomicU64,
    /// Answers delayed.
    pub delayed_total: AtomicU64,
    /// Connections closed on accept (over [`MAX_CONNECTIONS`]).
    pub connections_refused_total: AtomicU64,
    /// Requests whose forwarding failed (server unreachable, malformed answer): closed unanswered.
    pub upstream_failures_total: AtomicU64,
}

struct Shared {
    upstream: SocketAddr,
    stop: AtomicBool,
    mode: Mutex<FaultMode>,
    signatures: Mutex<HashMap<String, u64>>,
    log: Mutex<VecDeque<RequestRecord>>,
    counters: ProxyCounters,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

/// Locks, recovering the data if a thread panicked while holding the lock (each critical section
/// leaves the data consistent).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The proxy: listens on a loopback port and forwards to one server. Dropping it stops it.
pub struct S3FaultProxy {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

impl S3FaultProxy {
    /// Listens on `127.0.0.1` (a free port) and forwards to `upstream`, in `mode`.
    pub fn start(upstream: SocketAddr, mode: FaultMode) -> io::Result<S3FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            stop: AtomicBool::new(false),
            mode: Mutex::new(mode),
            signatures: Mutex::new(HashMap::new()),
            log: Mutex::new(VecDeque::with_capacity(MAX_LOG_ENTRIES)),
            counters: ProxyCounters::default(),
            connections: Mutex::new(Vec::with_capacity(MAX_CONNECTIONS)),
        });
        let accepting = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name("s3-fault-proxy".to_owned())
            .spawn(move || accept_loop(&accepting, &listener))?;
        Ok(S3FaultProxy { shared, local_addr, acceptor: Some(acceptor) })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://127.0.0.1:PORT`, for an S3 client's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Switches the mode; requests already read keep the decision made for them.
    pub fn set_mode(&self, mode: FaultMode) {
        *lock(&self.shared.mode) = mode;
    }

    /// The counters.
    pub fn counters(&self) -> &ProxyCounters {
        &self.shared.counters
    }

    /// The logged requests, oldest first (at most [`MAX_LOG_ENTRIES`]).
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).iter().cloned().collect()
    }
}

impl Drop for S3FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let connections = std::mem::take(&mut *lock(&self.shared.connections));
        for connection in connections {
            let _ = connection.join();
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                let mut connections = lock(&shared.connections);
                connections.retain(|handle| !handle.is_finished());
                if connections.len() >= MAX_CONNECTIONS {
                    shared.counters.connections_refused_total.fetch_add(1, Ordering::Relaxed);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let serving = Arc::clone(shared);
                let spawned = thread::Builder::new()
                    .name("s3-fault-proxy-connection".to_owned())
                    .spawn(move || serve_one(&serving, client));
                match spawned {
                    Ok(handle) => connections.push(handle),
                    Err(_) => {
                        shared.counters.connections_refused_total.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => thread::sleep(POLL_INTERVAL),
            Err(_) => thread::sleep(POLL_INTERVAL),
        }
    }
}

/// A stream read with [`POLL_INTERVAL`] timeouts, giving up when the proxy stops or after
/// [`IO_TIMEOUT`] without progress.
struct PolledStream<'a> {
    stream: TcpStream,
    shared: &'a Shared,
    buffered: Vec<u8>,
}

impl<'a> PolledStream<'a> {
    fn new(stream: TcpStream, shared: &'a Shared) -> io::Result<PolledStream<'a>> {
        stream.set_read_timeout(Some(POLL_INTERVAL))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(PolledStream { stream, shared, buffered: Vec::new() })
    }

    /// Reads more bytes into `buffered`; `Ok(0)` at EOF.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0_u8; 64 * 1024];
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                return Err(io::Error::new(ErrorKind::Interrupted, "proxy stopping"));
            }
            match self.stream.read(&mut chunk) {
                Ok(read) => {
                    self.buffered.extend_from_slice(&chunk[..read]);
                    return Ok(read);
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(ErrorKind::TimedOut, "no progress for the I/O timeout"));
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Reads up to and including the blank line that ends a head; returns the head's length.
    fn read_head(&mut self) -> io::Result<Option<usize>> {
        loop {
            if let Some(end) = find(&self.buffered, b"\r\n\r\n") {
                return Ok(Some(end + 4));
            }
            if self.buffered.len() > MAX_HEAD_BYTES {
                return Err(io::Error::new(ErrorKind::InvalidData, "head longer than MAX_HEAD_BYTES"));
            }
            if self.fill()? == 0 {
                return if self.buffered.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(ErrorKind::UnexpectedEof, "EOF inside a head"))
                };
            }
        }
    }

    /// Makes sure `buffered` holds at least `length` bytes.
    fn read_at_least(&mut self, length: usize) -> io::Result<()> {
        while self.buffered.len() < length {
            if self.fill()? == 0 {
                return Err(io::Error::new(ErrorKind::UnexpectedEof, "EOF inside a body"));
            }
        }
        Ok(())
    }

    /// Reads to EOF.
    fn read_to_end(&mut self) -> io::Result<()> {
        while self.fill()? > 0 {}
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// A parsed head: the start line and the headers, in order.
struct Head {
    start_line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn parse(bytes: &[u8]) -> io::Result<Head> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| io::Error::new(ErrorKind::InvalidData, "head is not UTF-8"))?;
        let mut lines = text.split("\r\n").filter(|line| !line.is_empty());
        let start_line =
            lines.next().ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "empty head"))?.to_owned();
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, format!("bad header line {line:?}")))?;
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        Ok(Head { start_line, headers })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// The head again, with `Connection: close` in place of any connection headers.
    fn to_bytes_closing(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start_line);
        for (name, value) in &self.headers {
            if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive") {
                continue;
            }
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("Connection: close\r\n\r\n");
        out.into_bytes()
    }
}

/// Reads a request body that starts at `start` of the buffer; returns where it ends.
fn read_body(stream: &mut PolledStream<'_>, head: &Head, start: usize) -> io::Result<usize> {
    let chunked = head.header("transfer-encoding").is_some_and(|value| value.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut at = start;
        loop {
            let line_end = loop {
                if let Some(end) = find(&stream.buffered[at..], b"\r\n") {
                    break at + end;
                }
                if stream.fill()? == 0 {
                    return Err(io::Error::new(ErrorKind::UnexpectedEof, "EOF inside a chunk size"));
                }
            };
            let size_text = std::str::from_utf8(&stream.buffered[at..line_end]).unwrap_or("");
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| {
                io::Error::new(ErrorKind::InvalidData, format!("bad chunk size {size_text:?}"))
            })?;
            at = line_end + 2;
            if size == 0 {
                // Trailers, then a blank line.
                loop {
                    if let Some(end) = find(&stream.buffered[at..], b"\r\n") {
                        let blank = end == 0;
                        at += end + 2;
                        if blank {
                            return Ok(at);
                        }
                    } else if stream.fill()? == 0 {
                        return Err(io::Error::new(ErrorKind::UnexpectedEof, "EOF inside trailers"));
                    }
                }
            }
            stream.read_at_least(at + size + 2)?;
            at += size + 2;
        }
    }
    let length = match head.header("content-length") {
        Some(value) => value
            .parse::<usize>()
            .map_err(|_| io::Error::new(ErrorKind::InvalidData, format!("bad Content-Length {value:?}")))?,
        None => 0,
    };
    stream.read_at_least(start + length)?;
    Ok(start + length)
}

/// What happens to one request.
#[derive(Clone, Copy, Debug, Default)]
struct Decision {
    fault: Option<Fault>,
    delay: Option<Duration>,
}

/// SplitMix64's finaliser: a bijective 64-bit mix.
fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in `[0, 1)` from the top 53 bits.
fn unit(value: u64) -> f64 {
    (value >> 11) as f64 / (1_u64 << 53) as f64
}

/// FNV-1a of `text`.
fn fnv1a(text: &str) -> u64 {
    text.bytes()
        .fold(0xCBF2_9CE4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3))
}

/// The signature of a request: class, path and part number (not the server-chosen upload id).
fn signature(class: RequestClass, target: &str) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let part = query.split('&').find_map(|pair| pair.strip_prefix("partNumber=")).unwrap_or("");
    format!("{class:?} {path} {part}")
}

impl Shared {
    fn decide(&self, class: RequestClass, target: &str) -> Decision {
        let mode = lock(&self.mode).clone();
        match mode {
            FaultMode::PassThrough => Decision::default(),
            FaultMode::FailAll { fault, classes } => {
                let applies = classes.is_empty() || classes.contains(&class);
                Decision { fault: applies.then_some(fault), delay: None }
            }
            FaultMode::Random(random) => {
                let signature = signature(class, target);
                let occurrence = {
                    let mut signatures = lock(&self.signatures);
                    assert!(
                        signatures.len() < MAX_SIGNATURES || signatures.contains_key(&signature),
                        "more than MAX_SIGNATURES distinct requests"
                    );
                    let count = signatures.entry(signature.clone()).or_insert(0);
                    *count += 1;
                    *count
                };
                let base = mix(random.seed ^ mix(fnv1a(&signature) ^ mix(occurrence)));
                let error_draw = unit(mix(base ^ 1));
                let complete_draw = unit(mix(base ^ 2));
                let slow_draw = unit(mix(base ^ 3));
                let may_fail = random.classes.is_empty() || random.classes.contains(&class);
                let fault = if !may_fail {
                    None
                } else if error_draw < random.error_fraction {
                    Some(if base & 1 == 0 { Fault::SlowDown } else { Fault::InternalError })
                } else if class == RequestClass::CompleteMultipart
                    && complete_draw < random.complete_error_fraction
                {
                    Some(Fault::OkWithInternalErrorBody)
                } else {
                    None
                };
                let delay = (slow_draw < random.slow_fraction).then_some(random.slow_delay);
                Decision { fault, delay }
            }
        }
    }

    fn record(&self, record: RequestRecord) {
        let mut log = lock(&self.log);
        if log.len() >= MAX_LOG_ENTRIES {
            log.pop_front();
        }
        log.push_back(record);
    }

    /// Sleeps `duration` in [`POLL_INTERVAL`] steps; `false` if the proxy is stopping.
    fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            thread::sleep(POLL_INTERVAL.min(deadline - Instant::now()));
        }
        true
    }
}

/// An S3 error answer; `with_body` false for a `HEAD`.
fn error_answer(status: u16, reason: &str, code: &str, message: &str, with_body: bool) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
         <RequestId>s3-fault-proxy</RequestId></Error>"
    );
    let mut answer = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         x-amz-request-id: s3-fault-proxy\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        answer.extend_from_slice(body.as_bytes());
    }
    answer
}

fn serve_one(shared: &Shared, client: TcpStream) {
    let Ok(writer) = client.try_clone() else { return };
    let Ok(mut stream) = PolledStream::new(client, shared) else { return };
    let Ok(Some(head_length)) = stream.read_head() else { return };
    let Ok(head) = Head::parse(&stream.buffered[..head_length]) else { return };
    let mut words = head.start_line.split(' ');
    let method = words.next().unwrap_or("").to_owned();
    let target = words.next().unwrap_or("").to_owned();
    let Ok(body_end) = read_body(&mut stream, &head, head_length) else { return };
    shared.counters.requests_total.fetch_add(1, Ordering::Relaxed);
    let at = Instant::now();
    let class = RequestClass::of(&method, &target);
    let decision = shared.decide(class, &target);
    let with_body = method != "HEAD";
    let answer = match decision.fault {
        Some(Fault::SlowDown) => {
            Some(error_answer(503, "Slow Down", "SlowDown", "Please reduce your request rate.", with_body))
        }
        Some(Fault::InternalError) => Some(error_answer(
            500,
            "Internal Server Error",
            "InternalError",
            "We encountered an internal error. Please try again.",
            with_body,
        )),
        Some(Fault::OkWithInternalErrorBody) | None => {
            let forwarded = forward(shared, &head, &stream.buffered[head_length..body_end]);
            match (forwarded, decision.fault) {
                // The server acted on the request; the client is told 200 with an error body.
                (Ok(_), Some(Fault::OkWithInternalErrorBody)) => Some(error_answer(
                    200,
                    "OK",
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                    true,
                )),
                (Ok(answer), _) => Some(answer),
                (Err(_), _) => {
                    shared.counters.upstream_failures_total.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        }
    };
    if decision.fault.is_some() {
        shared.counters.faults_injected_total.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(delay) = decision.delay {
        shared.counters.delayed_total.fetch_add(1, Ordering::Relaxed);
        if !shared.sleep(delay) {
            return;
        }
    }
    let status = answer.as_deref().map_or(0, status_of);
    shared.record(RequestRecord {
        at,
        class,
        method,
        target,
        fault: decision.fault,
        delayed: decision.delay.is_some(),
        status,
    });
    let mut writer = writer;
    if let Some(answer) = answer {
        let _ = writer.write_all(&answer);
        let _ = writer.flush();
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// The status code of an answer's status line (0 if unreadable).
fn status_of(answer: &[u8]) -> u16 {
    let line_end = find(answer, b"\r\n").unwrap_or(answer.len());
    std::str::from_utf8(&answer[..line_end])
        .ok()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Sends the request to the server with `Connection: close` and returns its whole answer, head
/// rewritten to `Connection: close`.
fn forward(shared: &Shared, head: &Head, body: &[u8]) -> io::Result<Vec<u8>> {
    shared.counters.forwarded_total.fetch_add(1, Ordering::Relaxed);
    let mut upstream = TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT)?;
    upstream.set_nodelay(true)?;
    upstream.set_write_timeout(Some(IO_TIMEOUT))?;
    upstream.write_all(&head.to_bytes_closing())?;
    upstream.write_all(body)?;
    upstream.flush()?;
    let mut answer = PolledStream::new(upstream, shared)?;
    let head_length = answer
        .read_head()?
        .ok_or_else(|| io::Error::new(ErrorKind::UnexpectedEof, "the server closed without an answer"))?;
    answer.read_to_end()?;
    let answer_head = Head::parse(&answer.buffered[..head_length])?;
    let mut relayed = answer_head.to_bytes_closing();
    relayed.extend_from_slice(&answer.buffered[head_length..]);
    Ok(relayed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_by_method_and_query() {
        let cases = [
            ("HEAD", "/base/raw/a.fits", RequestClass::HeadObject),
            ("GET", "/base/raw/a.fits", RequestClass::GetObject),
            ("GET", "/base?list-type=2&prefix=raw", RequestClass::List),
            ("GET", "/base", RequestClass::List),
            ("PUT", "/base/raw/a.fits", RequestClass::PutObject),
            ("POST", "/base/raw/a.fits?uploads", RequestClass::CreateMultipart),
            ("PUT", "/base/raw/a.fits?partNumber=2&uploadId=xyz", RequestClass::UploadPart),
            ("POST", "/base/raw/a.fits?uploadId=xyz", RequestClass::CompleteMultipart),
            ("DELETE", "/base/raw/a.fits?uploadId=xyz", RequestClass::AbortMultipart),
            ("DELETE", "/base/raw/a.fits", RequestClass::Other),
        ];
        for (method, target, class) in cases {
            assert_eq!(RequestClass::of(method, target), class, "{method} {target}");
        }
    }

    #[test]
    fn random_decisions_depend_on_the_signature_and_seed_not_on_the_upload_id() {
        let decide = |seed: u64, uploads: [&str; 2]| {
            let shared = Shared {
                upstream: "127.0.0.1:9".parse().expect("address"),
                stop: AtomicBool::new(false),
                mode: Mutex::new(FaultMode::Random(RandomFaults {
                    seed,
                    error_fraction: 0.5,
                    complete_error_fraction: 0.0,
                    slow_fraction: 0.5,
                    slow_delay: Duration::from_millis(1),
                    classes: Vec::new(),
                })),
                signatures: Mutex::new(HashMap::new()),
                log: Mutex::new(VecDeque::new()),
                counters: ProxyCounters::default(),
                connections: Mutex::new(Vec::new()),
            };
            (1..=40)
                .map(|part| {
                    let target = format!("/b/k?partNumber={part}&uploadId={}", uploads[part % 2]);
                    let decision = shared.decide(RequestClass::UploadPart, &target);
                    (decision.fault, decision.delay)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(decide(7, ["u1", "u2"]), decide(7, ["other", "ids"]), "upload ids do not matter");
        assert_ne!(decide(7, ["u1", "u2"]), decide(8, ["u1", "u2"]), "the seed does");
        let faults = decide(7, ["u1", "u2"]).iter().filter(|(fault, _)| fault.is_some()).count();
        assert!((8..=32).contains(&faults), "about half of 40 fail: {faults}");
    }
}
