//! The console on a serial port (the rack's console server, or a laptop on a USB adapter):
//! 8N1, no flow control, opened through `serialport` with a short read timeout.
//!
//! A serial terminal expects the far end to echo: typed characters are echoed, backspace erases
//! on screen, a control character shows as `^X`, output lines end in CRLF, and a prompt
//! (`summit> `, or `summit# ` when the port is configured for operator mode) follows every reply.
//! If the device cannot be opened, or goes away (a USB adapter unplugged), the error is logged
//! naming the device and the port is reopened every second until the node stops.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::console::line::{LineBuffer, LineEvent};
use crate::console::session::{Reply, Session};
use crate::status::NodeControl;

/// The usual console speed.
pub const DEFAULT_BAUD_RATE: u32 = 115_200;
/// How long to wait before reopening a device that failed or went away.
pub const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

/// The read timeout: how often the thread looks at the stop flag.
const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// Output nobody takes (a terminal holding the line with no reader) is dropped after this long.
const WRITE_GIVE_UP: Duration = Duration::from_secs(10);
/// Bytes read at a time.
const READ_CHUNK_BYTES: usize = 256;
/// While a device cannot be opened, the error is logged on the first attempt and then once per
/// this many attempts (once a minute at the default interval).
const OPEN_FAILURES_PER_LOG: u64 = 60;

/// A serial console port's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialConsoleOptions {
    /// The device (`/dev/ttyS0`, `/dev/ttyUSB0`, a pseudo-terminal's slave).
    pub device: PathBuf,
    /// Bits per second (8N1, no flow control).
    pub baud_rate: u32,
    /// Whoever is on this port may change state (set only for a port in a locked rack).
    pub operator: bool,
}

impl SerialConsoleOptions {
    /// Defaults: [`DEFAULT_BAUD_RATE`], read-only.
    pub fn new(device: impl Into<PathBuf>) -> SerialConsoleOptions {
        SerialConsoleOptions { device: device.into(), baud_rate: DEFAULT_BAUD_RATE, operator: false }
    }
}

/// Serves the console on a serial device on its own thread until `stop` is set. Fails only for
/// a bad configuration (baud rate 0, a path that is not UTF-8) or if the thread cannot start;
/// a device that cannot be opened is retried, never fatal.
pub fn serve_serial(
    options: SerialConsoleOptions,
    node: Arc<dyn NodeControl>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    if options.baud_rate == 0 {
        let message = format!("serial console {}: baud rate must be above 0", options.device.display());
        return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
    }
    let Some(device) = options.device.to_str().map(str::to_string) else {
        let message = format!("serial console {}: the device path is not UTF-8", options.device.display());
        return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
    };
    let server = SerialServer { device, options, node, stop };
    thread::Builder::new().name("console-serial".to_string()).spawn(move || server.run())
}

/// How a port's session ended.
enum PortEnd {
    /// The stop flag was set.
    Stopped,
    /// The device failed or went away: why.
    Lost(io::Error),
}

struct SerialServer {
    /// `options.device` as UTF-8 (what `serialport` takes).
    device: String,
    options: SerialConsoleOptions,
    node: Arc<dyn NodeControl>,
    stop: Arc<AtomicBool>,
}

impl SerialServer {
    fn run(self) {
        let mut open_failures_in_a_row: u64 = 0;
        while !self.stop.load(Ordering::Acquire) {
            match self.open() {
                Ok(port) => {
                    tracing::info!(
                        device = %self.device,
                        baud_rate = self.options.baud_rate,
                        operator = self.options.operator,
                        open_failures_in_a_row,
                        "console: serial port open"
                    );
                    open_failures_in_a_row = 0;
                    match self.serve_port(port) {
                        PortEnd::Stopped => break,
                        PortEnd::Lost(error) => {
                            let device = &self.device;
                            tracing::error!(%device, %error, "console: serial port lost; reopening");
                        }
                    }
                }
                Err(error) => {
                    if open_failures_in_a_row.is_multiple_of(OPEN_FAILURES_PER_LOG) {
                        tracing::error!(
                            device = %self.device,
                            %error,
                            open_failures_in_a_row,
                            "console: cannot open serial port; retrying"
                        );
                    }
                    open_failures_in_a_row += 1;
                }
            }
            self.wait_before_reopening();
        }
        tracing::info!(device = %self.device, "console: serial port closed");
    }

    fn open(&self) -> Result<Box<dyn serialport::SerialPort>, serialport::Error> {
        serialport::new(self.device.as_str(), self.options.baud_rate)
            .data_bits(serialport::DataBits::Eight)
            .parity(serialport::Parity::None)
            .stop_bits(serialport::StopBits::One)
            .flow_control(serialport::FlowControl::None)
            .timeout(READ_TIMEOUT)
            .open()
    }

