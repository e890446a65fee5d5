//! Mailbox, path and domain grammar (RFC 5321 §4.1.2, with RFC 6531 UTF-8 allowed).
//!
//! Validation is deliberately strict about structure (what could confuse a later hop) and
//! lenient about content (UTF-8 local parts are fine; SMTPUTF8 is advertised).

use crate::limits;
use std::fmt;

/// A domain name or address literal, as written by the client (case preserved).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Domain(String);

impl Domain {
    /// Parse an EHLO argument or the part of a mailbox after `@`.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.is_empty() {
            return Err("empty domain");
        }
        if s.len() > limits::DOMAIN {
            return Err("domain too long");
        }
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or("unterminated address literal")?;
            let ok = match inner.strip_prefix("IPv6:") {
                Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
                None => inner.parse::<std::net::Ipv4Addr>().is_ok(),
            };
            return if ok {
                Ok(Self(s.to_string()))
            } else {
                Err("invalid address literal")
            };
        }
        let trimmed = s.strip_suffix('.').unwrap_or(s);
        for label in trimmed.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err("invalid domain label");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err("domain label starts or ends with '-'");
            }
            if !label
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
            {
                return Err("invalid character in domain");
            }
        }
        Ok(Self(s.to_string()))
    }

    /// The domain as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Lower-cased, without a trailing dot: the form to compare and route on.
    pub fn normalized(&self) -> String {
        self.0
            .strip_suffix('.')
            .unwrap_or(&self.0)
            .to_ascii_lowercase()
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `local-part@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part exactly as sent (quoted strings keep their quotes).
    pub local: String,
    /// The domain part.
    pub domain: Domain,
}

impl Mailbox {
    /// Parse `local@domain` (no angle brackets).
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let at = s.rfind('@').ok_or("mailbox without '@'")?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        if local.is_empty() {
            return Err("empty local part");
        }
        if local.len() > limits::LOCAL_PART {
            return Err("local part too long");
        }
        if local.starts_with('"') {
            if local.len() < 2 || !local.ends_with('"') {
                return Err("unterminated quoted local part");
            }
            if local[1..local.len() - 1].chars().any(|c| c.is_control()) {
                return Err("control character in local part");
            }
        } else {
            if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
                return Err("misplaced '.' in local part");
            }
            let atext = |c: char| {
                c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) || !c.is_ascii()
            };
            if !local.chars().all(atext) {
                return Err("invalid character in local part");
            }
        }
        let domain = Domain::parse(domain)?;
        Ok(Self {
            local: local.to_string(),
            domain,
        })
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// The MAIL FROM path: a mailbox or the null sender `<>` (bounces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`: no bounces may be sent for this message.
    Null,
    /// A real sender.
    Mailbox(Mailbox),
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => Ok(()),
            Self::Mailbox(m) => m.fmt(f),
        }
    }
}

/// Parse `<...>` from the start of `s`; returns the path text inside the brackets (with any
/// RFC 5321 source route removed) and the rest of the line after `>`.
pub(crate) fn split_path(s: &str) -> Result<(&str, &str), &'static str> {
    let inner = s.strip_prefix('<').ok_or("path must be enclosed in <>")?;
    let close = inner.find('>').ok_or("path must be enclosed in <>")?;
    if close + 2 > limits::PATH {
        return Err("path too long");
    }
    let (path, rest) = (&inner[..close], &inner[close + 1..]);
    // A-d-l source routes ("@a,@b:user@c") are obsolete; RFC 5321 §4.1.1.3 says to ignore them.
    let path = match path.strip_prefix('@') {
        Some(route) => route
            .split_once(':')
            .map(|(_, p)| p)
            .ok_or("invalid source route")?,
        None => path,
    };
    Ok((path, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        let ok = [
            "example.test",
            "EXAMPLE.test.",
            "a-b.c",
            "[127.0.0.1]",
            "[IPv6:::1]",
            "xn--bcher-kva.test",
            "bücher.test",
            "localhost",
        ];
        for d in ok {
            assert!(Domain::parse(d).is_ok(), "{d}");
        }
        let bad = [
            "",
            "a..b",
            "-a.b",
            "a-.b",
            "[1.2.3]",
            "[127.0.0.1",
            "a b",
            "a;b",
            &"a".repeat(64),
            &format!("{}.test", "a.".repeat(130)),
        ];
        for d in bad {
            assert!(Domain::parse(d).is_err(), "{d}");
        }
        assert_eq!(
            Domain::parse("Example.TEST.").unwrap().normalized(),
            "example.test"
        );
    }

    #[test]
    fn mailboxes() {
        let ok = [
            "a@b.test",
            "first.last+tag@example.test",
            "\"john doe\"@x.test",
            "üser@x.test",
            "a@[10.0.0.1]",
        ];
        for m in ok {
            assert!(Mailbox::parse(m).is_ok(), "{m}");
        }
        let bad = [
            "ab.test",
            "@b.test",
            "a@",
            ".a@b.test",
            "a.@b.test",
            "a..b@c.test",
            "a b@c.test",
            "a<b@c.test",
            &format!("{}@x.test", "a".repeat(65)),
        ];
        for m in bad {
            assert!(Mailbox::parse(m).is_err(), "{m}");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(split_path("<a@b> SIZE=1"), Ok(("a@b", " SIZE=1")));
        assert_eq!(split_path("<@r1,@r2:a@b>"), Ok(("a@b", "")));
        assert_eq!(split_path("<>"), Ok(("", "")));
        assert!(split_path("a@b").is_err());
        assert!(split_path("<a@b").is_err());
    }
}
