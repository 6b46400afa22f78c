//! The socket console's client: `summit-node console` (interactive, or one command) and
//! `summit-node status`. It speaks the line protocol described in [`crate::console`].
//!
//! To stay in step with the server, the client counts the lines it sends exactly as the server
//! will (with the same [`LineBuffer`]), and reads that many replies.

use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::console::line::{LineBuffer, LineEvent, MAX_LINE_BYTES};
use crate::console::session::{GREETING_OPERATOR_MARK, PROMPT_OPERATOR, PROMPT_READ_ONLY};
use crate::console::unix::REPLY_END_BYTE;

/// How long the client waits for a reply (an observatory-control command may take a while).
pub const CLIENT_REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest reply the client accepts (a `log 1000` is far below this).
pub const MAX_REPLY_BYTES: usize = 16 << 20;
/// Input lines longer than this are cut here (the server refuses anything over
/// [`MAX_LINE_BYTES`] anyway, and says so).
const MAX_INPUT_LINE_BYTES: usize = 4 * MAX_LINE_BYTES;

/// One reply as the client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientReply {
    /// The reply's lines, joined with `\n` (no trailing newline).
    pub text: String,
    /// The server said `ok`.
    pub ok: bool,
    /// The server closes the connection after this reply.
    pub close: bool,
}

/// An open session on the console socket.
#[derive(Debug)]
pub struct ConsoleConnection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// The server's greeting.
    pub greeting: ClientReply,
    /// The session is in operator mode.
    pub operator: bool,
}

impl ConsoleConnection {
    /// Connects and reads the greeting. A refused session ("console busy") is an error carrying
    /// the server's message.
    pub fn connect(socket: &Path) -> Result<ConsoleConnection, String> {
        let stream = UnixStream::connect(socket).map_err(|error| connect_error(socket, &error))?;
        stream
            .set_read_timeout(Some(CLIENT_REPLY_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(CLIENT_REPLY_TIMEOUT)))
            .map_err(|error| format!("console socket {}: {error}", socket.display()))?;
        let writer =
            stream.try_clone().map_err(|error| format!("console socket {}: {error}", socket.display()))?;
        let mut reader = BufReader::new(stream);
        let greeting = read_reply(&mut reader)?;
        if !greeting.ok || greeting.close {
            return Err(greeting.text);
        }
        let operator = greeting.text.contains(GREETING_OPERATOR_MARK);
        Ok(ConsoleConnection { reader, writer, greeting, operator })
    }

    /// Sends one line and returns its reply. A line the server will see as several lines (it
    /// holds a CR) is refused here, so replies stay in step.
    pub fn request(&mut self, line: &str) -> Result<ClientReply, String> {
        let bytes = line.trim_end_matches(['\r', '\n']).as_bytes();
        if count_lines(bytes) != 0 || bytes.contains(&b'\n') {
            return Err("a command must be one line (no CR or LF inside)".to_string());
        }
        let mut replies = self.send(bytes)?;
        Ok(replies.pop().unwrap_or(ClientReply { text: String::new(), ok: true, close: false }))
    }

    /// Sends `bytes` plus a LF and reads one reply per line the server will see.
    fn send(&mut self, bytes: &[u8]) -> Result<Vec<ClientReply>, String> {
        let mut message = Vec::with_capacity(bytes.len() + 1);
        message.extend_from_slice(bytes);
        message.push(b'\n');
        self.writer.write_all(&message).map_err(|error| format!("cannot send to summit-node: {error}"))?;
        let mut replies = Vec::new();
        for _ in 0..count_lines(&message) {
            let reply = read_reply(&mut self.reader)?;
            let close = reply.close;
            replies.push(reply);
            if close {
                self.wait_closed();
                break;
            }
        }
        Ok(replies)
    }

    /// After a reply that ends the session: waits (within the reply timeout) until the server
    /// has closed the connection, so its place is free when this returns.
    fn wait_closed(&mut self) {
        let mut ignored = [0u8; 256];
        while matches!(self.reader.read(&mut ignored), Ok(count) if count > 0) {}
    }

    fn prompt(&self) -> &'static str {
        if self.operator {
            PROMPT_OPERATOR
        } else {
            PROMPT_READ_ONLY
        }
    }
}

/// `summit-node console [command]` and `summit-node status`: with a command, sends it, prints
/// the reply and returns the exit code (0 if the reply was ok, 1 if it was an error); without,
/// runs interactively (stdin lines to the socket, replies to stdout; prompts only when stdin is
/// a terminal) and returns 0 at the end of the input or after `quit`. `Err`: the console could
/// not be reached or the connection broke (the message says which socket and why).
pub fn run_client(socket: &Path, one_command: Option<&str>) -> Result<i32, String> {
    let stdin = io::stdin();
    let prompts = stdin.is_terminal();
    let stdout = io::stdout();
    run_client_with(socket, one_command, &mut stdin.lock(), &mut stdout.lock(), prompts)
}

