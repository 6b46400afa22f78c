//! The console's line discipline: bytes in, whole lines out, in a fixed-size buffer.
//!
//! Both front ends (the serial port and the Unix socket) feed every received byte to a
//! [`LineBuffer`]. CR, LF and CRLF end a line (the LF of a CRLF does not end a second, empty
//! line); backspace (0x08) and DEL (0x7f) erase the last character. A line that does not fit in
//! [`MAX_LINE_BYTES`] is discarded up to its end; a line holding a control character (other than
//! tab) or invalid UTF-8 is rejected. Either way the problem is reported once, when the line ends,
//! so the front end answers every line exactly once and the next line starts clean.
//!
//! The buffer is a `heapless::Vec`: `push` never allocates and never panics, whatever the bytes.

use std::fmt;

/// The longest line the console accepts, bytes (UTF-8), without its terminator.
pub const MAX_LINE_BYTES: usize = 256;

/// Why a line was rejected. Reported once, when the line ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// The line had more than `max_line_bytes` bytes; all of it was discarded.
    TooLong {
        /// The limit ([`MAX_LINE_BYTES`]).
        max_line_bytes: usize,
    },
    /// A control character (other than tab, CR, LF, backspace and DEL) was typed.
    ControlCharacter {
        /// The character (C0 control, or a C1 control encoded in UTF-8).
        character: char,
        /// Where, counted in characters from 1.
        column: usize,
    },
    /// The bytes were not valid UTF-8.
    InvalidUtf8 {
        /// The first byte that is not part of a valid sequence.
        byte: u8,
        /// Where, counted in characters from 1.
        column: usize,
    },
}

impl fmt::Display for LineError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LineError::TooLong { max_line_bytes } => {
                write!(formatter, "line too long: more than {max_line_bytes} bytes; discarded")
            }
            LineError::ControlCharacter { character, column } if u32::from(character) < 0x80 => {
                let code = u32::from(character);
                write!(formatter, "control character 0x{code:02x} at column {column}; line discarded")
            }
            LineError::ControlCharacter { character, column } => {
                let code = u32::from(character);
                write!(formatter, "control character U+{code:04X} at column {column}; line discarded")
            }
            LineError::InvalidUtf8 { byte, column } => {
                write!(formatter, "invalid UTF-8 (byte 0x{byte:02x}) at column {column}; line discarded")
            }
        }
    }
}

impl std::error::Error for LineError {}

/// What one byte did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEvent<'a> {
    /// The byte was added to the line (a terminal echoes it).
    Stored,
    /// Backspace or DEL removed the last character (a terminal erases it).
    Erased,
    /// A line ended: its text, without the terminator; valid UTF-8 without control characters
    /// other than tab. Empty when the user just pressed Enter.
    Line(&'a str),
    /// A line ended and is rejected: why.
    Rejected(LineError),
}

/// A fixed-size line assembler. See the module documentation.
#[derive(Debug, Default)]
pub struct LineBuffer {
    /// The current line (or, right after [`LineEvent::Line`], the line just returned).
    bytes: heapless::Vec<u8, MAX_LINE_BYTES>,
    /// The first problem of the current line; once set, the rest of the line is discarded.
    error: Option<LineError>,
    /// The previous byte was a CR: a LF now completes a CRLF and ends nothing.
    after_carriage_return: bool,
    /// `bytes` still holds the line returned by the last `push`; cleared by the next one.
    holds_returned_line: bool,
}

impl LineBuffer {
    /// An empty buffer.
    pub const fn new() -> LineBuffer {
        LineBuffer {
            bytes: heapless::Vec::new(),
            error: None,
            after_carriage_return: false,
            holds_returned_line: false,
        }
    }

    /// Forgets the current line (e.g. when a serial device was reopened).
    pub fn clear(&mut self) {
        *self = LineBuffer::new();
    }

    /// Bytes of the current, unfinished line (0 once the line is being discarded).
    pub fn len_bytes(&self) -> usize {
        if self.holds_returned_line {
            0
        } else {
            self.bytes.len()
        }
    }

