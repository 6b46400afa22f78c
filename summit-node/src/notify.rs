//! sd_notify without libsystemd: [`Notifier`] sends `READY=1`, `STATUS=...`, `WATCHDOG=1`,
//! `STOPPING=1` and `EXTEND_TIMEOUT_USEC=...` as datagrams to the socket systemd names in
//! `NOTIFY_SOCKET` (a path, or an abstract name written `@name`), as `sd_notify(3)` does.
//!
//! - Without `NOTIFY_SOCKET` (not started by systemd, or `Type=simple`) every call is a no-op
//!   returning `Ok` (said once, at debug level).
//! - The watchdog: `WATCHDOG_USEC` is systemd's `WatchdogSec=`; it applies to this process
//!   unless `WATCHDOG_PID` names another one (`sd_watchdog_enabled(3)`). Ping every
//!   [`Notifier::watchdog_interval`], half the timeout, as systemd recommends.
//! - Errors are returned, never panicked on: the caller logs them and goes on (a lost
//!   notification must not stop acquisition; a daemon that never says READY is killed by
//!   systemd at `TimeoutStartSec`, which is the right outcome).
//!
//! [`Notifier::from_env`] only reads the three variables and hands them to
//! [`Notifier::from_values`], which tests call with explicit values (the process environment is
//! never changed).

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `STATUS=` texts longer than this are cut (at a character boundary).
pub const STATUS_BYTES_MAX: usize = 1024;

/// Why a notification could not be sent, or the environment is invalid.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` is neither an absolute path nor `@name`.
    #[error("NOTIFY_SOCKET={value:?} is neither an absolute path nor an abstract socket name (@name)")]
    InvalidSocket {
        /// The value.
        value: String,
    },
    /// `WATCHDOG_USEC` is not a positive integer.
    #[error("WATCHDOG_USEC={value:?} is not a positive number of microseconds")]
    InvalidWatchdogUsec {
        /// The value.
        value: String,
    },
    /// `WATCHDOG_PID` is not a process id.
    #[error("WATCHDOG_PID={value:?} is not a process id")]
    InvalidWatchdogPid {
        /// The value.
        value: String,
    },
    /// The datagram socket could not be created.
    #[error("cannot create a datagram socket for sd_notify: {0}")]
    Socket(std::io::Error),
    /// Sending failed (for a path: the socket does not exist, or nobody listens).
    #[error("cannot send {message:?} to NOTIFY_SOCKET={address}: {source}")]
    Send {
        /// `NOTIFY_SOCKET`.
        address: String,
        /// What was being sent.
        message: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyAddress {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract socket (`@name` in `NOTIFY_SOCKET`; the name without the `@`).
    Abstract(Vec<u8>),
}

impl NotifyAddress {
    /// Parses `NOTIFY_SOCKET`: an absolute path, or `@` then an abstract name.
    pub fn parse(value: &OsStr) -> Result<NotifyAddress, NotifyError> {
        let bytes = value.as_bytes();
        let invalid = || NotifyError::InvalidSocket { value: value.to_string_lossy().into_owned() };
        match bytes.split_first() {
            Some((b'@', name)) if !name.is_empty() => Ok(NotifyAddress::Abstract(name.to_vec())),
            Some((b'/', _)) => Ok(NotifyAddress::Path(PathBuf::from(value))),
            _ => Err(invalid()),
        }
    }

    fn socket_address(&self) -> std::io::Result<SocketAddr> {
        match self {
            NotifyAddress::Path(path) => SocketAddr::from_pathname(path),
            NotifyAddress::Abstract(name) => SocketAddr::from_abstract_name(name),
        }
    }
}

impl std::fmt::Display for NotifyAddress {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotifyAddress::Path(path) => write!(formatter, "{}", path.display()),
            NotifyAddress::Abstract(name) => write!(formatter, "@{}", String::from_utf8_lossy(name)),
        }
    }
}

#[derive(Debug)]
struct Target {
    address: NotifyAddress,
    socket_address: SocketAddr,
    socket: UnixDatagram,
}

/// Sends sd_notify messages (see the module docs). Cheap to share: every method takes `&self`.
#[derive(Debug)]
pub struct Notifier {
    /// `None`: `NOTIFY_SOCKET` unset, every call is a no-op.
    target: Option<Target>,
    watchdog_timeout: Option<Duration>,
    said_disabled: AtomicBool,
}

