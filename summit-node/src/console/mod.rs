//! The operator console: one command language, served on serial ports and on a Unix socket.
//!
//! Modules, in reading order:
//!
//! - [`line`](mod@line): the line discipline, a fixed-size [`LineBuffer`] (256 bytes): CR, LF or
//!   CRLF end a line, backspace and DEL erase; over-long lines, control characters and invalid
//!   UTF-8 are reported once, when the line ends, and never crash or stall the console.
//! - [`command`]: the [`Command`] enum and its parser; which commands change state.
//! - [`render`]: units, aligned text, and the one-line JSON envelope.
//! - [`session`]: a [`Session`] turns a line into a [`Reply`]; read-only sessions are refused
//!   the commands that change state.
//! - [`users`]: operator decisions from peer credentials, `/etc/passwd` and `/etc/group`.
//! - [`serial`]: [`serve_serial`], the console on a serial device (echo, prompt, reopen).
//! - [`unix`]: [`serve_unix`], the console on a Unix socket (mode 0660, peer credentials).
//! - [`client`]: [`run_client`], `summit-node console` and `summit-node status`.
//!
//! Read-only is the default. A serial port is in operator mode when its configuration says
//! `operator = true`; a socket session when the peer is root or in the operator group.
//! `--json` on any line gives one line of JSON: `{"ok":true,"command":"buffer","data":...}` or
//! `{"ok":false,"error":"..."}`, where `data` is the serde form of the views in
//! [`crate::status`].
//!
//! # The socket's wire protocol
//!
//! Plain bytes over a stream socket, UTF-8 text, LF line ends:
//!
//! ```text
//! server -> client   greeting reply (once, on connect)
//! client -> server   a line: the command, ended by LF (CR and CRLF also end a line)
//! server -> client   its reply
//! ... one reply per line, in order; a client may send several lines before reading
//!
//! reply      = *text-line terminator
//! text-line  = any text without control characters, then LF   (never starts with EOT)
//! terminator = EOT ("ok" / "error") [" close"] LF              (EOT is the byte 0x04)
//! ```
//!
//! For example `status` is answered by `node  summit-01 ...\n...\n\x04ok\n`, and an empty
//! line by `\x04ok\n` alone. `error` means the command was refused or failed (the client then
//! exits with 1). ` close` means the server closes the connection after this reply: after
//! `quit`, after a greeting that refuses the session (`console busy: ...`), and never otherwise
//! (the server also closes an idle session, or one whose client stops reading, without a
//! reply). A line the line discipline rejects (too long, a control character, invalid UTF-8) is
//! answered with an `error` reply like any other, so client and server stay in step. The
//! greeting contains `operator mode` when the session may change state.

pub mod client;
pub mod command;
pub mod line;
pub mod render;
pub mod serial;
pub mod session;
pub mod unix;
pub mod users;

pub use client::{run_client, run_client_with, ClientReply, ConsoleConnection};
pub use command::{parse_line, Access, Command, ParseError, ParsedLine};
pub use line::{LineBuffer, LineError, LineEvent, MAX_LINE_BYTES};
pub use serial::{serve_serial, SerialConsoleOptions, DEFAULT_BAUD_RATE, REOPEN_INTERVAL};
pub use session::{Reply, Session};
pub use unix::{serve_unix, UnixConsoleOptions, DEFAULT_MAX_CONNECTIONS, DEFAULT_SOCKET_PATH, SOCKET_MODE};
pub use users::{decide_operator, OperatorDecision, PeerCredentials, UserDatabase};
