//! What happened to one recipient of a delivery attempt, as data: a [`Disposition`]
//! (delivered, deferred, failed) and, for the last two, a [`Cause`] saying *why* — a next
//! hop's reply, a DNS answer, a refused connection, a decision of the relay's own.
//!
//! The cause is made where the fact is known (the outbound client, the router) and read
//! unchanged by everything after it: the queue record stores its [`Cause::status`], the DSN
//! takes its status, `Remote-MTA` and diagnostic from it, and `queue show` prints it. Nothing
//! parses a status back out of text. A decision the relay took itself (no SRV record, the
//! peer's published MPC policy) is never dressed up as an SMTP reply: its diagnostic type is
//! [`DiagnosticType::Relay`], not `smtp`.

use crate::reply::{EnhancedStatus, Reply};
use std::fmt;

/// The command a next hop's reply answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The connection greeting.
    Greeting,
    /// EHLO.
    Ehlo,
    /// HELO.
    Helo,
    /// STARTTLS.
    StartTls,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA (before the body).
    Data,
    /// The end of the message data.
    EndOfData,
    /// RSET.
    Rset,
    /// AUTH (only `amtp-relay probe` authenticates: private AMTP connections).
    Auth,
}

impl Stage {
    /// As Postfix words it: "in reply to RCPT TO command".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Greeting => "initial greeting",
            Self::Ehlo => "EHLO",
            Self::Helo => "HELO",
            Self::StartTls => "STARTTLS",
            Self::Mail => "MAIL FROM",
            Self::Rcpt => "RCPT TO",
            Self::Data => "DATA",
            Self::EndOfData => "end of DATA",
            Self::Rset => "RSET",
            Self::Auth => "AUTH",
        }
    }
}

/// A reply from a named next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReply {
    /// The next hop's host name (the DSN's `Remote-MTA`).
    pub host: String,
    /// What it said.
    pub reply: Reply,
    /// To which command.
    pub stage: Stage,
}

impl PeerReply {
    /// The reply's enhanced status, or one derived from its code (`4.0.0`, `5.0.0`).
    pub fn status(&self) -> EnhancedStatus {
        self.reply.status.unwrap_or(match self.reply.code / 100 {
            2 => EnhancedStatus::new(2, 0, 0),
            4 => EnhancedStatus::new(4, 0, 0),
            _ => EnhancedStatus::new(5, 0, 0),
        })
    }
}

/// Why a recipient was not delivered (this time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// A next hop refused (4xx/5xx), at any stage from the greeting to the end of data.
    PeerReply(PeerReply),
    /// The next hop's published MPC policy denies the message's code (spec §7): decided here,
    /// nothing was sent.
    PeerPolicy {
        /// The next hop.
        host: String,
        /// The message's MPC.
        mpc: String,
    },
    /// The next hop lacks an extension the message needs (SIZE limit, SMTPUTF8, 8BITMIME):
    /// decided here, nothing was sent.
    Unsupported {
        /// The next hop.
        host: String,
        /// `5.3.4`, `5.6.7`, `5.6.3`.
        status: EnhancedStatus,
        /// What is missing.
        detail: String,
    },
    /// A DNS lookup failed temporarily.
    Dns(String),
    /// The recipient domain has no usable next hop (no SRV and no fallback, null MX, no such
    /// domain, no address for the hop).
    NoRoute {
        /// `5.4.4`, `5.1.2`, `5.1.10`.
        status: EnhancedStatus,
        /// Why.
        detail: String,
    },
    /// The relay's own rules refuse this route (public → public relay, an `MPC:` header leaving
    /// AMTP).
    LocalPolicy {
        /// Usually `5.7.1`.
        status: EnhancedStatus,
        /// Which rule.
        detail: String,
    },
    /// The next hop is AMTP but the message has no Mail Policy Code.
    MissingMpc,
    /// The TCP connection could not be made.
    Connect(String),
    /// TLS could not be established with the next hop.
    Tls(String),
    /// The connection broke, timed out or the peer spoke nonsense mid-session.
    Connection(String),
    /// This relay's configuration cannot serve the hop (no AMTP client certificate or trust
    /// anchors, no `server_ca` for required TLS, a source address that cannot be bound).
    /// Always temporary: the operator fixes it, the mail waits.
    LocalConfig(String),
    /// Too much is queued for the destination right now.
    Busy(String),
    /// The message's body is gone from this relay's queue (deleted or truncated on disk):
    /// it can never be delivered, the sender must send it again.
    BodyLost,
    /// This relay could not read the message's body from its queue (an I/O error): tried
    /// again later. The detail (with paths) is in the relay's log, not here: the text of a
    /// cause can reach the sender in a DSN.
    QueueRead,
    /// The message outlived its lifetime; the last temporary cause.
    Expired(Box<Cause>),
}

