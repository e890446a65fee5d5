//! The DATA receiver: turns the dot-stuffed wire form into the message, finds the end, and
//! refuses SMTP smuggling.
//!
//! End of data is exactly `CRLF . CRLF` (the initial CRLF being the one that ended the DATA
//! command). A bare LF or a bare CR anywhere poisons the message: it is still read to the
//! real end marker (so the session stays in sync) but rejected with a 5xx, like Postfix's
//! `smtpd_forbid_bare_newline`. Crucially a lone LF never starts a new line, so `\n.\r\n`
//! and `\n.\n` are never taken as the end — no smuggled commands can follow.
//! The receiver also enforces the size limit and the 1000-octet text line limit without
//! ever storing more than the size limit.

use crate::limits;
use crate::reply::Reply;

/// Why a received message is refused (all detected only after the end marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    /// A LF not preceded by CR.
    BareLf,
    /// A CR not followed by LF.
    BareCr,
    /// A NUL byte (not valid in 7bit or 8bitmime content, RFC 6152).
    Nul,
    /// A text line over 1000 octets including CRLF.
    LineTooLong,
    /// More than the size limit.
    TooBig,
}

impl DataError {
    /// The reply after the end marker.
    pub fn reply(&self) -> Reply {
        match self {
            Self::BareLf => Reply::new(
                554,
                "5.6.0",
                "Message rejected: bare <LF> received (lines must end in CRLF)",
            ),
            Self::BareCr => Reply::new(
                554,
                "5.6.0",
                "Message rejected: bare <CR> received (lines must end in CRLF)",
            ),
            Self::Nul => Reply::new(554, "5.6.0", "Message rejected: NUL character in message"),
            Self::LineTooLong => Reply::new(
                554,
                "5.6.0",
                format!(
                    "Message rejected: line longer than {} octets",
                    limits::TEXT_LINE
                ),
            ),
            Self::TooBig => Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ),
        }
    }
}

/// Result of feeding bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// All input consumed; the end marker has not been seen yet.
    NeedMore,
    /// The end marker ended after `consumed` bytes of this input; the rest belongs to the
    /// next command (pipelining).
    Done {
        /// Bytes of the last input that belonged to the message.
        consumed: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line.
    LineStart,
    /// Inside a line.
    Middle,
    /// After a CR (expecting LF).
    Cr,
    /// After a `.` at the start of a line.
    Dot,
    /// After `.` CR at the start of a line.
    DotCr,
    /// The end marker was seen.
    Finished,
}

/// Incremental DATA receiver.
#[derive(Debug)]
pub struct DataReceiver {
    body: Vec<u8>,
    max_size: usize,
    state: State,
    line_len: usize,
    error: Option<DataError>,
}

impl DataReceiver {
    /// A receiver that accepts at most `max_size` octets of message (after unstuffing).
    pub fn new(max_size: usize) -> Self {
        Self {
            body: Vec::with_capacity(max_size.min(64 * 1024)),
            max_size,
            state: State::LineStart,
            line_len: 0,
            error: None,
        }
    }

    fn poison(&mut self, e: DataError) {
        if self.error.is_none() {
            self.error = Some(e);
            self.body = Vec::new();
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if self.body.len() + bytes.len() > self.max_size {
            self.poison(DataError::TooBig);
            return;
        }
        self.body.extend_from_slice(bytes);
    }

    /// Feed the next bytes from the wire.
    pub fn feed(&mut self, input: &[u8]) -> Progress {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Finished {
                return Progress::Done { consumed: i };
            }
            // Fast path: inside a line, take the whole run of ordinary bytes at once; only
            // CR, LF and NUL need the state machine.
            if self.state == State::Middle {
                let rest = &input[i..];
                let run = rest
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n' || b == 0)
                    .unwrap_or(rest.len());
                if run > 0 {
                    self.line_len += run;
                    if self.line_len > limits::TEXT_LINE {
                        self.poison(DataError::LineTooLong);
                    }
                    self.emit(&rest[..run]);
                    i += run;
                    continue;
                }
            }
            self.step(input[i]);
            i += 1;
        }
        if self.state == State::Finished {
            Progress::Done {
                consumed: input.len(),
            }
        } else {
            Progress::NeedMore
        }
    }