    /// Feeds one byte. `None` when the byte changed nothing visible: the LF of a CRLF, a byte of
    /// a line already being discarded, a backspace on an empty line, a control character (the
    /// line is then rejected when it ends).
    pub fn push(&mut self, byte: u8) -> Option<LineEvent<'_>> {
        if self.holds_returned_line {
            self.bytes.clear();
            self.holds_returned_line = false;
        }
        let after_carriage_return = std::mem::replace(&mut self.after_carriage_return, false);
        match byte {
            b'\n' if after_carriage_return => None,
            b'\r' | b'\n' => {
                self.after_carriage_return = byte == b'\r';
                Some(self.end_line())
            }
            0x08 | 0x7f => self.erase(),
            b'\t' | 0x20..=0x7e | 0x80..=0xff => self.store(byte),
            _ => {
                let column = self.next_column();
                self.reject(LineError::ControlCharacter { character: char::from(byte), column });
                None
            }
        }
    }

    fn store(&mut self, byte: u8) -> Option<LineEvent<'_>> {
        if self.error.is_some() {
            return None;
        }
        if self.bytes.push(byte).is_err() {
            self.reject(LineError::TooLong { max_line_bytes: MAX_LINE_BYTES });
            return None;
        }
        Some(LineEvent::Stored)
    }

    fn erase(&mut self) -> Option<LineEvent<'_>> {
        if self.error.is_some() || self.bytes.is_empty() {
            return None;
        }
        // Remove a whole UTF-8 character: its continuation bytes, then its first byte.
        while let Some(byte) = self.bytes.pop() {
            if !is_utf8_continuation(byte) {
                break;
            }
        }
        Some(LineEvent::Erased)
    }

    /// Keeps the first problem of the line and discards the rest of it.
    fn reject(&mut self, error: LineError) {
        if self.error.is_none() {
            self.error = Some(error);
        }
        self.bytes.clear();
    }

    fn end_line(&mut self) -> LineEvent<'_> {
        if let Some(error) = self.error.take() {
            self.bytes.clear();
            return LineEvent::Rejected(error);
        }
        if let Some(error) = find_line_error(&self.bytes) {
            self.bytes.clear();
            return LineEvent::Rejected(error);
        }
        self.holds_returned_line = true;
        // `find_line_error` found the bytes valid UTF-8, so the fallback is never taken.
        LineEvent::Line(std::str::from_utf8(&self.bytes).unwrap_or(""))
    }

    /// The column (from 1, in characters) the next character would occupy.
    fn next_column(&self) -> usize {
        count_characters(&self.bytes) + 1
    }
}

/// Invalid UTF-8 or a C1 control character in a finished line.
fn find_line_error(bytes: &[u8]) -> Option<LineError> {
    match std::str::from_utf8(bytes) {
        Err(error) => {
            let valid_bytes = error.valid_up_to();
            let byte = bytes.get(valid_bytes).copied().unwrap_or(0);
            Some(LineError::InvalidUtf8 { byte, column: count_characters(&bytes[..valid_bytes]) + 1 })
        }
        Ok(text) => text
            .chars()
            .enumerate()
            .find(|&(_, character)| character.is_control() && character != '\t')
            .map(|(index, character)| LineError::ControlCharacter { character, column: index + 1 }),
    }
}

fn is_utf8_continuation(byte: u8) -> bool {
    byte & 0xc0 == 0x80
}

