//! Opening endpoints for the portable path and the metadata channel: listeners, accepted
//! connections and files as blocking byte streams with a read timeout, so a reader thread can
//! notice a shutdown request while its sender is silent.

use std::fs::File;
use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use crate::config::Endpoint;

/// How often a blocked accept or read looks at the shutdown flag.
pub(crate) const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

/// A listening endpoint, or a file to read once. Opened before an ingest thread starts, so a
/// sender can connect as soon as `IngestHandle::start` returns; both I/O paths accept from it.
pub(crate) enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
    /// A replay file (`positional`: read at explicit offsets) or a device (a stream): a single
    /// "connection", opened at start.
    Once(Option<(File, String, bool)>),
}

/// One accepted connection, before either path prepares it.
pub(crate) enum Accepted {
    Unix(UnixStream),
    Tcp(TcpStream),
    /// A replay file or a device, and whether it is read at explicit offsets.
    File(File, bool),
}

impl Listener {
    /// Binds (sockets) or opens (files, devices). A stale Unix socket file is replaced.
    pub(crate) fn open(endpoint: &Endpoint) -> io::Result<Listener> {
        let context = |error: io::Error, what: &str| {
            io::Error::new(error.kind(), format!("{what} {endpoint}: {error}"))
        };
        match endpoint {
            Endpoint::Unix(path) => {
                remove_stale_socket(path)
                    .map_err(|error| context(error, "cannot replace the socket file of"))?;
                let listener =
                    UnixListener::bind(path).map_err(|error| context(error, "cannot listen on"))?;
                listener.set_nonblocking(true)?;
                Ok(Listener::Unix(listener))
            }
            Endpoint::Tcp(address) => {
                let listener =
                    TcpListener::bind(address).map_err(|error| context(error, "cannot listen on"))?;
                listener.set_nonblocking(true)?;
                Ok(Listener::Tcp(listener))
            }
            Endpoint::File(path) | Endpoint::Device(path) => {
                let file = File::open(path).map_err(|error| context(error, "cannot open"))?;
                let positional = matches!(endpoint, Endpoint::File(_));
                Ok(Listener::Once(Some((file, endpoint.to_string(), positional))))
            }
        }
    }

    /// The next connection and its name (`unix#3`, `tcp#1 PEER`, the endpoint of a file), or
    /// `None` when there is none right now (sockets) or any more (files). Accepted sockets are
    /// blocking; TCP ones have `TCP_NODELAY`.
    pub(crate) fn accept_raw(&mut self, number: u64) -> io::Result<Option<(Accepted, String)>> {
        let accepted = match self {
            Listener::Unix(listener) => listener.accept().and_then(|(stream, _)| {
                stream.set_nonblocking(false)?;
                Ok((Accepted::Unix(stream), format!("unix#{number}")))
            }),
            Listener::Tcp(listener) => listener.accept().and_then(|(stream, peer)| {
                stream.set_nonblocking(false)?;
                stream.set_nodelay(true)?;
                Ok((Accepted::Tcp(stream), format!("tcp#{number} {peer}")))
            }),
            Listener::Once(once) => {
                return Ok(once
                    .take()
                    .map(|(file, name, positional)| (Accepted::File(file, positional), name)));
            }
        };
        match accepted {
            Ok(accepted) => Ok(Some(accepted)),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// [`Listener::accept_raw`] as a blocking reader whose reads time out every
    /// [`SHUTDOWN_POLL`], so a reader thread notices a shutdown while its sender is silent; a
    /// replay file is read at explicit offsets, a device as a stream.
    pub(crate) fn accept(&mut self, number: u64) -> io::Result<Option<(Box<dyn Read + Send>, String)>> {
        let Some((accepted, name)) = self.accept_raw(number)? else { return Ok(None) };
        let reader: Box<dyn Read + Send> = match accepted {
            Accepted::Unix(stream) => {
                stream.set_read_timeout(Some(SHUTDOWN_POLL))?;
                Box::new(stream)
            }
            Accepted::Tcp(stream) => {
                stream.set_read_timeout(Some(SHUTDOWN_POLL))?;
                Box::new(stream)
            }
            Accepted::File(file, true) => Box::new(PositionalFile { file, offset: 0 }),
            Accepted::File(file, false) => Box::new(PolledDevice { file }),
        };
        Ok(Some((reader, name)))
    }

    /// True for a file or device (one connection, then done).
    pub(crate) fn is_once(&self) -> bool {
        matches!(self, Listener::Once(_))
    }
}

/// Removes `path` if it is a socket nobody listens on; refuses to remove anything else.
pub(crate) fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, "another process is listening on it"));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(io::Error::new(io::ErrorKind::AlreadyExists, "the path exists and is not a socket")),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// What a read of an exact number of bytes found.
pub(crate) enum Filled {
    /// All bytes read.
    Full,
    /// The stream ended before the first byte.
    CleanEnd,
    /// The stream ended after `found` bytes.
    Truncated { found: usize },
    /// Shutdown was requested while waiting.
    Shutdown,
}

/// A replay file read at explicit offsets (`pread`), independent of the descriptor's position.
struct PositionalFile {
    file: File,
    offset: u64,
}

impl Read for PositionalFile {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let read = self.file.read_at(buffer, self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

/// A character device (a DMA driver's endpoint) read as a stream: each read first waits at most
/// [`SHUTDOWN_POLL`] for data (`poll(2)`) and reports `TimedOut` if none came, so a reader notices
/// a shutdown while the device is silent, as it does on a socket. (A driver without poll support
/// reports itself always ready, and the read then blocks as a plain read would.)
struct PolledDevice {
    file: File,
}

impl Read for PolledDevice {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let mut fds = [rustix::event::PollFd::new(&self.file, rustix::event::PollFlags::IN)];
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: i64::try_from(SHUTDOWN_POLL.as_nanos()).expect("below one second"),
        };
        if rustix::event::poll(&mut fds, Some(&timeout))? == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no data from the device yet"));
        }
        self.file.read(buffer)
    }
}

/// Reads exactly `buffer.len()` bytes, retrying read timeouts until `shutdown()` says stop.
pub(crate) fn read_full(
    input: &mut dyn Read,
    buffer: &mut [u8],
    shutdown: &dyn Fn() -> bool,
) -> io::Result<Filled> {
    let mut filled = 0;
    while filled < buffer.len() {
        match input.read(&mut buffer[filled..]) {
            Ok(0) if filled == 0 => return Ok(Filled::CleanEnd),
            Ok(0) => return Ok(Filled::Truncated { found: filled }),
            Ok(read) => filled += read,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                if shutdown() {
                    return Ok(Filled::Shutdown);
                }
            }
            Err(error) => return Err(error),
        }
    }
    Ok(Filled::Full)
}