/// The DSN `Diagnostic-Code` type (RFC 3464 §2.3.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiagnosticType {
    /// A reply a server actually sent: `smtp; 550 5.1.1 …`.
    Smtp,
    /// A decision or observation of this relay: `X-AMTP-Relay; …`.
    Relay,
}

impl DiagnosticType {
    /// The field's type word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Smtp => "smtp",
            Self::Relay => "X-AMTP-Relay",
        }
    }
}

const fn st(class: u8, subject: u16, detail: u16) -> EnhancedStatus {
    EnhancedStatus::new(class, subject, detail)
}

impl Cause {
    /// The RFC 3463 status this cause reports.
    pub fn status(&self) -> EnhancedStatus {
        match self {
            Self::PeerReply(p) => p.status(),
            Self::PeerPolicy { .. } | Self::MissingMpc => st(5, 7, 1),
            Self::Unsupported { status, .. }
            | Self::NoRoute { status, .. }
            | Self::LocalPolicy { status, .. } => *status,
            Self::Dns(_) => st(4, 4, 3),
            Self::Connect(_) => st(4, 4, 1),
            Self::Tls(_) => st(4, 7, 5),
            Self::Connection(_) => st(4, 4, 2),
            Self::LocalConfig(_) => st(4, 3, 5),
            Self::Busy(_) => st(4, 4, 5),
            Self::BodyLost => st(5, 3, 0),
            Self::QueueRead => st(4, 3, 0),
            Self::Expired(_) => st(4, 4, 7),
        }
    }

    /// The next hop that reported this, for the DSN's `Remote-MTA`.
    pub fn remote_mta(&self) -> Option<&str> {
        match self {
            Self::PeerReply(p) => Some(&p.host),
            Self::PeerPolicy { host, .. } | Self::Unsupported { host, .. } => Some(host),
            Self::Expired(last) => last.remote_mta(),
            _ => None,
        }
    }

    /// The DSN `Diagnostic-Code`: type and text. A server's reply is `smtp`; everything the
    /// relay decided or observed itself says so.
    pub fn diagnostic(&self) -> (DiagnosticType, String) {
        match self {
            Self::PeerReply(p) => (DiagnosticType::Smtp, p.reply.to_string()),
            Self::Expired(last) => match last.diagnostic() {
                (DiagnosticType::Smtp, text) => (DiagnosticType::Smtp, text),
                (DiagnosticType::Relay, text) => (
                    DiagnosticType::Relay,
                    format!("delivery time expired; last error: {text}"),
                ),
            },
            other => (DiagnosticType::Relay, other.to_string()),
        }
    }

    /// Whether this cause is a local configuration error (logged at error level).
    pub fn is_local_config(&self) -> bool {
        matches!(self, Self::LocalConfig(_))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PeerReply(p) => write!(
                f,
                "{} said: {} (in reply to {})",
                p.host,
                p.reply,
                p.stage.as_str()
            ),
            Self::PeerPolicy { host, mpc } => {
                write!(f, "MPC {mpc} is denied by the published policy of {host}")
            }
            Self::Unsupported { host, detail, .. } => write!(f, "{host}: {detail}"),
            Self::Dns(d) => write!(f, "DNS lookup failed: {d}"),
            Self::NoRoute { detail, .. } | Self::LocalPolicy { detail, .. } => f.write_str(detail),
            Self::MissingMpc => f.write_str("the next hop is AMTP and the message has no MPC"),
            Self::Connect(d) => write!(f, "cannot connect: {d}"),
            Self::Tls(d) => write!(f, "TLS failed: {d}"),
            Self::Connection(d) => write!(f, "connection failed: {d}"),
            Self::LocalConfig(d) => write!(f, "local configuration error: {d}"),
            Self::Busy(d) => f.write_str(d),
            Self::BodyLost => {
                f.write_str("message body lost in the relay's queue; please send it again")
            }
            Self::QueueRead => f.write_str("cannot read the message from the relay's queue"),
            Self::Expired(last) => write!(f, "delivery time expired; last error: {last}"),
        }
    }
}

/// The fate of one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The next hop said 2xx after the data.
    Delivered(PeerReply),
    /// Try again later.
    Deferred(Cause),
    /// Give up and bounce.
    Failed(Cause),
}

impl Disposition {
    /// Deferred or failed as the cause's status class says (4.x.x: deferred).
    pub fn from_cause(cause: Cause) -> Self {
        if cause.status().class == 4 {
            Self::Deferred(cause)
        } else {
            Self::Failed(cause)
        }
    }

