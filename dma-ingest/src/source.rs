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

/// A listening endpoint, or a file to read once.
pub(crate) enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
    /// A replay file or a device: a single "connection", opened at start.
    Once(Option<(Box<dyn Read + Send>, String)>),
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
                Ok(Listener::Once(Some((Box::new(file), endpoint.to_string()))))
            }
        }
    }

    /// The next connection, or `None` when there is none right now (sockets) or any more (files).
    pub(crate) fn accept(&mut self, number: u64) -> io::Result<Option<(Box<dyn Read + Send>, String)>> {
        let accepted = match self {
            Listener::Unix(listener) => listener.accept().map(|(stream, _)| {
                prepare_unix(&stream)
                    .map(|()| (Box::new(stream) as Box<dyn Read + Send>, format!("unix#{number}")))
            }),
            Listener::Tcp(listener) => listener.accept().map(|(stream, peer)| {
                prepare_tcp(&stream)
                    .map(|()| (Box::new(stream) as Box<dyn Read + Send>, format!("tcp#{number} {peer}")))
            }),
            Listener::Once(once) => return Ok(once.take()),
        };
        match accepted {
            Ok(prepared) => prepared.map(Some),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// True for a file or device (one connection, then done).
    pub(crate) fn is_once(&self) -> bool {
        matches!(self, Listener::Once(_))
    }
}

fn prepare_unix(stream: &UnixStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(SHUTDOWN_POLL))
}

fn prepare_tcp(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(SHUTDOWN_POLL))
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
