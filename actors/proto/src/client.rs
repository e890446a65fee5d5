//! The outbound (client) side of SMTP and AMTP as a pure state machine: replies in, bytes to
//! send and effects out — the mirror of the inbound session, so delivery is tested without
//! sockets.
//!
//! One [`Client`] drives one connection: greeting, EHLO (HELO fallback for legacy SMTP peers),
//! STARTTLS per the TLS policy, then any number of messages (connection reuse), each with
//! per-recipient outcomes, then QUIT. With PIPELINING offered, MAIL, every RCPT and DATA go out
//! in one write (RFC 2920) and the replies are matched in order. On AMTP hops the peer's `MPC`
//! policy line is read from EHLO (all three draft forms) and a message whose MPC it denies is
//! refused without being sent (spec §7: do not retry, bounce).
//!
//! Two additions serve `amtp-relay probe`, which checks a peer with this same client: SMTP AUTH
//! PLAIN after EHLO (a private AMTP connection's AUTH bound to its certificate,
//! [`Client::with_auth_plain`]; only over TLS), and a transaction that stops after the RCPT
//! replies without DATA ([`Client::stop_before_data`]).
//!
//! 8-bit and internationalised mail (RFC 6152, RFC 6531): `BODY=8BITMIME` goes out when the
//! message has 8-bit content and the peer offers 8BITMIME. A message declared 8BITMIME whose
//! content really is 8-bit is refused (`5.6.3`, bounced) for a peer without 8BITMIME — it is
//! never sent as 8-bit data to a 7-bit server and never rewritten; declared 8BITMIME but
//! 7-bit clean, it is sent without the parameter. `SMTPUTF8` goes out when the message was
//! received with it (or has non-ASCII addresses) and the peer offers it. A message that needs
//! it — non-ASCII addresses, or received with SMTPUTF8 and carrying UTF-8 headers — is refused
//! (`5.6.7`) for a peer without SMTPUTF8; one received with SMTPUTF8 but all ASCII is sent
//! without the parameter (as Postfix does).
//!
//! Every outcome carries its [`Cause`] (see [`crate::outcome`]). A peer that refuses the
//! greeting, EHLO/HELO, STARTTLS or RSET still gets a QUIT before the connection closes.

use crate::mpc::{Mpc, MpcPolicy, Verdict};
use crate::reply::{EnhancedStatus, Reply};

pub use crate::outcome::{Cause, Disposition, PeerReply, Stage};

/// How TLS is handled on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// TLS is already up (AMTP: TLS on connect).
    Implicit,
    /// Use STARTTLS when offered; continue in clear otherwise.
    Opportunistic,
    /// STARTTLS must be offered and succeed; otherwise the hop fails temporarily.
    Required,
    /// Never use TLS.
    Never,
}

/// Per-connection settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Our EHLO name (on AMTP: our certificate name = our PTR name).
    pub ehlo_name: String,
    /// TLS handling.
    pub tls: TlsPolicy,
    /// AMTP hop: send `MPC=` on MAIL, honour the peer's MPC line, never fall back to HELO.
    pub amtp: bool,
    /// The peer's host name, for outcomes (`Remote-MTA`).
    pub peer: String,
}

/// The message's body type as received (RFC 6152 `BODY=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    /// No `BODY=` was given (or the record predates body types).
    #[default]
    Unspecified,
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// One message to send.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Reverse path ("" for `<>`).
    pub from: String,
    /// Recipients.
    pub recipients: Vec<String>,
    /// Mail Policy Code (sent as `MPC=` on AMTP hops).
    pub mpc: Option<Mpc>,
    /// Body size in octets (for `SIZE=`).
    pub size: u64,
    /// The body type declared when the message was received.
    pub body: BodyType,
    /// Whether the content has octets above 127 (see [`has_8bit`]).
    pub eight_bit: bool,
    /// Received with the SMTPUTF8 parameter.
    pub smtputf8: bool,
    /// Whether the header section has non-ASCII text (UTF-8 headers, RFC 6532).
    pub utf8_headers: bool,
}

/// Whether `body` has any octet above 127.
pub fn has_8bit(body: &[u8]) -> bool {
    !body.is_ascii()
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Perform the TLS handshake now, then call [`Client::on_tls`].
    StartTls,
    /// Write the message body, dot-stuffed and terminated ([`dot_stuff`]).
    SendBody,
    /// The current message is finished: one disposition per recipient, in order.
    MessageDone(Vec<(String, Disposition)>),
    /// The connection is ready for a message ([`Client::send`]) or [`Client::quit`].
    Ready,
    /// The connection failed before or between messages; nothing is in flight. Temporary
    /// when the cause's status is 4.x.x.
    Failed(Cause),
    /// Close the connection (after QUIT or a failure).
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    /// AUTH PLAIN sent, waiting for 235.
    Auth,
    Ready,
    /// Waiting for replies of a transaction.
    Transaction,
    Body,
    /// RSET sent after an aborted transaction.
    Rset,
    Quit,
    Closed,
}