    /// One byte through the state machine.
    fn step(&mut self, b: u8) {
        self.line_len += 1;
        if self.line_len > limits::TEXT_LINE {
            self.poison(DataError::LineTooLong);
        }
        if b == 0 {
            self.poison(DataError::Nul);
        }
        self.state = match (self.state, b) {
            (State::LineStart, b'.') => State::Dot,
            (State::LineStart | State::Middle, b'\r') => State::Cr,
            (State::LineStart | State::Middle, b'\n') => {
                // Never a line start: this is what defeats `\n.\n` smuggling.
                self.poison(DataError::BareLf);
                State::Middle
            }
            (State::Cr, b'\n') => {
                self.emit(b"\r\n");
                self.line_len = 0;
                State::LineStart
            }
            (State::Cr, b'\r') => {
                self.poison(DataError::BareCr);
                State::Cr
            }
            (State::Cr, other) => {
                self.poison(DataError::BareCr);
                self.emit(&[other]);
                State::Middle
            }
            (State::Dot, b'\r') => State::DotCr,
            (State::Dot, b'\n') => {
                self.poison(DataError::BareLf);
                State::Middle
            }
            // Dot-unstuffing (RFC 5321 §4.5.2): drop the leading dot, keep the rest.
            (State::Dot, other) => {
                self.emit(&[other]);
                State::Middle
            }
            (State::DotCr, b'\n') => State::Finished,
            (State::DotCr, other) => {
                // ".\r" followed by something else: the CR is bare.
                self.poison(DataError::BareCr);
                if other == b'\r' {
                    State::Cr
                } else {
                    self.emit(&[other]);
                    State::Middle
                }
            }
            (State::Middle | State::LineStart, other) => {
                self.emit(&[other]);
                State::Middle
            }
            (State::Finished, _) => unreachable!("checked above"),
        };
    }

    /// Bytes of message accepted so far (0 once poisoned).
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether nothing has been accepted.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// Whether the end marker has been seen.
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// The message (with CRLF line endings, unstuffed), or why it is refused.
    /// Call after [`Progress::Done`].
    pub fn finish(self) -> Result<Vec<u8>, DataError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `input` through a receiver fed in the given chunks; returns the result and the
    /// total bytes consumed.
    fn run(max: usize, chunks: &[&[u8]]) -> (Option<Result<Vec<u8>, DataError>>, usize) {
        let mut r = DataReceiver::new(max);
        let mut total = 0;
        for c in chunks {
            match r.feed(c) {
                Progress::NeedMore => total += c.len(),
                Progress::Done { consumed } => return (Some(r.finish()), total + consumed),
            }
        }
        (None, total)
    }