    /// Sleeps for the reopen interval in short steps, returning early when `stop` is set.
    fn wait_before_reopening(&self) {
        let deadline = Instant::now() + REOPEN_INTERVAL;
        while !self.stop.load(Ordering::Acquire) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            thread::sleep(left.min(READ_TIMEOUT));
        }
    }

    fn serve_port(&self, mut port: Box<dyn serialport::SerialPort>) -> PortEnd {
        let node = &*self.node;
        let origin = format!("serial {}", self.device);
        let mut session = Session::with_origin(self.options.operator, origin);
        let mut line = LineBuffer::new();
        let mut output: Vec<u8> = Vec::with_capacity(4096);
        push_text(&mut output, &format!("\n{}\n{}", session.greeting(node), session.prompt()));
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        loop {
            if let Err(error) = self.flush(&mut port, &mut output) {
                return PortEnd::Lost(error);
            }
            if self.stop.load(Ordering::Acquire) {
                return PortEnd::Stopped;
            }
            let received = match port.read(&mut chunk) {
                Ok(0) => return PortEnd::Lost(io::Error::new(io::ErrorKind::UnexpectedEof, "hang-up")),
                Ok(received) => received,
                Err(error) if is_timeout(&error) || error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return PortEnd::Lost(error),
            };
            for &byte in &chunk[..received] {
                let reply = match line.push(byte) {
                    Some(LineEvent::Stored) => {
                        output.push(byte);
                        continue;
                    }
                    Some(LineEvent::Erased) => {
                        output.extend_from_slice(b"\x08 \x08");
                        continue;
                    }
                    None => {
                        push_caret_notation(&mut output, byte);
                        continue;
                    }
                    Some(LineEvent::Line(text)) => session.handle_line(text, node),
                    Some(LineEvent::Rejected(error)) => session.reject_line(&error),
                };
                self.push_reply(&mut output, &mut session, &reply);
                // Write each reply before reading on, so output stays bounded by one reply.
                if let Err(error) = self.flush(&mut port, &mut output) {
                    return PortEnd::Lost(error);
                }
            }
        }
    }

    /// The reply after the echoed line end, then the prompt. `quit` starts a fresh session.
    fn push_reply(&self, output: &mut Vec<u8>, session: &mut Session, reply: &Reply) {
        output.extend_from_slice(b"\r\n");
        if !reply.text.is_empty() {
            push_text(output, &reply.text);
            output.extend_from_slice(b"\r\n");
        }
        if reply.close {
            *session = Session::with_origin(self.options.operator, session.origin().to_string());
            push_text(output, &format!("{}\n", session.greeting(&*self.node)));
        }
        output.extend_from_slice(session.prompt().as_bytes());
    }

    /// Writes `output` and clears it. Output the far end does not take within [`WRITE_GIVE_UP`]
    /// is dropped (and logged); a write error means the device is gone.
    fn flush(&self, port: &mut Box<dyn serialport::SerialPort>, output: &mut Vec<u8>) -> io::Result<()> {
        let deadline = Instant::now() + WRITE_GIVE_UP;
        let mut written = 0;
        let result = loop {
            if written == output.len() {
                break Ok(());
            }
            match port.write(&output[written..]) {
                Ok(0) => break Err(io::Error::new(io::ErrorKind::WriteZero, "the port took no bytes")),
                Ok(count) => written += count,
                Err(error) if is_timeout(&error) || error.kind() == io::ErrorKind::Interrupted => {
                    if Instant::now() >= deadline || self.stop.load(Ordering::Acquire) {
                        let (device, dropped_bytes) = (&self.device, output.len() - written);
                        tracing::warn!(%device, dropped_bytes, "console: serial output not taken");
                        break Ok(());
                    }
                }
                Err(error) => break Err(error),
            }
        };
        output.clear();
        result
    }
}

/// Text with LF line ends as CRLF.
fn push_text(output: &mut Vec<u8>, text: &str) {
    for (index, piece) in text.split('\n').enumerate() {
        if index > 0 {
            output.extend_from_slice(b"\r\n");
        }
        output.extend_from_slice(piece.as_bytes());
    }
}

/// Shows a C0 control character the way terminals do (`^[` for ESC), so the operator sees why
/// the line will be refused. Other ignored bytes (the LF of a CRLF, input past the line limit,
/// a backspace on an empty line) show nothing.
fn push_caret_notation(output: &mut Vec<u8>, byte: u8) {
    let shown = matches!(byte, 0x00..=0x1f) && !matches!(byte, b'\r' | b'\n' | 0x08 | b'\t');
    if shown {
        output.push(b'^');
        output.push(byte + 0x40);
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_lines_end_in_crlf() {
        let mut output = Vec::new();
        push_text(&mut output, "a\nb\n");
        assert_eq!(output, b"a\r\nb\r\n");
    }

    #[test]
    fn control_characters_echo_in_caret_notation() {
        let mut output = Vec::new();
        for byte in [0x1b, 0x03, b'\n', 0x7f, 0x08] {
            push_caret_notation(&mut output, byte);
        }
        assert_eq!(output, b"^[^C");
    }
}
