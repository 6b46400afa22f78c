//! The console on a Unix socket, for users who ssh into the node (through `summit-node console`
//! or any client that speaks the line protocol described in [`crate::console`]).
//!
//! The socket is mode 0660, optionally owned by a configured group, so only that group's members
//! (and root) can connect at all. Whether a connection may change state is decided from the
//! peer's credentials (SO_PEERCRED) and the operator group ([`crate::console::users`]).
//!
//! One thread accepts (polling the listener with a timeout so it notices the stop flag), one
//! thread serves each connection, at most `max_connections` at once; a connection beyond that
//! gets a "console busy" reply and is closed.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::console::line::{LineBuffer, LineEvent};
use crate::console::session::{Reply, Session};
use crate::console::users::{decide_operator, PeerCredentials, UserDatabase};
use crate::status::NodeControl;

/// Sessions served at once unless configured otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8;
/// The socket file's mode: owner and group may connect, nobody else.
pub const SOCKET_MODE: u32 = 0o660;
/// Where the socket is created unless configured otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/summit-node/console.sock";
/// A session with no input for this long is closed, so forgotten sessions free their slot.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// The first byte of a reply's terminator line (ASCII EOT).
pub const REPLY_END_BYTE: u8 = 0x04;

/// How often the threads look at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// A client that does not read its replies for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from a connection at a time.
const READ_CHUNK_BYTES: usize = 512;

/// The socket console's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixConsoleOptions {
    /// Where the socket is created (`/run/summit-node/console.sock`).
    pub path: PathBuf,
    /// The group the socket file is given (its members may connect), or `None` to keep the
    /// process's group.
    pub group: Option<String>,
    /// Members of this group get operator mode (root always does); `None`: only root.
    pub operator_group: Option<String>,
    /// Sessions served at once; more connections are told the console is busy.
    pub max_connections: usize,
    /// A session idle this long is closed.
    pub idle_timeout: Duration,
    /// Where users and groups are looked up.
    pub user_database: UserDatabase,
}

impl UnixConsoleOptions {
    /// Defaults but the path: no socket group, no operator group, [`DEFAULT_MAX_CONNECTIONS`],
    /// [`DEFAULT_IDLE_TIMEOUT`], `/etc/passwd` and `/etc/group`.
    pub fn new(path: impl Into<PathBuf>) -> UnixConsoleOptions {
        UnixConsoleOptions {
            path: path.into(),
            group: None,
            operator_group: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            user_database: UserDatabase::default(),
        }
    }
}

impl Default for UnixConsoleOptions {
    /// [`UnixConsoleOptions::new`] at [`DEFAULT_SOCKET_PATH`].
    fn default() -> UnixConsoleOptions {
        UnixConsoleOptions::new(DEFAULT_SOCKET_PATH)
    }
}

/// Creates the socket and serves it on its own threads until `stop` is set; the returned thread
/// ends after every session has ended and the socket file is removed.
///
/// Errors (before any thread starts): `max_connections` is 0; a configured group is not in the
/// group file; the path is held by a running server or is not a socket; binding, `chmod` or
/// `chown` failed. A stale socket (nothing accepts on it) is replaced.
pub fn serve_unix(
    options: UnixConsoleOptions,
    node: Arc<dyn NodeControl>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    if options.max_connections == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "console max_connections must be at least 1",
        ));
    }
    let socket_gid = match &options.group {
        Some(name) => Some(options.user_database.group_id(name)?),
        None => None,
    };
    if let Some(name) = &options.operator_group {
        options.user_database.group_id(name)?;
    }
    let path = options.path.clone();
    remove_stale_socket(&path)?;
    let listener = UnixListener::bind(&path).map_err(|error| {
        io::Error::new(error.kind(), format!("cannot create the console socket {}: {error}", path.display()))
    })?;
    let prepared = prepare_socket_file(&path, socket_gid).and_then(|identity| {
        listener.set_nonblocking(true)?;
        Ok(identity)
    });
    let identity = match prepared {
        Ok(identity) => identity,
        Err(error) => {
            let _ = fs::remove_file(&path);
            return Err(error);
        }
    };
    tracing::info!(
        path = %path.display(),
        socket_group = options.group.as_deref().unwrap_or("-"),
        operator_group = options.operator_group.as_deref().unwrap_or("-"),
        max_connections = options.max_connections,
        "console: socket listening"
    );
    let server = SocketServer {
        listener,
        identity,
        options,
        node,
        stop,
        active_sessions: Arc::new(AtomicUsize::new(0)),
        sessions: Vec::new(),
    };
    let spawned = thread::Builder::new().name("console-socket".to_string()).spawn(move || server.run());
    if spawned.is_err() {
        let _ = fs::remove_file(&path);
    }
    spawned
}