/// Replies still expected for the transaction in flight, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Mail,
    Rcpt(usize),
    Data,
}

/// What the peer offered in EHLO.
#[derive(Debug, Clone, Default)]
pub struct PeerCapabilities {
    /// PIPELINING.
    pub pipelining: bool,
    /// STARTTLS.
    pub starttls: bool,
    /// SIZE limit (0: no limit given).
    pub size: Option<u64>,
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// 8BITMIME.
    pub eight_bit_mime: bool,
    /// The peer's published MPC policy (AMTP), `None` when it published none.
    pub mpc: Option<MpcPolicy>,
}

/// The client state machine.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    step: Step,
    tls_active: bool,
    caps: PeerCapabilities,
    envelope: Option<Envelope>,
    pending: std::collections::VecDeque<Pending>,
    mail_refused: Option<Disposition>,
    rcpt: Vec<Option<Disposition>>,
    accepted: usize,
    /// SASL PLAIN initial response (base64), sent after EHLO when set.
    auth_plain: Option<String>,
    /// Transactions end after the RCPT replies: no DATA, RSET instead.
    stop_before_data: bool,
}

fn line(s: &str) -> Output {
    Output::Send(format!("{s}\r\n").into_bytes())
}

fn status(s: &str) -> EnhancedStatus {
    EnhancedStatus::parse(s).unwrap_or(EnhancedStatus::new(5, 0, 0))
}

impl Client {
    /// A client for a freshly connected socket (TLS already up when `config.tls` is Implicit).
    pub fn new(config: ClientConfig) -> Self {
        let tls_active = config.tls == TlsPolicy::Implicit;
        Self {
            config,
            step: Step::Greeting,
            tls_active,
            caps: PeerCapabilities::default(),
            envelope: None,
            pending: Default::default(),
            mail_refused: None,
            rcpt: Vec::new(),
            accepted: 0,
            auth_plain: None,
            stop_before_data: false,
        }
    }

    /// Authenticate with SMTP AUTH PLAIN (RFC 4954) after EHLO, before the connection is
    /// ready: `235` makes it ready, anything else fails the connection. Credentials are only
    /// ever sent over TLS: without it the connection fails permanently instead.
    pub fn with_auth_plain(mut self, user: &str, password: &str) -> Self {
        self.auth_plain = Some(base64(format!("\0{user}\0{password}").as_bytes()));
        self
    }

    /// Stop every transaction after the RCPT replies: no DATA, RSET, and each recipient the
    /// peer accepted is reported as [`Disposition::Delivered`] with its RCPT reply (nothing was
    /// sent). For checking what a peer would accept.
    pub fn stop_before_data(mut self) -> Self {
        self.stop_before_data = true;
        self
    }

    /// What the peer offered (after EHLO).
    pub fn capabilities(&self) -> &PeerCapabilities {
        &self.caps
    }

