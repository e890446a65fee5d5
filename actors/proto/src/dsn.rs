//! Delivery Status Notifications (RFC 3464): the bounce a relay sends to the envelope sender
//! when recipients fail permanently or the message expires.
//!
//! Pure: the caller supplies the time, the boundary (unique per message) and the original
//! headers; [`build`] returns the complete message with CRLF line endings. The caller enqueues
//! it with the null sender (so it can never bounce) and MPC `net/autoresponse` (spec §6), and
//! never sends one to the null sender.

use crate::outcome::DiagnosticType;
use crate::received::rfc5322_date;

/// What happened to one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    /// Permanently failed (5xx, or expired).
    Failed,
    /// Still being retried (a delay warning).
    Delayed,
}

/// One recipient's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    /// The recipient address.
    pub address: String,
    /// Failed or delayed.
    pub action: DsnAction,
    /// RFC 3463 status, e.g. `5.1.1` or `4.4.7` (expired).
    pub status: String,
    /// The next hop that answered, if any.
    pub remote_mta: Option<String>,
    /// The `Diagnostic-Code`: a server's reply (`smtp; 550 5.1.1 no such user`) or the relay's
    /// own finding (`X-AMTP-Relay; …`).
    pub diagnostic: Option<(DiagnosticType, String)>,
}

/// Everything a DSN says.
#[derive(Debug, Clone)]
pub struct Dsn<'a> {
    /// Our host name.
    pub reporting_mta: &'a str,
    /// The original envelope sender (the DSN's recipient); never empty.
    pub to: &'a str,
    /// When the original arrived (Unix seconds).
    pub arrival: u64,
    /// Now (Unix seconds).
    pub now: u64,
    /// A unique token for the MIME boundary and Message-ID.
    pub token: &'a str,
    /// The recipients reported on.
    pub recipients: &'a [DsnRecipient],
    /// The original message's header section.
    pub original_headers: &'a [u8],
}