/// Sets the mode (and group) of a freshly bound socket; returns its (device, inode).
fn prepare_socket_file(path: &Path, socket_gid: Option<u32>) -> io::Result<(u64, u64)> {
    let context = |what: &str, error: io::Error| {
        io::Error::new(error.kind(), format!("cannot {what} the console socket {}: {error}", path.display()))
    };
    fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|error| context("chmod", error))?;
    if let Some(gid) = socket_gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|error| context("chown", error))?;
    }
    let metadata = fs::symlink_metadata(path).map_err(|error| context("stat", error))?;
    Ok((metadata.dev(), metadata.ino()))
}

/// Removes a socket file nothing accepts on; refuses a live socket or any other kind of file.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let metadata = match fs::symlink_metadata(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            let message = format!("cannot inspect the console socket path {}: {error}", path.display());
            return Err(io::Error::new(error.kind(), message));
        }
        Ok(metadata) => metadata,
    };
    if !metadata.file_type().is_socket() {
        let message = format!(
            "{} exists and is not a socket; refusing to remove it: move it away or configure another \
             console socket path",
            path.display()
        );
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, message));
    }
    if UnixStream::connect(path).is_ok() {
        let message = format!(
            "the console socket {} is in use (another summit-node is running?); stop it first",
            path.display()
        );
        return Err(io::Error::new(io::ErrorKind::AddrInUse, message));
    }
    fs::remove_file(path).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot remove the stale console socket {}: {error}", path.display()),
        )
    })?;
    tracing::info!(path = %path.display(), "console: removed a stale socket");
    Ok(())
}

/// The accepting side.
struct SocketServer {
    listener: UnixListener,
    /// (device, inode) of the socket file this server created: only that file is removed.
    identity: (u64, u64),
    options: UnixConsoleOptions,
    node: Arc<dyn NodeControl>,
    stop: Arc<AtomicBool>,
    /// Sessions running; incremented only by the accepting thread, decremented by each session.
    active_sessions: Arc<AtomicUsize>,
    /// At most `max_connections` handles (finished ones are pruned).
    sessions: Vec<JoinHandle<()>>,
}

impl SocketServer {
    fn run(mut self) {
        while !self.stop.load(Ordering::Acquire) {
            match wait_readable(&self.listener, POLL_INTERVAL) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::error!(%error, "console: poll of the socket failed");
                    thread::sleep(POLL_INTERVAL);
                    continue;
                }
            }
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "console: accept failed");
                    thread::sleep(POLL_INTERVAL);
                }
            }
            self.sessions.retain(|session| !session.is_finished());
        }
        for session in self.sessions.drain(..) {
            let _ = session.join();
        }
        self.remove_socket_file();
        tracing::info!(path = %self.options.path.display(), "console: socket closed");
    }

    fn admit(&mut self, stream: UnixStream) {
        let active = self.active_sessions.load(Ordering::Acquire);
        if active >= self.options.max_connections {
            refuse_busy(stream, active, self.options.max_connections);
            return;
        }
        self.active_sessions.fetch_add(1, Ordering::AcqRel);
        let slot = SessionSlot(Arc::clone(&self.active_sessions));
        let connection = Connection {
            stream,
            node: Arc::clone(&self.node),
            stop: Arc::clone(&self.stop),
            operator_group: self.options.operator_group.clone(),
            user_database: self.options.user_database.clone(),
            idle_timeout: self.options.idle_timeout,
        };
        let spawned =
            thread::Builder::new().name("console-session".to_string()).spawn(move || connection.serve(slot));
        match spawned {
            Ok(handle) => self.sessions.push(handle),
            // The closure, and with it the slot and the stream, was dropped: the slot is free.
            Err(error) => tracing::error!(%error, "console: cannot start a session thread"),
        }
    }

    fn remove_socket_file(&self) {
        let path = &self.options.path;
        match fs::symlink_metadata(path) {
            Ok(metadata) if (metadata.dev(), metadata.ino()) == self.identity => {
                if let Err(error) = fs::remove_file(path) {
                    tracing::warn!(path = %path.display(), %error, "console: cannot remove the socket");
                }
            }
            // Replaced by someone else, or already gone: not ours to remove.
            _ => {}
        }
    }
}

/// Tells a connection beyond the limit that the console is busy, and closes it.
fn refuse_busy(stream: UnixStream, active: usize, max_connections: usize) {
    tracing::warn!(active, max_connections, "console: busy, connection refused");
    let reply = Reply {
        text: format!("console busy: {active} sessions open (at most {max_connections}); try again later"),
        ok: false,
        close: true,
    };
    let _ = stream.set_write_timeout(Some(POLL_INTERVAL));
    let _ = (&stream).write_all(&encode_reply(&reply));
}