    /// The cause, when not delivered.
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            Self::Delivered(_) => None,
            Self::Deferred(c) | Self::Failed(c) => Some(c),
        }
    }

    /// The status to store and report.
    pub fn status(&self) -> EnhancedStatus {
        match self {
            Self::Delivered(p) => p.status(),
            Self::Deferred(c) | Self::Failed(c) => c.status(),
        }
    }

    /// `delivered`, `deferred` or `failed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Delivered(_) => "delivered",
            Self::Deferred(_) => "deferred",
            Self::Failed(_) => "failed",
        }
    }
}

impl fmt::Display for Disposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Delivered(p) => write!(f, "{} said: {}", p.host, p.reply),
            Self::Deferred(c) | Self::Failed(c) => c.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(code: u16, status: &str, stage: Stage) -> Cause {
        Cause::PeerReply(PeerReply {
            host: "mx.peer.test".into(),
            reply: Reply::new(code, status, "text"),
            stage,
        })
    }

    /// Status, Remote-MTA and diagnostic type per cause: no cause the relay decided itself
    /// pretends to be an SMTP reply, and a reply without an enhanced code keeps its class.
    #[test]
    fn status_remote_and_diagnostic_table() {
        use DiagnosticType::{Relay, Smtp};
        let s = |x: &str| EnhancedStatus::parse(x).unwrap();
        let cases: Vec<(Cause, &str, Option<&str>, DiagnosticType)> = vec![
            (
                peer(504, "5.7.1", Stage::Ehlo),
                "5.7.1",
                Some("mx.peer.test"),
                Smtp,
            ),
            (
                peer(550, "", Stage::Rcpt),
                "5.0.0",
                Some("mx.peer.test"),
                Smtp,
            ),
            (
                peer(421, "", Stage::Greeting),
                "4.0.0",
                Some("mx.peer.test"),
                Smtp,
            ),
            (
                Cause::PeerPolicy {
                    host: "amtp.peer.test".into(),
                    mpc: "com/optin".into(),
                },
                "5.7.1",
                Some("amtp.peer.test"),
                Relay,
            ),
            (
                Cause::Unsupported {
                    host: "mx.peer.test".into(),
                    status: s("5.6.3"),
                    detail: "no 8BITMIME".into(),
                },
                "5.6.3",
                Some("mx.peer.test"),
                Relay,
            ),
            (Cause::Dns("SERVFAIL".into()), "4.4.3", None, Relay),
            (
                Cause::NoRoute {
                    status: s("5.4.4"),
                    detail: "no SRV".into(),
                },
                "5.4.4",
                None,
                Relay,
            ),
            (
                Cause::LocalPolicy {
                    status: s("5.7.1"),
                    detail: "public to public".into(),
                },
                "5.7.1",
                None,
                Relay,
            ),
            (Cause::MissingMpc, "5.7.1", None, Relay),
            (Cause::Connect("refused".into()), "4.4.1", None, Relay),
            (Cause::Tls("bad cert".into()), "4.7.5", None, Relay),
            (Cause::Connection("reset".into()), "4.4.2", None, Relay),
            (Cause::LocalConfig("no cert".into()), "4.3.5", None, Relay),
            (Cause::Busy("busy".into()), "4.4.5", None, Relay),
            (Cause::BodyLost, "5.3.0", None, Relay),
            (Cause::QueueRead, "4.3.0", None, Relay),
            (
                Cause::Expired(Box::new(peer(451, "4.3.0", Stage::EndOfData))),
                "4.4.7",
                Some("mx.peer.test"),
                Smtp,
            ),
            (
                Cause::Expired(Box::new(Cause::Connect("refused".into()))),
                "4.4.7",
                None,
                Relay,
            ),
        ];
        for (cause, status, remote, diag) in cases {
            assert_eq!(cause.status().to_string(), status, "{cause}");
            assert_eq!(cause.remote_mta(), remote, "{cause}");
            assert_eq!(cause.diagnostic().0, diag, "{cause}");
        }
    }

    #[test]
    fn disposition_class_follows_the_cause() {
        assert!(matches!(
            Disposition::from_cause(peer(450, "4.2.0", Stage::Rcpt)),
            Disposition::Deferred(_)
        ));
        assert!(matches!(
            Disposition::from_cause(peer(554, "", Stage::Greeting)),
            Disposition::Failed(_)
        ));
        assert!(matches!(
            Disposition::from_cause(Cause::LocalConfig("x".into())),
            Disposition::Deferred(_)
        ));
        assert_eq!(
            peer(504, "5.7.1", Stage::Ehlo).to_string(),
            "mx.peer.test said: 504 5.7.1 text (in reply to EHLO)"
        );
    }
}