    /// Whether TLS is active.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    fn fail(&mut self, cause: Cause) -> Vec<Output> {
        self.step = Step::Closed;
        vec![Output::Failed(cause), Output::Close]
    }

    fn peer(&self, reply: Reply, stage: Stage) -> Cause {
        Cause::PeerReply(PeerReply {
            host: self.config.peer.clone(),
            reply,
            stage,
        })
    }

    /// The peer refused to go on: say QUIT (RFC 5321 §4.1.1.10), then fail.
    fn refused(&mut self, reply: Reply, stage: Stage) -> Vec<Output> {
        let cause = self.peer(reply, stage);
        let mut out = vec![line("QUIT")];
        out.extend(self.fail(cause));
        out
    }

    fn disposition(&self, reply: Reply, stage: Stage) -> Disposition {
        if reply.is_permanent() {
            Disposition::Failed(self.peer(reply, stage))
        } else {
            Disposition::Deferred(self.peer(reply, stage))
        }
    }

    /// Feed the next complete reply from the server.
    pub fn on_reply(&mut self, r: Reply) -> Vec<Output> {
        match self.step {
            Step::Greeting => {
                if r.code != 220 {
                    return self.refused(r, Stage::Greeting);
                }
                self.step = Step::Ehlo;
                vec![line(&format!("EHLO {}", self.config.ehlo_name))]
            }
            Step::Ehlo => self.on_ehlo(r),
            Step::Helo => {
                if r.code != 250 {
                    return self.refused(r, Stage::Helo);
                }
                self.ready()
            }
            Step::StartTls => {
                if r.code == 220 {
                    return vec![Output::StartTls];
                }
                if self.config.tls == TlsPolicy::Required {
                    // Required TLS refused is never permanent: the peer may fix it.
                    let mut out = self.refused(r, Stage::StartTls);
                    for o in &mut out {
                        if let Output::Failed(c) = o {
                            *c = Cause::Tls(format!("STARTTLS refused by the peer: {c}"));
                        }
                    }
                    return out;
                }
                self.ready()
            }
            Step::Auth => {
                if r.code != 235 {
                    return self.refused(r, Stage::Auth);
                }
                self.ready()
            }
            Step::Transaction => self.on_transaction_reply(r),
            Step::Body => {
                let outcome = if r.code / 100 == 2 {
                    Disposition::Delivered(PeerReply {
                        host: self.config.peer.clone(),
                        reply: r,
                        stage: Stage::EndOfData,
                    })
                } else {
                    self.disposition(r, Stage::EndOfData)
                };
                self.finish_message(Some(outcome))
            }
            Step::Rset => {
                if r.code / 100 != 2 {
                    return self.refused(r, Stage::Rset);
                }
                self.ready()
            }
            Step::Quit => {
                self.step = Step::Closed;
                vec![Output::Close]
            }
            Step::Ready | Step::Closed => self.fail(Cause::Connection(format!(
                "{}: unexpected reply: {r}",
                self.config.peer
            ))),
        }
    }

    fn on_ehlo(&mut self, r: Reply) -> Vec<Output> {
        if r.code != 250 {
            if !self.config.amtp && matches!(r.code, 500 | 502) {
                self.step = Step::Helo;
                return vec![line(&format!("HELO {}", self.config.ehlo_name))];
            }
            return self.refused(r, Stage::Ehlo);
        }
        let keywords = &r.lines[1.min(r.lines.len())..];
        let mut caps = PeerCapabilities::default();
        for kw in keywords {
            let mut words = kw.split_whitespace();
            match words.next().map(str::to_ascii_uppercase).as_deref() {
                Some("PIPELINING") => caps.pipelining = true,
                Some("STARTTLS") => caps.starttls = true,
                Some("SMTPUTF8") => caps.smtputf8 = true,
                Some("8BITMIME") => caps.eight_bit_mime = true,
                Some("SIZE") => {
                    caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0))
                }
                _ => {}
            }
        }
        if self.config.amtp {
            match MpcPolicy::from_ehlo_lines(keywords) {
                Ok(policy) => caps.mpc = policy,
                Err(e) => {
                    let cause = Cause::Connection(format!(
                        "{}: unparseable MPC line: {e}",
                        self.config.peer
                    ));
                    let mut out = vec![line("QUIT")];
                    out.extend(self.fail(cause));
                    return out;
                }
            }
        }
        self.caps = caps;
        let wants_tls = matches!(
            self.config.tls,
            TlsPolicy::Opportunistic | TlsPolicy::Required
        ) && !self.tls_active;
        if wants_tls && self.caps.starttls {
            self.step = Step::StartTls;
            return vec![line("STARTTLS")];
        }
        if wants_tls && self.config.tls == TlsPolicy::Required {
            let cause = Cause::Tls(format!(
                "TLS is required, but {} does not offer STARTTLS",
                self.config.peer
            ));
            let mut out = vec![line("QUIT")];
            out.extend(self.fail(cause));
            return out;
        }
        if let Some(response) = self.auth_plain.take() {
            if !self.tls_active {
                return self.fail(Cause::LocalPolicy {
                    status: EnhancedStatus::new(5, 7, 0),
                    detail: "AUTH refused: credentials are only sent over TLS".into(),
                });
            }
            self.step = Step::Auth;
            return vec![line(&format!("AUTH PLAIN {response}"))];
        }
        self.ready()
    }

    /// The TLS handshake after STARTTLS succeeded: say EHLO again (RFC 3207).
    pub fn on_tls(&mut self) -> Vec<Output> {
        self.tls_active = true;
        self.step = Step::Ehlo;
        vec![line(&format!("EHLO {}", self.config.ehlo_name))]
    }

    /// The TLS handshake failed.
    pub fn on_tls_failed(&mut self, reason: &str) -> Vec<Output> {
        let cause = Cause::Tls(format!(
            "handshake with {} failed: {reason}",
            self.config.peer
        ));
        self.fail(cause)
    }

    fn ready(&mut self) -> Vec<Output> {
        self.step = Step::Ready;
        vec![Output::Ready]
    }

    /// Send a message on a ready connection. Refusals that need no round trip (MPC denied by the
    /// peer, too big, SMTPUTF8 or 8BITMIME needed but not offered) finish at once.
    pub fn send(&mut self, env: Envelope) -> Vec<Output> {
        if self.step != Step::Ready {
            let cause = Cause::Connection(format!("{}: connection not ready", self.config.peer));
            return vec![Output::MessageDone(
                env.recipients
                    .iter()
                    .map(|r| (r.clone(), Disposition::Deferred(cause.clone())))
                    .collect(),
            )];
        }
        let refuse = |cause: Cause| -> Vec<Output> {
            vec![
                Output::MessageDone(
                    env.recipients
                        .iter()
                        .map(|r| (r.clone(), Disposition::from_cause(cause.clone())))
                        .collect(),
                ),
                Output::Ready,
            ]
        };
        let host = self.config.peer.clone();
        if self.config.amtp {
            let Some(mpc) = env.mpc else {
                return refuse(Cause::MissingMpc);
            };
            if let Some(policy) = &self.caps.mpc
                && policy.evaluate(&mpc) == Verdict::Deny
            {
                return refuse(Cause::PeerPolicy {
                    host,
                    mpc: mpc.to_string(),
                });
            }
        }
        if let Some(limit) = self.caps.size.filter(|&l| l > 0 && env.size > l) {
            return refuse(Cause::Unsupported {
                host,
                status: status("5.3.4"),
                detail: format!("message size {} exceeds the peer's limit {limit}", env.size),
            });
        }
        let utf8_addresses = !env.from.is_ascii() || env.recipients.iter().any(|r| !r.is_ascii());
        let needs_smtputf8 = utf8_addresses || (env.smtputf8 && env.utf8_headers);
        if needs_smtputf8 && !self.caps.smtputf8 {
            return refuse(Cause::Unsupported {
                host,
                status: status("5.6.7"),
                detail: if utf8_addresses {
                    "non-ASCII addresses, and the peer does not offer SMTPUTF8".into()
                } else {
                    "UTF-8 header fields, and the peer does not offer SMTPUTF8".into()
                },
            });
        }
        let eight_bit_mime = env.eight_bit && self.caps.eight_bit_mime;
        if env.eight_bit && env.body == BodyType::EightBitMime && !self.caps.eight_bit_mime {
            return refuse(Cause::Unsupported {
                host,
                status: status("5.6.3"),
                detail: "8-bit message, and the peer does not offer 8BITMIME".into(),
            });
        }
        let mut mail = format!("MAIL FROM:<{}>", env.from);
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", env.size));
        }
        if eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if (utf8_addresses || env.smtputf8) && self.caps.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if self.config.amtp
            && let Some(mpc) = env.mpc
        {
            mail.push_str(&format!(" MPC={mpc}"));
        }
        self.rcpt = vec![None; env.recipients.len()];
        self.accepted = 0;
        self.mail_refused = None;
        self.pending.clear();
        self.pending.push_back(Pending::Mail);
        let mut lines = vec![mail];
        for (i, r) in env.recipients.iter().enumerate() {
            self.pending.push_back(Pending::Rcpt(i));
            lines.push(format!("RCPT TO:<{r}>"));
        }
        if !self.stop_before_data {
            self.pending.push_back(Pending::Data);
            lines.push("DATA".into());
        }
        self.envelope = Some(env);
        self.step = Step::Transaction;
        if self.caps.pipelining {
            let mut bytes = Vec::new();
            for l in lines {
                bytes.extend_from_slice(l.as_bytes());
                bytes.extend_from_slice(b"\r\n");
            }
            vec![Output::Send(bytes)]
        } else {
            vec![line(&lines[0])]
        }
    }

    /// The next command to send without pipelining, after a reply to `after`.
    fn next_unpipelined(&self) -> Vec<Output> {
        let Some(env) = &self.envelope else {
            return vec![];
        };
        match self.pending.front() {
            Some(Pending::Rcpt(i)) => vec![line(&format!("RCPT TO:<{}>", env.recipients[*i]))],
            Some(Pending::Data) => vec![line("DATA")],
            _ => vec![],
        }
    }

    fn on_transaction_reply(&mut self, r: Reply) -> Vec<Output> {
        let Some(p) = self.pending.pop_front() else {
            return self.fail(Cause::Connection(format!(
                "{}: unexpected reply: {r}",
                self.config.peer
            )));
        };
        let pipelined = self.caps.pipelining;
        match p {
            Pending::Mail => {
                if r.code / 100 != 2 {
                    self.mail_refused = Some(self.disposition(r, Stage::Mail));
                    if !pipelined {
                        // Nothing else was sent: reset and report.
                        self.pending.clear();
                        return self.abort_transaction();
                    }
                }
                if pipelined {
                    vec![]
                } else {
                    self.next_unpipelined()
                }
            }
            Pending::Rcpt(i) => {
                if r.code / 100 == 2 {
                    self.accepted += 1;
                    if self.stop_before_data {
                        self.rcpt[i] = Some(Disposition::Delivered(PeerReply {
                            host: self.config.peer.clone(),
                            reply: r.clone(),
                            stage: Stage::Rcpt,
                        }));
                    }
                } else {
                    self.rcpt[i] = Some(self.disposition(r, Stage::Rcpt));
                }
                if self.pending.is_empty() {
                    // The last RCPT of a transaction that stops before DATA.
                    return self.abort_transaction();
                }
                if pipelined {
                    return vec![];
                }
                if self.pending.front() == Some(&Pending::Data) && self.accepted == 0 {
                    self.pending.clear();
                    return self.abort_transaction();
                }
                self.next_unpipelined()
            }
            Pending::Data => {
                if r.code == 354 {
                    if self.accepted == 0 || self.mail_refused.is_some() {
                        // A pipelining server may still say 354: send an empty message to end
                        // DATA; every recipient already has its refusal, which is reported.
                        self.step = Step::Body;
                        return vec![Output::Send(b".\r\n".to_vec())];
                    }
                    self.step = Step::Body;
                    return vec![Output::SendBody];
                }
                let d = self.disposition(r, Stage::Data);
                if self.mail_refused.is_none() && self.accepted > 0 {
                    self.mail_refused = Some(d);
                }
                self.abort_transaction()
            }
        }
    }

    /// Report the message without a body having been accepted, RSET, and become ready again.
    fn abort_transaction(&mut self) -> Vec<Output> {
        let mut out = self.finish_message(None);
        // RSET's reply is consumed as the "ready" step.
        out.retain(|o| *o != Output::Ready);
        out.push(line("RSET"));
        self.step = Step::Rset;
        out
    }

    /// Per-recipient dispositions for the message in flight.
    fn finish_message(&mut self, after_data: Option<Disposition>) -> Vec<Output> {
        let Some(env) = self.envelope.take() else {
            return self.ready();
        };
        let mut result = Vec::with_capacity(env.recipients.len());
        for (i, r) in env.recipients.iter().enumerate() {
            let d = match (&self.mail_refused, &self.rcpt[i], &after_data) {
                (Some(m), _, _) => m.clone(),
                (None, Some(rcpt), _) => rcpt.clone(),
                (None, None, Some(final_reply)) => final_reply.clone(),
                (None, None, None) => Disposition::Deferred(Cause::Connection(format!(
                    "{}: no reply to DATA",
                    self.config.peer
                ))),
            };
            result.push((r.clone(), d));
        }
        let mut out = vec![Output::MessageDone(result)];
        out.extend(self.ready());
        out
    }

    /// End the session politely.
    pub fn quit(&mut self) -> Vec<Output> {
        self.step = Step::Quit;
        vec![line("QUIT")]
    }

    /// The connection dropped or timed out: everything in flight is deferred with `cause`.
    pub fn on_connection_lost(&mut self, cause: &Cause) -> Vec<Output> {
        let mut out = Vec::new();
        if let Some(env) = self.envelope.take() {
            out.push(Output::MessageDone(
                env.recipients
                    .iter()
                    .map(|r| (r.clone(), Disposition::Deferred(cause.clone())))
                    .collect(),
            ));
        }
        self.step = Step::Closed;
        out.push(Output::Close);
        out
    }
}

/// Standard base64 with padding (RFC 4648 §4), for the SASL PLAIN response.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The body as it goes on the wire: lines starting with "." get another ".", a final CRLF is
/// ensured, and the end marker is appended (RFC 5321 §4.5.2).
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    // A line at a time: one copy per line instead of a push per byte (a 10 KB body is about
    // 150 lines; the per-byte loop was a visible share of delivery's CPU).
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !out.ends_with(b"\r\n") && !out.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests;