    #[test]
    fn table_split_at_every_byte() {
        type Case = (
            &'static [u8],
            Option<Result<&'static [u8], DataError>>,
            usize,
        );
        let long_line: &'static [u8] = Box::leak(
            format!("{}\r\n.\r\n", "a".repeat(999))
                .into_bytes()
                .into_boxed_slice(),
        );
        let ok_line: &'static [u8] = Box::leak(
            format!("{}\r\n.\r\n", "a".repeat(998))
                .into_bytes()
                .into_boxed_slice(),
        );
        let ok_line_body: &'static [u8] = Box::leak(
            format!("{}\r\n", "a".repeat(998))
                .into_bytes()
                .into_boxed_slice(),
        );
        let cases: Vec<Case> = vec![
            (b".\r\n", Some(Ok(b"")), 3),
            (
                b"Subject: x\r\n\r\nhi\r\n.\r\n",
                Some(Ok(b"Subject: x\r\n\r\nhi\r\n")),
                21,
            ),
            (b"a\r\n.\r\nQUIT\r\n", Some(Ok(b"a\r\n")), 6),
            (b"..leading dot\r\n.\r\n", Some(Ok(b".leading dot\r\n")), 18),
            (b".x\r\n.\r\n", Some(Ok(b"x\r\n")), 7),
            (b"a.\r\n.\r\n", Some(Ok(b"a.\r\n")), 7),
            (b"a\r\n..\r\n.\r\n", Some(Ok(b"a\r\n.\r\n")), 10),
            (b"a\r\n", None, 3),
            (b"a\r\n.", None, 4),
            (b"a\r\n.\r", None, 5),
            // Smuggling attempts: none of these end the message early.
            (
                b"a\n.\nMAIL FROM:<x@y>\r\n.\r\n",
                Some(Err(DataError::BareLf)),
                24,
            ),
            (
                b"a\n.\r\nRCPT TO:<x@y>\r\n.\r\n",
                Some(Err(DataError::BareLf)),
                23,
            ),
            (b"a\r\n.\nQUIT\r\n.\r\n", Some(Err(DataError::BareLf)), 14),
            (b"a\r.\r\nQUIT\r\n.\r\n", Some(Err(DataError::BareCr)), 14),
            (b"a\n.\n", None, 4),
            (b"bare\rcr\r\n.\r\n", Some(Err(DataError::BareCr)), 12),
            (b"a\r\r\n.\r\n", Some(Err(DataError::BareCr)), 7),
            (b".\rx\r\n.\r\n", Some(Err(DataError::BareCr)), 8),
            (b"nul\0\r\n.\r\n", Some(Err(DataError::Nul)), 9),
            (
                b"0123456789abcdef\r\n.\r\n",
                Some(Err(DataError::TooBig)),
                21,
            ),
            (
                long_line,
                Some(Err(DataError::LineTooLong)),
                long_line.len(),
            ),
            (ok_line, Some(Err(DataError::TooBig)), ok_line.len()),
        ];
        for (input, expected, consumed) in cases {
            // Small limit for the TooBig rows, room for everything else.
            let max = if input == ok_line {
                100
            } else if input.starts_with(b"0123456789abcdef") {
                16
            } else {
                10_000
            };
            let expected = expected.map(|r| r.map(<[u8]>::to_vec));
            let show = String::from_utf8_lossy(&input[..input.len().min(40)]).into_owned();
            let (got, used) = run(max, &[input]);
            assert_eq!((&got, used), (&expected, consumed), "whole {show:?}");
            for split in 0..=input.len() {
                let (a, b) = input.split_at(split);
                assert_eq!(
                    run(max, &[a, b]),
                    (expected.clone(), consumed),
                    "split at {split} of {show:?}"
                );
            }
            if input.len() < 100 {
                let bytes: Vec<&[u8]> = input.chunks(1).collect();
                assert_eq!(
                    run(max, &bytes),
                    (expected.clone(), consumed),
                    "byte by byte {show:?}"
                );
            }
        }
        // A 1000-octet line (998 + CRLF) is legal.
        assert_eq!(
            run(10_000, &[ok_line]),
            (Some(Ok(ok_line_body.to_vec())), ok_line.len())
        );
    }

    #[test]
    fn poisoned_message_stores_nothing_more() {
        let mut r = DataReceiver::new(1 << 20);
        r.feed(b"a\nb\r\n");
        for _ in 0..1000 {
            r.feed(&[b'x'; 512]);
            r.feed(b"\r\n");
        }
        assert_eq!(r.len(), 0);
        assert_eq!(r.feed(b".\r\n"), Progress::Done { consumed: 3 });
        assert_eq!(r.finish(), Err(DataError::BareLf));
    }

    #[test]
    fn replies_are_permanent() {
        for e in [
            DataError::BareLf,
            DataError::BareCr,
            DataError::Nul,
            DataError::LineTooLong,
            DataError::TooBig,
        ] {
            assert!(e.reply().is_permanent(), "{e:?}");
        }
        assert_eq!(DataError::TooBig.reply().code, 552);
    }
}
