//! SMTP replies: a code, an optional enhanced status code (RFC 3463), and one or more lines.
//!
//! The server writes them with [`Reply::write_to`]; clients (outbound delivery, the load
//! generator, tests) read them back with [`parse_reply`], which treats partial input as
//! "need more bytes".

use std::fmt;

/// An RFC 3463 enhanced status code such as `5.7.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    /// 2, 4 or 5.
    pub class: u8,
    /// Subject (e.g. 7 = security or policy).
    pub subject: u16,
    /// Detail within the subject.
    pub detail: u16,
}

impl EnhancedStatus {
    /// `class.subject.detail`.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// Parse `c.s.d`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('.');
        let class: u8 = it.next()?.parse().ok()?;
        let subject = it.next()?.parse().ok()?;
        let detail = it.next()?.parse().ok()?;
        (it.next().is_none() && matches!(class, 2 | 4 | 5)).then_some(Self {
            class,
            subject,
            detail,
        })
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply (possibly multi-line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code.
    pub code: u16,
    /// Enhanced status code, repeated on every line when written.
    pub status: Option<EnhancedStatus>,
    /// Text lines (at least one; may be empty strings).
    pub lines: Vec<String>,
}

impl Reply {
    /// A single-line reply. `status` is `c.s.d`, or `""` for none (greeting, EHLO).
    pub fn new(code: u16, status: &str, text: impl Into<String>) -> Self {
        let parsed = EnhancedStatus::parse(status);
        debug_assert!(
            status.is_empty() || parsed.is_some(),
            "bad enhanced status literal {status:?}"
        );
        Self {
            code,
            status: parsed,
            lines: vec![text.into()],
        }
    }

    /// A multi-line reply without enhanced status (EHLO, HELP).
    pub fn multi(code: u16, lines: Vec<String>) -> Self {
        Self {
            code,
            status: None,
            lines,
        }
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not retry.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The whole reply's text, lines joined by a space (for logs and DSNs).
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// Append the wire form (CRLF-terminated lines) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            // Control characters in reply text would let data from a client inject lines.
            let clean: String = line
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            let text = match self.status {
                Some(st) if clean.is_empty() => format!("{}{sep}{st}", self.code),
                Some(st) => format!("{}{sep}{st} {clean}", self.code),
                None if clean.is_empty() => format!("{}{sep}", self.code),
                None => format!("{}{sep}{clean}", self.code),
            };
            out.extend_from_slice(text.trim_end().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self.lines.is_empty() {
            out.extend_from_slice(format!("{}\r\n", self.code).as_bytes());
        }
    }

    /// The wire form as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        self.write_to(&mut v);
        v
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(st) => write!(f, "{} {} {}", self.code, st, self.text()),
            None => write!(f, "{} {}", self.code, self.text()),
        }
    }
}

/// Why reply bytes could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyParseError {
    /// A line did not start with a three-digit code and a separator.
    Malformed(String),
    /// Lines of one reply carried different codes.
    MixedCodes,
    /// A reply line exceeded the given bound.
    TooLong,
}

/// Parse one complete reply from the start of `buf`.
/// `Ok(None)` means more bytes are needed; `Ok(Some((reply, consumed)))` otherwise.
/// The enhanced status is recognised when the first line's text starts with one.
pub fn parse_reply(buf: &[u8], max_line: usize) -> Result<Option<(Reply, usize)>, ReplyParseError> {
    let mut pos = 0;
    let mut code = None;
    let mut lines = Vec::new();
    let mut status = None;
    loop {
        let rest = &buf[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return if rest.len() > max_line {
                Err(ReplyParseError::TooLong)
            } else {
                Ok(None)
            };
        };
        if nl + 1 > max_line {
            return Err(ReplyParseError::TooLong);
        }
        let raw = &rest[..nl];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = String::from_utf8_lossy(raw);
        pos += nl + 1;
        let bytes = line.as_bytes();
        if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
            return Err(ReplyParseError::Malformed(line.into_owned()));
        }
        let this_code: u16 = line[..3]
            .parse()
            .map_err(|_| ReplyParseError::Malformed(line.to_string()))?;
        if *code.get_or_insert(this_code) != this_code {
            return Err(ReplyParseError::MixedCodes);
        }
        let (more, text) = match bytes.get(3) {
            None => (false, ""),
            Some(b' ') => (false, &line[4..]),
            Some(b'-') => (true, &line[4..]),
            Some(_) => return Err(ReplyParseError::Malformed(line.into_owned())),
        };
        let mut text = text.to_string();
        if lines.is_empty() {
            let (first, rest) = text.split_once(' ').unwrap_or((text.as_str(), ""));
            if let Some(st) =
                EnhancedStatus::parse(first).filter(|s| u16::from(s.class) == this_code / 100)
            {
                status = Some(st);
                text = rest.to_string();
            }
        } else if let Some(st) = status {
            let prefix = format!("{st} ");
            if let Some(stripped) = text.strip_prefix(&prefix) {
                text = stripped.to_string();
            }
        }
        lines.push(text);
        if !more {
            let code = code.unwrap_or(this_code);
            return Ok(Some((
                Reply {
                    code,
                    status,
                    lines,
                },
                pos,
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_table() {
        let cases: Vec<(Reply, &str)> = vec![
            (Reply::new(250, "2.0.0", "OK"), "250 2.0.0 OK\r\n"),
            (
                Reply::new(220, "", "relay.test ESMTP"),
                "220 relay.test ESMTP\r\n",
            ),
            (
                Reply::multi(
                    250,
                    vec!["relay.test".into(), "PIPELINING".into(), "SIZE 10".into()],
                ),
                "250-relay.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n",
            ),
            (
                Reply::new(550, "5.7.1", "bad\r\ninjected"),
                "550 5.7.1 bad??injected\r\n",
            ),
            (
                Reply {
                    code: 451,
                    status: EnhancedStatus::parse("4.3.0"),
                    lines: vec!["a".into(), "b".into()],
                },
                "451-4.3.0 a\r\n451 4.3.0 b\r\n",
            ),
        ];
        for (reply, wire) in cases {
            assert_eq!(String::from_utf8(reply.to_bytes()).unwrap(), wire);
            // Round trip through the parser.
            let (parsed, used) = parse_reply(wire.as_bytes(), 1000).unwrap().unwrap();
            assert_eq!(used, wire.len());
            assert_eq!(parsed.code, reply.code);
            assert_eq!(parsed.status, reply.status);
        }
    }

    #[test]
    fn parse_partial_and_bad() {
        assert_eq!(parse_reply(b"250-a\r\n250 b", 100), Ok(None));
        assert_eq!(parse_reply(b"25", 100), Ok(None));
        assert_eq!(
            parse_reply(b"250-a\r\n251 b\r\n", 100),
            Err(ReplyParseError::MixedCodes)
        );
        assert!(matches!(
            parse_reply(b"hello\r\n", 100),
            Err(ReplyParseError::Malformed(_))
        ));
        assert_eq!(
            parse_reply(&[b'2'; 200], 100),
            Err(ReplyParseError::TooLong)
        );
        let (r, _) = parse_reply(
            b"250-x.test\r\n250-MPC ALLOW=com/*\r\n250 8BITMIME\r\n",
            100,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.lines, vec!["x.test", "MPC ALLOW=com/*", "8BITMIME"]);
        assert_eq!(r.status, None);
        let (r, _) = parse_reply(b"550 5.7.1 relay denied\r\n", 100)
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.code, r.status.unwrap().to_string(), r.text()),
            (550, "5.7.1".into(), "relay denied".into())
        );
    }
}