/// Holds one of the `max_connections` places; frees it when dropped.
struct SessionSlot(Arc<AtomicUsize>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One accepted connection and what its session needs.
struct Connection {
    stream: UnixStream,
    node: Arc<dyn NodeControl>,
    stop: Arc<AtomicBool>,
    operator_group: Option<String>,
    user_database: UserDatabase,
    idle_timeout: Duration,
}

impl Connection {
    fn serve(self, slot: SessionSlot) {
        let peer = match peer_credentials(&self.stream) {
            Ok(peer) => peer,
            Err(error) => {
                tracing::warn!(%error, "console: cannot read the peer's credentials; closing");
                return;
            }
        };
        let decision = match self.user_database.read() {
            Ok(database) => decide_operator(peer, self.operator_group.as_deref(), &database),
            Err(error) => {
                let mut decision = decide_operator(peer, None, &Default::default());
                if !decision.operator {
                    decision.reason = format!("read-only: {error}");
                }
                decision
            }
        };
        tracing::info!(
            peer_uid = peer.uid,
            peer_pid = peer.pid,
            operator = decision.operator,
            reason = %decision.reason,
            "console: connection"
        );
        let origin = format!("socket uid {} pid {}", peer.uid, peer.pid);
        let mut session = Session::with_origin(decision.operator, origin);
        let end = self.converse(&mut session);
        tracing::info!(
            peer_uid = peer.uid,
            lines_total = session.lines_total(),
            end,
            "console: disconnected"
        );
        // Free the slot before the client sees the connection close.
        drop(slot);
        drop(self);
    }

    /// Answers lines until the client leaves, says `quit`, idles too long or the node stops;
    /// returns why it ended.
    fn converse(&self, session: &mut Session) -> &'static str {
        let configured = self
            .stream
            .set_read_timeout(Some(POLL_INTERVAL))
            .and_then(|()| self.stream.set_write_timeout(Some(WRITE_TIMEOUT)));
        if configured.is_err() {
            return "cannot set socket timeouts";
        }
        let node = &*self.node;
        let greeting = Reply { text: session.greeting(node), ok: true, close: false };
        if (&self.stream).write_all(&encode_reply(&greeting)).is_err() {
            return "write failed";
        }
        let mut line = LineBuffer::new();
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        let mut last_input = Instant::now();
        loop {
            if self.stop.load(Ordering::Acquire) {
                return "console stopping";
            }
            let received = match (&self.stream).read(&mut chunk) {
                Ok(0) => return "closed by the client",
                Ok(received) => received,
                Err(error) if is_timeout(&error) => {
                    if last_input.elapsed() >= self.idle_timeout {
                        return "idle timeout";
                    }
                    continue;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return "read failed",
            };
            last_input = Instant::now();
            for &byte in &chunk[..received] {
                let reply = match line.push(byte) {
                    Some(LineEvent::Line(text)) => session.handle_line(text, node),
                    Some(LineEvent::Rejected(error)) => session.reject_line(&error),
                    Some(LineEvent::Stored) | Some(LineEvent::Erased) | None => continue,
                };
                if (&self.stream).write_all(&encode_reply(&reply)).is_err() {
                    return "write failed";
                }
                if reply.close {
                    return "quit";
                }
            }
        }
    }
}

fn peer_credentials(stream: &UnixStream) -> io::Result<PeerCredentials> {
    let credentials = rustix::net::sockopt::socket_peercred(stream)?;
    Ok(PeerCredentials {
        uid: credentials.uid.as_raw(),
        gid: credentials.gid.as_raw(),
        pid: credentials.pid.as_raw_nonzero().get(),
    })
}

/// Waits up to `timeout` for a connection to accept.
fn wait_readable(listener: &UnixListener, timeout: Duration) -> io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut descriptors = [PollFd::new(listener, PollFlags::IN)];
    let timeout = Timespec::try_from(timeout).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let ready = poll(&mut descriptors, Some(&timeout))?;
    Ok(ready > 0)
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// A reply on the wire: its text lines, each ending in LF, then the terminator line: EOT,
/// `ok` or `error`, ` close` if the server closes the connection next, LF.
pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(reply.text.len() + 16);
    if !reply.text.is_empty() {
        bytes.extend_from_slice(reply.text.as_bytes());
        bytes.push(b'\n');
    }
    bytes.push(REPLY_END_BYTE);
    bytes.extend_from_slice(if reply.ok { b"ok" } else { b"error" });
    if reply.close {
        bytes.extend_from_slice(b" close");
    }
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_end_with_an_eot_line_saying_ok_or_error_and_close() {
        let reply = Reply { text: "a\nb".to_string(), ok: true, close: false };
        assert_eq!(encode_reply(&reply), b"a\nb\n\x04ok\n");
        let reply = Reply { text: String::new(), ok: false, close: true };
        assert_eq!(encode_reply(&reply), b"\x04error close\n");
    }
}
