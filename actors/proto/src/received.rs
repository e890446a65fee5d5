//! The `Received:` trace header (RFC 5321 §4.4) with the RFC 3848 transmission type, and
//! the RFC 5322 date it needs — computed here from a Unix timestamp, no clock access.

/// How the message arrived: the `with` clause (RFC 3848; the `UTF8SMTP` family from RFC 6531
/// §3.7.3 for mail received with the SMTPUTF8 parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmission {
    /// Over TLS (`S`).
    pub tls: bool,
    /// With SMTP AUTH (`A`).
    pub authenticated: bool,
    /// With the SMTPUTF8 parameter (`UTF8SMTP…` instead of `ESMTP…`).
    pub utf8: bool,
}

impl Transmission {
    /// From the three facts it encodes.
    pub fn new(tls: bool, authenticated: bool, utf8: bool) -> Self {
        Self {
            tls,
            authenticated,
            utf8,
        }
    }

    /// The keyword.
    pub fn as_str(self) -> &'static str {
        match (self.utf8, self.tls, self.authenticated) {
            (false, false, false) => "ESMTP",
            (false, true, false) => "ESMTPS",
            (false, false, true) => "ESMTPA",
            (false, true, true) => "ESMTPSA",
            (true, false, false) => "UTF8SMTP",
            (true, true, false) => "UTF8SMTPS",
            (true, false, true) => "UTF8SMTPA",
            (true, true, true) => "UTF8SMTPSA",
        }
    }
}

/// Everything the header records.
#[derive(Debug, Clone)]
pub struct Received<'a> {
    /// The EHLO/HELO argument.
    pub helo: &'a str,
    /// The client's IP address.
    pub client_ip: std::net::IpAddr,
    /// Our host name.
    pub by: &'a str,
    /// Transmission type.
    pub with: Transmission,
    /// TLS version and cipher, e.g. `version=TLSv1.3 cipher=TLS13_AES_256_GCM_SHA384`.
    pub tls: Option<String>,
    /// The authenticated user, only when the operator chose to reveal it.
    pub auth_user: Option<&'a str>,
    /// Our queue id.
    pub id: &'a str,
    /// The single recipient, when there is exactly one (RFC 5321 §4.4 `for`).
    pub for_rcpt: Option<&'a str>,
    /// Seconds since the Unix epoch, UTC.
    pub unix_time: u64,
}

impl Received<'_> {
    /// The header field, folded, ending in CRLF.
    pub fn header(&self) -> String {
        let mut h = format!(
            "Received: from {} ([{}])\r\n\tby {} (amtp-relay) with {}",
            sanitize(self.helo),
            self.client_ip,
            self.by,
            self.with.as_str()
        );
        if let Some(user) = self.auth_user {
            h.push_str(&format!(" (authenticated as {})", sanitize(user)));
        }
        if let Some(tls) = &self.tls {
            h.push_str(&format!("\r\n\t({})", sanitize(tls)));
        }
        h.push_str(&format!("\r\n\tid {}", self.id));
        if let Some(rcpt) = self.for_rcpt {
            h.push_str(&format!("\r\n\tfor <{}>", sanitize(rcpt)));
        }
        h.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(self.unix_time)));
        h
    }
}

/// Client-supplied text must not break the header structure.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || c == '(' || c == ')' {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// `Sun, 22 Nov 2026 09:30:00 +0000` for a Unix timestamp (UTC).
pub fn rfc5322_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    let weekday = DAYS[usize::try_from(days % 7).unwrap_or(0)];
    let month = MONTHS[usize::from(m - 1)];
    format!(
        "{weekday}, {d:02} {month} {y} {:02}:{:02}:{:02} +0000",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), Howard Hinnant's algorithm.
fn civil_from_days(days: u64) -> (u64, u8, u8) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (
        y,
        u8::try_from(m).unwrap_or(1),
        u8::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let cases = [
            (0, "Thu, 01 Jan 1970 00:00:00 +0000"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 +0000"),
            (1_795_339_800, "Sun, 22 Nov 2026 09:30:00 +0000"),
            (4_102_444_799, "Thu, 31 Dec 2099 23:59:59 +0000"),
        ];
        for (t, s) in cases {
            assert_eq!(rfc5322_date(t), s, "{t}");
        }
    }

    #[test]
    fn header() {
        let r = Received {
            helo: "client.test",
            client_ip: "127.0.0.9".parse().unwrap(),
            by: "relay.test",
            with: Transmission::new(true, true, false),
            tls: Some("version=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256".into()),
            auth_user: None,
            id: "00000000000000ab",
            for_rcpt: Some("bob@example.test"),
            unix_time: 0,
        };
        let h = r.header();
        assert!(h.starts_with("Received: from client.test ([127.0.0.9])\r\n\tby relay.test (amtp-relay) with ESMTPSA\r\n\t(version=TLSv1.3"), "{h}");
        assert!(
            h.ends_with("for <bob@example.test>;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"),
            "{h}"
        );
        assert!(!h.contains("authenticated"));
        let evil = Received {
            helo: "x\r\nBcc: victim",
            auth_user: Some("u(ser)"),
            ..r
        };
        let h = evil.header();
        assert!(!h.contains("\r\nBcc"), "{h}");
        assert!(h.contains("(authenticated as u?ser?)"));
    }

    /// RFC 3848 and RFC 6531 §3.7.3: the `with` keyword for every combination.
    #[test]
    fn transmission_table() {
        let cases = [
            ((false, false, false), "ESMTP"),
            ((true, false, false), "ESMTPS"),
            ((false, true, false), "ESMTPA"),
            ((true, true, false), "ESMTPSA"),
            ((false, false, true), "UTF8SMTP"),
            ((true, false, true), "UTF8SMTPS"),
            ((false, true, true), "UTF8SMTPA"),
            ((true, true, true), "UTF8SMTPSA"),
        ];
        for ((tls, auth, utf8), keyword) in cases {
            assert_eq!(
                Transmission::new(tls, auth, utf8).as_str(),
                keyword,
                "tls={tls} auth={auth} utf8={utf8}"
            );
        }
    }
}