fn count_characters(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&byte| !is_utf8_continuation(byte)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` and collects what ended: `Ok(line)` or `Err(message)`.
    fn feed(buffer: &mut LineBuffer, input: &[u8]) -> Vec<Result<String, String>> {
        let mut ended = Vec::new();
        for &byte in input {
            match buffer.push(byte) {
                Some(LineEvent::Line(line)) => ended.push(Ok(line.to_string())),
                Some(LineEvent::Rejected(error)) => ended.push(Err(error.to_string())),
                Some(LineEvent::Stored) | Some(LineEvent::Erased) | None => {}
            }
        }
        ended
    }

    fn lines(input: &[u8]) -> Vec<Result<String, String>> {
        feed(&mut LineBuffer::new(), input)
    }

    #[test]
    fn cr_lf_and_crlf_each_end_one_line() {
        assert_eq!(lines(b"status\r"), vec![Ok("status".to_string())]);
        assert_eq!(lines(b"status\n"), vec![Ok("status".to_string())]);
        assert_eq!(lines(b"status\r\nlink\r\n"), vec![Ok("status".to_string()), Ok("link".to_string())]);
    }

    #[test]
    fn crlf_does_not_give_an_empty_second_line_but_lf_cr_and_double_cr_do() {
        assert_eq!(lines(b"a\r\n"), vec![Ok("a".to_string())]);
        assert_eq!(lines(b"a\n\r"), vec![Ok("a".to_string()), Ok(String::new())]);
        assert_eq!(lines(b"a\r\r"), vec![Ok("a".to_string()), Ok(String::new())]);
        assert_eq!(lines(b"\r\n\r\n"), vec![Ok(String::new()), Ok(String::new())]);
    }

    #[test]
    fn backspace_and_del_erase_the_last_character() {
        assert_eq!(lines(b"statx\x08us\r"), vec![Ok("status".to_string())]);
        assert_eq!(lines(b"statx\x7fus\r"), vec![Ok("status".to_string())]);
        assert_eq!(lines(b"\x08\x7fab\x08\x08\x08c\r"), vec![Ok("c".to_string())]);
    }

    #[test]
    fn backspace_erases_a_whole_multibyte_character() {
        let mut input = "caf\u{e9}".as_bytes().to_vec();
        input.extend_from_slice(b"\x7fe\r");
        assert_eq!(lines(&input), vec![Ok("cafe".to_string())]);
    }

    #[test]
    fn events_say_what_a_terminal_should_echo() {
        let mut buffer = LineBuffer::new();
        assert_eq!(buffer.push(b'a'), Some(LineEvent::Stored));
        assert_eq!(buffer.push(0x7f), Some(LineEvent::Erased));
        assert_eq!(buffer.push(0x7f), None);
        assert_eq!(buffer.push(b'\t'), Some(LineEvent::Stored));
        assert_eq!(buffer.push(b'\r'), Some(LineEvent::Line("\t")));
        assert_eq!(buffer.push(b'\n'), None);
        assert_eq!(buffer.len_bytes(), 0);
    }

    #[test]
    fn a_line_of_exactly_256_bytes_is_accepted() {
        let mut input = vec![b'x'; MAX_LINE_BYTES];
        input.push(b'\n');
        assert_eq!(lines(&input), vec![Ok("x".repeat(MAX_LINE_BYTES))]);
    }

    #[test]
    fn a_line_of_257_bytes_is_discarded_and_reported_once() {
        let mut input = vec![b'x'; MAX_LINE_BYTES + 1];
        input.extend_from_slice(b"\r\nstatus\r\n");
        assert_eq!(
            lines(&input),
            vec![Err("line too long: more than 256 bytes; discarded".to_string()), Ok("status".to_string())]
        );
    }

    #[test]
    fn ten_kilobytes_without_a_newline_report_nothing_until_the_line_ends() {
        let mut buffer = LineBuffer::new();
        assert!(feed(&mut buffer, &[b'y'; 10_240]).is_empty());
        assert_eq!(buffer.len_bytes(), 0, "the discarded line is not kept");
        assert_eq!(
            feed(&mut buffer, b"\nbuffer\n"),
            vec![Err("line too long: more than 256 bytes; discarded".to_string()), Ok("buffer".to_string())]
        );
    }

    #[test]
    fn backspace_does_not_revive_a_discarded_line() {
        let mut input = vec![b'x'; MAX_LINE_BYTES + 1];
        input.extend_from_slice(&[0x7f; 10]);
        input.push(b'\r');
        assert_eq!(lines(&input), vec![Err("line too long: more than 256 bytes; discarded".to_string())]);
    }

    #[test]
    fn control_characters_are_reported_with_their_column() {
        assert_eq!(
            lines(b"stat\x1b[Aus\r"),
            vec![Err("control character 0x1b at column 5; line discarded".to_string())]
        );
        assert_eq!(
            lines(b"\x00\n"),
            vec![Err("control character 0x00 at column 1; line discarded".to_string())]
        );
        assert_eq!(
            lines("\u{e9}\u{85}x\n".as_bytes()),
            vec![Err("control character U+0085 at column 2; line discarded".to_string())]
        );
    }

    #[test]
    fn only_the_first_problem_of_a_line_is_reported() {
        let mut input = b"a\x01b\x02".to_vec();
        input.extend_from_slice(&[b'z'; 1000]);
        input.push(b'\n');
        assert_eq!(
            lines(&input),
            vec![Err("control character 0x01 at column 2; line discarded".to_string())]
        );
    }

    #[test]
    fn invalid_utf8_is_reported_with_the_byte_and_column() {
        assert_eq!(
            lines(b"stat\xffus\n"),
            vec![Err("invalid UTF-8 (byte 0xff) at column 5; line discarded".to_string())]
        );
        // A truncated multi-byte sequence at the end of the line.
        assert_eq!(
            lines(b"ab\xc3\n"),
            vec![Err("invalid UTF-8 (byte 0xc3) at column 3; line discarded".to_string())]
        );
    }

    #[test]
    fn interleaved_garbage_then_a_valid_command_still_gives_the_command() {
        let mut input = Vec::new();
        input.extend_from_slice(b"\xfe\xfe\x1b\x03garbage\r\n");
        input.extend_from_slice(&[0xaa; 3000]);
        input.extend_from_slice(b"\n\x04\x07\r\n");
        input.extend_from_slice(b"drain\r\n");
        let ended = lines(&input);
        assert_eq!(ended.len(), 4, "{ended:?}");
        assert!(ended[..3].iter().all(Result::is_err), "{ended:?}");
        assert_eq!(ended[3], Ok("drain".to_string()));
    }

    #[test]
    fn every_byte_value_in_any_order_never_panics() {
        let mut buffer = LineBuffer::new();
        let mut state: u32 = 0x1234_5678;
        for _ in 0..200_000 {
            // xorshift: a fixed, reproducible byte sequence.
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let _ = buffer.push(state.to_le_bytes()[0]);
        }
        for byte in 0..=u8::MAX {
            let _ = buffer.push(byte);
        }
        assert!(buffer.len_bytes() <= MAX_LINE_BYTES);
    }
}