/// Text from a remote server must not break our structure: no control characters.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// Build the DSN message.
pub fn build(d: &Dsn<'_>) -> Vec<u8> {
    let boundary = format!("{}/{}", d.token, d.reporting_mta);
    let failed = d.recipients.iter().any(|r| r.action == DsnAction::Failed);
    let subject = if failed {
        "Undelivered Mail Returned to Sender"
    } else {
        "Delayed Mail (still being retried)"
    };
    let mut m = String::with_capacity(2048 + d.original_headers.len());
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{}>\r\n",
        d.reporting_mta
    ));
    m.push_str(&format!("To: <{}>\r\n", clean(d.to)));
    m.push_str(&format!("Subject: {subject}\r\n"));
    m.push_str(&format!("Date: {}\r\n", rfc5322_date(d.now)));
    m.push_str(&format!(
        "Message-ID: <{}@{}>\r\n",
        d.token, d.reporting_mta
    ));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!("Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"));
    m.push_str("This is a MIME-encapsulated message.\r\n\r\n");

    m.push_str(&format!("--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Description: Notification\r\n\r\n"));
    m.push_str(&format!(
        "This is the mail system at {}.\r\n\r\n",
        d.reporting_mta
    ));
    if failed {
        m.push_str("Your message could not be delivered to one or more recipients.\r\nIts header section (not the whole message) is attached below.\r\n\r\n");
    } else {
        m.push_str("Your message has not been delivered yet to one or more recipients.\r\nThe mail system will keep trying; you do not need to resend it.\r\n\r\n");
    }
    for r in d.recipients {
        let why = r
            .diagnostic
            .as_ref()
            .map(|(_, text)| clean(text))
            .unwrap_or_else(|| format!("status {}", r.status));
        m.push_str(&format!("<{}>: {why}\r\n", clean(&r.address)));
    }
    m.push_str("\r\n");

    m.push_str(&format!("--{boundary}\r\nContent-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n\r\n"));
    m.push_str(&format!("Reporting-MTA: dns; {}\r\n", d.reporting_mta));
    m.push_str(&format!("Arrival-Date: {}\r\n", rfc5322_date(d.arrival)));
    for r in d.recipients {
        m.push_str("\r\n");
        m.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\n",
            clean(&r.address)
        ));
        m.push_str(&format!(
            "Action: {}\r\n",
            if r.action == DsnAction::Failed {
                "failed"
            } else {
                "delayed"
            }
        ));
        m.push_str(&format!("Status: {}\r\n", clean(&r.status)));
        if let Some(mta) = &r.remote_mta {
            m.push_str(&format!("Remote-MTA: dns; {}\r\n", clean(mta)));
        }
        if let Some((kind, diag)) = &r.diagnostic {
            m.push_str(&format!(
                "Diagnostic-Code: {}; {}\r\n",
                kind.as_str(),
                clean(diag)
            ));
        }
    }
    m.push_str("\r\n");

    m.push_str(&format!("--{boundary}\r\nContent-Type: text/rfc822-headers\r\nContent-Description: Undelivered Message Headers\r\n\r\n"));
    let mut out = m.into_bytes();
    let headers = crate::headers::header_section(d.original_headers);
    out.extend_from_slice(headers);
    if !headers.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(recipients: &[DsnRecipient]) -> String {
        let d = Dsn {
            reporting_mta: "relay.test",
            to: "alice@sender.test",
            arrival: 0,
            now: 86_400,
            token: "00000000000000ab.1",
            recipients,
            original_headers: b"Received: from x\r\n\tby y\r\nSubject: hello\r\nMessage-ID: <m1@sender.test>\r\n\r\nthe body must not be included\r\n",
        };
        String::from_utf8(build(&d)).unwrap()
    }

    #[test]
    fn failed_report_structure() {
        let r = vec![
            DsnRecipient {
                address: "bob@remote.test".into(),
                action: DsnAction::Failed,
                status: "5.1.1".into(),
                remote_mta: Some("mx.remote.test".into()),
                diagnostic: Some((
                    DiagnosticType::Smtp,
                    "550 5.1.1 <bob@remote.test>: no such user\r\nInjected: header".into(),
                )),
            },
            DsnRecipient {
                address: "carol@gone.test".into(),
                action: DsnAction::Failed,
                status: "4.4.7".into(),
                remote_mta: None,
                diagnostic: Some((
                    DiagnosticType::Relay,
                    "gone.test has no _amtp._tcp SRV record".into(),
                )),
            },
        ];
        let m = sample(&r);
        assert!(m.starts_with("From: Mail Delivery System <MAILER-DAEMON@relay.test>\r\nTo: <alice@sender.test>\r\nSubject: Undelivered Mail Returned to Sender\r\n"), "{m}");
        for needle in [
            "Auto-Submitted: auto-replied\r\n",
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Reporting-MTA: dns; relay.test\r\nArrival-Date: Thu, 01 Jan 1970 00:00:00 +0000\r\n",
            "\r\nFinal-Recipient: rfc822; bob@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.remote.test\r\nDiagnostic-Code: smtp; 550 5.1.1 <bob@remote.test>: no such user  Injected: header\r\n",
            "\r\nFinal-Recipient: rfc822; carol@gone.test\r\nAction: failed\r\nStatus: 4.4.7\r\nDiagnostic-Code: X-AMTP-Relay; gone.test has no _amtp._tcp SRV record\r\n",
            "Its header section (not the whole message) is attached below.",
            "Content-Type: text/rfc822-headers",
            "Subject: hello\r\nMessage-ID: <m1@sender.test>\r\n",
        ] {
            assert!(m.contains(needle), "missing {needle:?} in\n{m}");
        }
        assert!(!m.contains("the body must not be included"));
        assert!(
            !m.contains("\r\nInjected: header"),
            "remote text cannot add lines"
        );
        assert!(m.ends_with("\r\n--00000000000000ab.1/relay.test--\r\n"));
        // Three parts, each opened by the boundary; every line CRLF-terminated and short.
        assert_eq!(
            m.matches("\r\n--00000000000000ab.1/relay.test\r\n").count(),
            3
        );
        assert!(!m.replace("\r\n", "").contains('\n') && !m.replace("\r\n", "").contains('\r'));
        assert!(m.split("\r\n").all(|l| l.len() <= 998));
    }

    #[test]
    fn delay_warning() {
        let r = vec![DsnRecipient {
            address: "bob@slow.test".into(),
            action: DsnAction::Delayed,
            status: "4.4.1".into(),
            remote_mta: None,
            diagnostic: Some((DiagnosticType::Smtp, "421 4.4.1 try later".into())),
        }];
        let m = sample(&r);
        assert!(
            m.contains("Subject: Delayed Mail (still being retried)")
                && m.contains("Action: delayed\r\n"),
            "{m}"
        );
    }
}