/// [`run_client`] with its input and output given (for tests and embedding).
pub fn run_client_with(
    socket: &Path,
    one_command: Option<&str>,
    input: &mut dyn BufRead,
    output: &mut dyn Write,
    prompts: bool,
) -> Result<i32, String> {
    let mut connection = ConsoleConnection::connect(socket)?;
    let write_error = |error: io::Error| format!("cannot write the reply: {error}");
    if let Some(command) = one_command {
        let reply = connection.request(command)?;
        print_reply(output, &reply).map_err(write_error)?;
        return Ok(if reply.ok { 0 } else { 1 });
    }
    print_reply(output, &connection.greeting).map_err(write_error)?;
    loop {
        if prompts {
            output
                .write_all(connection.prompt().as_bytes())
                .and_then(|()| output.flush())
                .map_err(write_error)?;
        }
        let Some(line) = read_input_line(input).map_err(|error| format!("cannot read input: {error}"))?
        else {
            return Ok(0);
        };
        let bytes = strip_line_end(&line);
        for reply in connection.send(bytes)? {
            print_reply(output, &reply).map_err(write_error)?;
            if reply.close {
                return Ok(0);
            }
        }
    }
}

fn print_reply(output: &mut dyn Write, reply: &ClientReply) -> io::Result<()> {
    if !reply.text.is_empty() {
        output.write_all(reply.text.as_bytes())?;
        output.write_all(b"\n")?;
    }
    output.flush()
}

/// One input line (with its LF), at most [`MAX_INPUT_LINE_BYTES`]; the rest of a longer line is
/// skipped. `None` at the end of the input.
fn read_input_line(input: &mut dyn BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let read = input.take(MAX_INPUT_LINE_BYTES as u64).read_until(b'\n', &mut line)?;
    if read == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\n") && line.len() == MAX_INPUT_LINE_BYTES {
        let mut skipped = Vec::new();
        loop {
            skipped.clear();
            let read = input.take(MAX_INPUT_LINE_BYTES as u64).read_until(b'\n', &mut skipped)?;
            if read == 0 || skipped.ends_with(b"\n") {
                break;
            }
        }
    }
    Ok(Some(line))
}

fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// How many lines the server's line discipline sees in `bytes` (each is answered once).
fn count_lines(bytes: &[u8]) -> usize {
    let mut discipline = LineBuffer::new();
    bytes
        .iter()
        .filter(|&&byte| {
            matches!(discipline.push(byte), Some(LineEvent::Line(_)) | Some(LineEvent::Rejected(_)))
        })
        .count()
}

/// Reads reply lines up to the terminator line (EOT, `ok`|`error`, optional ` close`).
fn read_reply(reader: &mut BufReader<UnixStream>) -> Result<ClientReply, String> {
    let mut text = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = (MAX_REPLY_BYTES + 1).saturating_sub(text.len()) as u64;
        let read = reader.by_ref().take(limit).read_until(b'\n', &mut line).map_err(|error| {
            if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                format!("no reply from summit-node within {} s", CLIENT_REPLY_TIMEOUT.as_secs())
            } else {
                format!("cannot read from summit-node: {error}")
            }
        })?;
        if read == 0 {
            return Err("summit-node closed the connection".to_string());
        }
        if !line.ends_with(b"\n") {
            return Err(format!("the reply is larger than {MAX_REPLY_BYTES} bytes; giving up"));
        }
        if line.first() == Some(&REPLY_END_BYTE) {
            let terminator = String::from_utf8_lossy(&line[1..]);
            let mut words = terminator.split_whitespace();
            let ok = match words.next() {
                Some("ok") => true,
                Some("error") => false,
                _ => {
                    return Err(format!(
                        "protocol error: unexpected reply terminator {:?}",
                        terminator.trim_end()
                    ))
                }
            };
            let close = words.next() == Some("close");
            text.pop(); // The last line's LF.
            return Ok(ClientReply { text: String::from_utf8_lossy(&text).into_owned(), ok, close });
        }
        text.extend_from_slice(&line);
    }
}

fn connect_error(socket: &Path, error: &io::Error) -> String {
    let hint = match error.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => "; is summit-node running?",
        io::ErrorKind::PermissionDenied => "; the socket is mode 0660: are you in its group?",
        _ => "",
    };
    format!("cannot connect to the console socket {}: {error}{hint}", socket.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_as_the_server_counts_them() {
        assert_eq!(count_lines(b"status\n"), 1);
        assert_eq!(count_lines(b"status\r\n"), 1);
        assert_eq!(count_lines(b"a\rb\n"), 2);
        assert_eq!(count_lines(b"no end"), 0);
    }

    #[test]
    fn long_input_lines_are_cut_and_the_rest_skipped() {
        let mut input = vec![b'x'; 3 * MAX_INPUT_LINE_BYTES];
        input.extend_from_slice(b"\nstatus\n");
        let mut reader = &input[..];
        let first = read_input_line(&mut reader).ok().flatten().unwrap_or_default();
        assert_eq!(first.len(), MAX_INPUT_LINE_BYTES);
        assert_eq!(read_input_line(&mut reader).ok().flatten(), Some(b"status\n".to_vec()));
        assert_eq!(read_input_line(&mut reader).ok().flatten(), None);
    }

    #[test]
    fn line_ends_are_stripped() {
        assert_eq!(strip_line_end(b"a\r\n"), b"a");
        assert_eq!(strip_line_end(b"a\n"), b"a");
        assert_eq!(strip_line_end(b"a"), b"a");
    }
}
