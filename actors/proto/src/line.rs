//! Splitting the inbound byte stream into command lines, with a hard bound.
//!
//! SMTP command lines end in CRLF; like Postfix we also accept a bare LF as a command
//! terminator (harmless for commands — the smuggling risk is in DATA, see [`crate::data`]).
//! A line longer than the bound is discarded up to its terminator and reported once as
//! [`LineError::TooLong`], so a client cannot make the buffer grow without limit.

/// Why a line could not be returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// The line exceeded the buffer's bound; its bytes were discarded.
    TooLong,
}

/// A bounded accumulator that yields complete lines (without the terminator).
///
/// Bytes are kept raw and split lazily, so whatever follows a mode-switching command (DATA,
/// STARTTLS) can be handed over byte-exact by [`LineBuffer::take_unconsumed`].
#[derive(Debug)]
pub struct LineBuffer {
    raw: Vec<u8>,
    /// Offset of the first byte not yet returned.
    start: usize,
    max: usize,
    /// True while discarding the rest of an over-long line (its error was already reported).
    discarding: bool,
}

impl LineBuffer {
    /// `max` bounds a line including its CRLF.
    pub fn new(max: usize) -> Self {
        Self {
            raw: Vec::with_capacity(1024),
            start: 0,
            max,
            discarding: false,
        }
    }

    /// Feed bytes; complete lines become available from [`LineBuffer::next_line`].
    /// The caller reads more only when `next_line` returns `None`, which bounds the buffer to
    /// one line plus one read.
    pub fn push(&mut self, input: &[u8]) {
        if self.start > 0 && self.start == self.raw.len() {
            self.raw.clear();
            self.start = 0;
        }
        self.raw.extend_from_slice(input);
    }

    /// The next complete line, if any.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, LineError>> {
        loop {
            let pending = &self.raw[self.start..];
            match pending.iter().position(|&b| b == b'\n') {
                Some(pos) => {
                    let line_len = pos + 1;
                    let was_discarding = std::mem::replace(&mut self.discarding, false);
                    let mut line = pending[..pos].to_vec();
                    self.start += line_len;
                    self.compact();
                    if was_discarding {
                        continue;
                    }
                    if line_len > self.max {
                        return Some(Err(LineError::TooLong));
                    }
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    return Some(Ok(line));
                }
                None => {
                    if pending.len() >= self.max {
                        let report = !self.discarding;
                        self.discarding = true;
                        self.raw.clear();
                        self.start = 0;
                        return report.then_some(Err(LineError::TooLong));
                    }
                    return None;
                }
            }
        }
    }

    fn compact(&mut self) {
        if self.start == self.raw.len() {
            self.raw.clear();
            self.start = 0;
        } else if self.start > 4096 {
            self.raw.drain(..self.start);
            self.start = 0;
        }
    }

    /// Whether a complete line is waiting (pipelined commands).
    pub fn has_line(&self) -> bool {
        self.raw[self.start..].contains(&b'\n')
    }

    /// Whether any unreturned bytes are buffered.
    pub fn has_partial(&self) -> bool {
        self.start < self.raw.len() || self.discarding
    }

    /// Take every byte not yet returned, exactly as received, and reset.
    /// Used when the stream switches to DATA or TLS: bytes after the switching command belong
    /// to the new mode (or, for STARTTLS, must be discarded — RFC 3207 §6).
    pub fn take_unconsumed(&mut self) -> Vec<u8> {
        let out = self.raw[self.start..].to_vec();
        self.clear();
        out
    }

    /// Discard everything buffered.
    pub fn clear(&mut self) {
        self.raw.clear();
        self.start = 0;
        self.discarding = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(max: usize, chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, LineError>> {
        let mut lb = LineBuffer::new(max);
        let mut out = Vec::new();
        for c in chunks {
            lb.push(c);
            while let Some(l) = lb.next_line() {
                out.push(l);
            }
        }
        out
    }

    #[test]
    fn table() {
        type Case<'a> = (&'a [u8], Vec<Result<&'a [u8], LineError>>);
        let cases: Vec<Case> = vec![
            (b"NOOP\r\n", vec![Ok(b"NOOP")]),
            (b"NOOP\n", vec![Ok(b"NOOP")]),
            (b"NOOP\r\nQUIT\r\n", vec![Ok(b"NOOP"), Ok(b"QUIT")]),
            (b"NOOP", vec![]),
            (b"\r\n", vec![Ok(b"")]),
            (
                b"0123456789\r\nX\r\n",
                vec![Err(LineError::TooLong), Ok(b"X")],
            ),
            (b"012345678\r\n", vec![Ok(b"012345678")]),
            (
                b"0123456789012345678901234\r\nOK\r\n",
                vec![Err(LineError::TooLong), Ok(b"OK")],
            ),
        ];
        for (input, expected) in cases {
            let expected: Vec<_> = expected
                .into_iter()
                .map(|r| r.map(<[u8]>::to_vec))
                .collect();
            assert_eq!(
                lines(11, &[input]),
                expected,
                "whole input {:?}",
                String::from_utf8_lossy(input)
            );
            // Split at every byte boundary: same result.
            for split in 0..=input.len() {
                let (a, b) = input.split_at(split);
                assert_eq!(
                    lines(11, &[a, b]),
                    expected,
                    "split at {split} of {:?}",
                    String::from_utf8_lossy(input)
                );
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(lines(11, &bytes), expected, "byte by byte");
        }
    }

    #[test]
    fn unbounded_garbage_is_bounded() {
        let mut lb = LineBuffer::new(512);
        let mut errors = 0;
        for _ in 0..10_000 {
            lb.push(&[b'A'; 100]);
            while let Some(l) = lb.next_line() {
                assert_eq!(l, Err(LineError::TooLong));
                errors += 1;
            }
            assert!(lb.raw.len() < 612, "buffer grew to {}", lb.raw.len());
        }
        assert_eq!(errors, 1, "one error per over-long line");
        lb.push(b"\r\nNOOP\r\n");
        assert_eq!(lb.next_line(), Some(Ok(b"NOOP".to_vec())));
    }

    #[test]
    fn take_unconsumed_returns_pipelined_rest() {
        let mut lb = LineBuffer::new(512);
        lb.push(b"DATA\r\nSubject: x\n\r\nbody");
        assert_eq!(lb.next_line(), Some(Ok(b"DATA".to_vec())));
        // Byte-exact: the bare LF must reach the DATA receiver as a bare LF.
        assert_eq!(lb.take_unconsumed(), b"Subject: x\n\r\nbody".to_vec());
        assert!(!lb.has_partial());
    }
}