impl Notifier {
    /// From the process environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Result<Notifier, NotifyError> {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var_os("WATCHDOG_USEC");
        let pid = std::env::var_os("WATCHDOG_PID");
        let text = |value: &Option<std::ffi::OsString>| {
            value.as_ref().map(|value| value.to_string_lossy().into_owned())
        };
        Notifier::from_values(
            socket.as_deref(),
            text(&usec).as_deref(),
            text(&pid).as_deref(),
            std::process::id(),
        )
    }

    /// From explicit values of the three variables (`None` = unset), `own_pid` being this
    /// process's id. An empty `NOTIFY_SOCKET` counts as unset, as in `sd_notify(3)`.
    pub fn from_values(
        notify_socket: Option<&OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        own_pid: u32,
    ) -> Result<Notifier, NotifyError> {
        let watchdog_timeout = parse_watchdog(watchdog_usec, watchdog_pid, own_pid)?;
        let target = match notify_socket.filter(|value| !value.is_empty()) {
            None => None,
            Some(value) => {
                let address = NotifyAddress::parse(value)?;
                let socket_address = address.socket_address().map_err(|_| NotifyError::InvalidSocket {
                    value: value.to_string_lossy().into_owned(),
                })?;
                let socket = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
                Some(Target { address, socket_address, socket })
            }
        };
        Ok(Notifier { target, watchdog_timeout, said_disabled: AtomicBool::new(false) })
    }

    /// A notifier that sends nothing (not under systemd).
    pub fn disabled() -> Notifier {
        Notifier { target: None, watchdog_timeout: None, said_disabled: AtomicBool::new(false) }
    }

    /// `true` when `NOTIFY_SOCKET` was set: notifications are sent.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Where notifications go, if anywhere.
    pub fn address(&self) -> Option<&NotifyAddress> {
        self.target.as_ref().map(|target| &target.address)
    }

    /// The watchdog timeout systemd set (`WatchdogSec=`), if it applies to this process and
    /// notifications are sent.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.target.as_ref().and(self.watchdog_timeout)
    }

    /// How often to send [`Notifier::watchdog`]: half the timeout, as systemd recommends;
    /// `None` without a watchdog (or without `NOTIFY_SOCKET`).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_timeout().map(|timeout| timeout / 2)
    }

    /// `READY=1`: start-up is finished (`Type=notify` services are "started" from here).
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.notify("READY=1")
    }

    /// `STATUS=<text>`: one line for `systemctl status` (newlines become spaces; cut at
    /// [`STATUS_BYTES_MAX`] bytes).
    pub fn status(&self, text: &str) -> Result<(), NotifyError> {
        let mut end = text.len().min(STATUS_BYTES_MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let line: String = text[..end].chars().map(|c| if c == '\n' { ' ' } else { c }).collect();
        self.notify(&format!("STATUS={line}"))
    }

    /// `WATCHDOG=1`: alive (send every [`Notifier::watchdog_interval`]).
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.notify("WATCHDOG=1")
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.notify("STOPPING=1")
    }

    /// `EXTEND_TIMEOUT_USEC=<usec>`: the current start-up or shutdown needs `extra` more time.
    pub fn extend_timeout(&self, extra: Duration) -> Result<(), NotifyError> {
        self.notify(&format!("EXTEND_TIMEOUT_USEC={}", extra.as_micros()))
    }

    /// Sends `assignments` (`KEY=VALUE` lines) as one datagram; a no-op without `NOTIFY_SOCKET`.
    pub fn notify(&self, assignments: &str) -> Result<(), NotifyError> {
        let Some(target) = &self.target else {
            if !self.said_disabled.swap(true, Ordering::Relaxed) {
                tracing::debug!("NOTIFY_SOCKET is not set: sd_notify messages are not sent");
            }
            return Ok(());
        };
        let send_error = |source| NotifyError::Send {
            address: target.address.to_string(),
            message: assignments.to_owned(),
            source,
        };
        let sent =
            target.socket.send_to_addr(assignments.as_bytes(), &target.socket_address).map_err(send_error)?;
        if sent != assignments.len() {
            return Err(send_error(std::io::ErrorKind::WriteZero.into()));
        }
        Ok(())
    }
}

/// The watchdog timeout, if `WATCHDOG_USEC` is set and applies to `own_pid`.
fn parse_watchdog(
    watchdog_usec: Option<&str>,
    watchdog_pid: Option<&str>,
    own_pid: u32,
) -> Result<Option<Duration>, NotifyError> {
    let Some(usec_text) = watchdog_usec else {
        return Ok(None);
    };
    let usec: u64 = match usec_text.trim().parse() {
        Ok(usec) if usec > 0 => usec,
        _ => return Err(NotifyError::InvalidWatchdogUsec { value: usec_text.to_owned() }),
    };
    if let Some(pid_text) = watchdog_pid {
        let pid: u32 = match pid_text.trim().parse() {
            Ok(pid) if pid > 0 => pid,
            _ => return Err(NotifyError::InvalidWatchdogPid { value: pid_text.to_owned() }),
        };
        if pid != own_pid {
            return Ok(None);
        }
    }
    Ok(Some(Duration::from_micros(usec)))
}
