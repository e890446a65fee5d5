//! The SMTP session: an explicit state machine ([`Session`]) whose methods decide, and a
//! driver ([`driver`]) that performs what they decide.
//!
//! Every input — a command line, a SASL line, the end of DATA, the answer of the policy or
//! queue actor, a finished TLS handshake — goes into a method that returns [`Action`]s:
//! replies to write and effects to perform. No method does I/O, so whole dialogues are tested
//! in memory (layer 2) and the rules are readable in one place.
//!
//! - [`sasl`] — the AUTH exchanges.
//! - [`driver`] — the async loop over any `AsyncRead + AsyncWrite` stream.
//! - [`stream`] — plain-or-TLS stream type used by the driver.

pub mod amtp;
pub mod driver;
pub mod sasl;
pub mod stream;

use crate::auth::Credentials;
use crate::config::{ListenerConfig, SessionConfig};
use crate::messages::{AuthOutcome, EnqueueError};
use amtp_proto::command::{Body, ForwardPath, MailFrom};
use amtp_proto::ehlo::EhloKeywords;
use amtp_proto::mpc::Mpc;
use amtp_proto::received::{Received, Transmission};
use amtp_proto::{Command, CommandError, DataError, Reply, ReversePath};
use amtp_storage::{BodyType, Envelope, NewMessage, Origin, QueueId};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

/// The 220 banner of a session on `hostname`. It depends on nothing the client says, so an
/// implicit-TLS worker queues it into the handshake (see [`stream::queue_greeting`]).
pub fn greeting(hostname: &str) -> Reply {
    Reply::new(220, "", format!("{hostname} ESMTP amtp-relay"))
}

/// Facts fixed for the whole session.
#[derive(Debug, Clone)]
pub struct SessionContext {
    /// Our host name (greeting, EHLO, Received).
    pub hostname: Arc<str>,
    /// The listener this session arrived on.
    pub listener: Arc<ListenerConfig>,
    /// Session limits.
    pub limits: Arc<SessionConfig>,
    /// Domains we accept mail for without AUTH (lower case, no trailing dot).
    pub local_domains: Arc<HashSet<String>>,
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether STARTTLS can be offered (a certificate is configured).
    pub tls_available: bool,
    /// Whether CRAM-MD5 can be offered (listener option and users with CRAM secrets).
    pub cram_md5: bool,
    /// Random per-session token: unique CRAM-MD5 challenges.
    pub nonce: String,
    /// Set on AMTP listeners: the peer's certificate, its trust class and the policy.
    pub amtp: Option<amtp::AmtpContext>,
    /// Users with their own Mail Policy Code (users file `mpc`), used when MAIL has none.
    pub user_mpcs: Arc<HashMap<String, Mpc>>,
}

/// The negotiated TLS parameters, for the Received header and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. `TLSv1.3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// What the client said in EHLO/HELO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// The argument.
    pub name: String,
    /// EHLO (true) or HELO (false).
    pub extended: bool,
}

/// An open mail transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// MAIL FROM.
    pub mail: MailFrom,
    /// The validated Mail Policy Code (AMTP listeners).
    pub mpc: Option<amtp_proto::mpc::Mpc>,
    /// Accepted recipients.
    pub recipients: Vec<String>,
}

/// Where the session stands. Each variant owns exactly the data valid in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Connected; no EHLO/HELO yet (also right after STARTTLS).
    Fresh,
    /// AMTP: EHLO received (its argument); waiting for the identity check.
    Identifying(String),
    /// Greeted, no transaction.
    Ready(Greeting),
    /// MAIL accepted; collecting recipients.
    Mail(Greeting, Transaction),
    /// 354 sent; the driver is receiving the message.
    Data(Greeting, Transaction),
    /// The message was handed to the queue; waiting for it to be durable.
    Enqueuing(Greeting),
    /// In a SASL exchange.
    Auth(Greeting, sasl::Exchange),
    /// Credentials sent to the policy actor; waiting for its verdict.
    Verifying(Greeting),
    /// QUIT or a fatal condition; the driver closes.
    Closed,
}

/// What the driver must do, in order.
#[derive(Debug)]
pub enum Action {
    /// Write a reply.
    Reply(Reply),
    /// Flush replies, then perform the TLS handshake (STARTTLS).
    StartTls,
    /// Flush replies, then receive the message with the DATA receiver.
    ReceiveData,
    /// Ask the policy actor about these credentials; answer with [`Session::on_auth_outcome`].
    Verify(Credentials),
    /// AMTP: check the client's identity for this EHLO; answer with [`Session::on_identity`].
    VerifyIdentity {
        /// The EHLO argument.
        ehlo: String,
    },
    /// Ask the queue actor to store this message; answer with [`Session::on_enqueued`].
    Enqueue(Box<NewMessage>),
    /// Flush and close the connection.
    Close,
}

/// The session state machine.
#[derive(Debug)]
pub struct Session {
    ctx: SessionContext,
    phase: Phase,
    tls: Option<TlsInfo>,
    user: Option<String>,
    /// The last EHLO/HELO argument (kept after QUIT for the session log line).
    helo_name: Option<String>,
    /// AMTP: the verified certificate name.
    identity: Option<String>,
    /// AMTP: EHLOs refused so far.
    failed_ehlos: u32,
    consecutive_errors: u32,
    /// Recipients refused with `452` for being over `max_recipients` in this transaction.
    rcpt_overshoot: usize,
    /// The replies being counted are a tolerated recipient overshoot, not an error.
    overshoot_tolerated: bool,
    /// Counter for unique CRAM challenges.
    serial: u32,
    /// Messages accepted / refused (for the session log line).
    pub accepted: u32,
    /// Messages refused after DATA or by the queue.
    pub rejected: u32,
}

/// Recipients over `max_recipients` answered `452` before each further one counts toward
/// `max_errors` (Postfix's `smtpd_recipient_overshoot_limit` has the same default).
pub const RECIPIENT_OVERSHOOT: usize = 1000;

fn reply(code: u16, status: &str, text: impl Into<String>) -> Vec<Action> {
    vec![Action::Reply(Reply::new(code, status, text))]
}

impl Session {
    /// A new session (the greeting is [`Session::greeting`]).
    pub fn new(ctx: SessionContext, tls: Option<TlsInfo>) -> Self {
        Self {
            ctx,
            phase: Phase::Fresh,
            tls,
            user: None,
            helo_name: None,
            identity: None,
            failed_ehlos: 0,
            consecutive_errors: 0,
            rcpt_overshoot: 0,
            overshoot_tolerated: false,
            serial: 0,
            accepted: 0,
            rejected: 0,
        }
    }

    /// The 220 banner.
    pub fn greeting(&self) -> Reply {
        greeting(&self.ctx.hostname)
    }

    /// Current phase (for tests and logs).
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The EHLO/HELO name, if greeted.
    pub fn helo(&self) -> Option<&str> {
        self.helo_name.as_deref()
    }

    /// The verified AMTP identity (certificate name), if any.
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// TLS parameters, if TLS is active.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// Whether the next line is a SASL response rather than a command.
    pub fn expects_sasl_line(&self) -> bool {
        matches!(self.phase, Phase::Auth(..))
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    fn greeting_data(&self) -> Option<Greeting> {
        match &self.phase {
            Phase::Ready(g) | Phase::Mail(g, _) => Some(g.clone()),
            _ => None,
        }
    }

    fn auth_offered(&self) -> bool {
        self.auth_allowed()
            && self.user.is_none()
            && (self.tls.is_some() || self.ctx.listener.allow_insecure_auth)
    }

    fn mechanisms(&self) -> Vec<&'static str> {
        let mut m = vec!["PLAIN", "LOGIN"];
        if self.ctx.cram_md5 {
            m.push("CRAM-MD5");
        }
        m
    }

    fn is_local(&self, domain: &str) -> bool {
        self.ctx.local_domains.contains(
            &domain
                .strip_suffix('.')
                .unwrap_or(domain)
                .to_ascii_lowercase(),
        )
    }

    /// A command line was parsed (or failed to parse).
    pub fn on_command(&mut self, parsed: Result<Command, CommandError>) -> Vec<Action> {
        let actions = match parsed {
            Ok(cmd) => self.command(cmd),
            Err(e) => vec![Action::Reply(e.reply())],
        };
        self.count_errors(actions)
    }

    /// A line arrived that exceeded the line bound.
    pub fn on_line_too_long(&mut self) -> Vec<Action> {
        let actions = if self.expects_sasl_line() {
            self.phase = self.greeting_after_auth();
            reply(500, "5.5.6", "Authentication exchange line too long")
        } else {
            vec![Action::Reply(CommandError::LineTooLong.reply())]
        };
        self.count_errors(actions)
    }

    /// Count consecutive error replies — permanent (5xx) and temporary (4xx) alike: a client
    /// that keeps drawing `452` or `454` is as stuck as one drawing `500` — and close the
    /// session with `421 4.7.0` at `max_errors`.
    fn count_errors(&mut self, mut actions: Vec<Action>) -> Vec<Action> {
        let tolerated = std::mem::take(&mut self.overshoot_tolerated);
        for a in &actions {
            if let Action::Reply(r) = a {
                if (r.is_permanent() || r.is_transient()) && !tolerated {
                    self.consecutive_errors += 1;
                } else if r.is_positive() {
                    self.consecutive_errors = 0;
                }
            }
        }
        if self.consecutive_errors >= self.ctx.limits.max_errors && !self.is_closed() {
            self.phase = Phase::Closed;
            actions.push(Action::Reply(Reply::new(
                421,
                "4.7.0",
                format!("{} Too many errors, closing connection", self.ctx.hostname),
            )));
            actions.push(Action::Close);
        }
        actions
    }

    fn command(&mut self, cmd: Command) -> Vec<Action> {
        match cmd {
            Command::Quit => {
                self.phase = Phase::Closed;
                let mut a = reply(
                    221,
                    "2.0.0",
                    format!("{} closing connection", self.ctx.hostname),
                );
                a.push(Action::Close);
                a
            }
            Command::Noop => reply(250, "2.0.0", "OK"),
            Command::Help => reply(
                214,
                "2.0.0",
                "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP AUTH STARTTLS",
            ),
            Command::Vrfy(_) => reply(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            ),
            Command::Rset => {
                if let Some(g) = self.greeting_data() {
                    self.phase = Phase::Ready(g);
                }
                reply(250, "2.0.0", "Reset OK")
            }
            Command::Ehlo(domain) if self.ctx.amtp.is_some() => self.amtp_ehlo(&domain),
            Command::Helo(_) if self.ctx.amtp.is_some() => {
                reply(504, "5.7.1", "HELO is not supported by AMTP; use EHLO")
            }
            Command::Ehlo(domain) => {
                self.helo_name = Some(domain.to_string());
                self.phase = Phase::Ready(Greeting {
                    name: domain.to_string(),
                    extended: true,
                });
                let keywords = EhloKeywords {
                    size: self.ctx.limits.max_message_size.0,
                    starttls: self.tls.is_none() && self.ctx.tls_available,
                    auth_mechanisms: if self.auth_offered() {
                        self.mechanisms()
                    } else {
                        vec![]
                    },
                    mpc_line: None,
                };
                vec![Action::Reply(keywords.reply(format!(
                    "{} Hello {} [{}]",
                    self.ctx.hostname,
                    domain,
                    self.ctx.peer.ip()
                )))]
            }
            Command::Helo(name) => {
                self.helo_name = Some(name.clone());
                self.phase = Phase::Ready(Greeting {
                    name: name.clone(),
                    extended: false,
                });
                reply(
                    250,
                    "",
                    format!(
                        "{} Hello {} [{}]",
                        self.ctx.hostname,
                        name,
                        self.ctx.peer.ip()
                    ),
                )
            }
            Command::StartTls => self.starttls(),
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(&mechanism, initial_response.as_deref()),
            Command::Mail(mail) => self.mail(mail),
            Command::Rcpt(rcpt) => self.rcpt(rcpt.to),
            Command::Data => self.data(),
        }
    }

    fn starttls(&mut self) -> Vec<Action> {
        if self.tls.is_some() {
            return reply(503, "5.5.1", "TLS already active");
        }
        if !self.ctx.tls_available {
            return reply(454, "4.7.0", "TLS not available");
        }
        if matches!(self.phase, Phase::Mail(..)) {
            return reply(
                503,
                "5.5.1",
                "STARTTLS not permitted during a mail transaction",
            );
        }
        // RFC 3207 §4.2: everything learned before TLS is forgotten; the client must EHLO again.
        self.phase = Phase::Fresh;
        vec![
            Action::Reply(Reply::new(220, "2.0.0", "Ready to start TLS")),
            Action::StartTls,
        ]
    }

    /// The TLS handshake after STARTTLS succeeded.
    pub fn on_tls_established(&mut self, info: TlsInfo) {
        self.tls = Some(info);
        self.phase = Phase::Fresh;
    }

    fn auth(&mut self, mechanism: &str, initial: Option<&str>) -> Vec<Action> {
        let greeting = match &self.phase {
            Phase::Ready(g) if g.extended => g.clone(),
            Phase::Mail(..) => {
                return reply(503, "5.5.1", "AUTH not permitted during a mail transaction");
            }
            _ => return reply(503, "5.5.1", "Send EHLO first"),
        };
        if !self.auth_allowed() {
            return reply(502, "5.5.1", "AUTH not available on this port");
        }
        if self.user.is_some() {
            return reply(503, "5.5.1", "Already authenticated");
        }
        if self.tls.is_none() && !self.ctx.listener.allow_insecure_auth {
            return reply(530, "5.7.0", "Must issue a STARTTLS command first");
        }
        let mech = match sasl::Mechanism::from_name(mechanism) {
            Some(sasl::Mechanism::CramMd5) if !self.ctx.cram_md5 => None,
            m => m,
        };
        let Some(mech) = mech else {
            return reply(504, "5.5.4", "Unrecognized authentication type");
        };
        self.serial += 1;
        let challenge = format!("<{}.{}@{}>", self.ctx.nonce, self.serial, self.ctx.hostname);
        self.sasl_step(greeting, sasl::start(mech, initial, challenge))
    }

    fn sasl_step(&mut self, greeting: Greeting, step: sasl::Step) -> Vec<Action> {
        match step {
            sasl::Step::Continue(r, exchange) => {
                self.phase = Phase::Auth(greeting, exchange);
                vec![Action::Reply(r)]
            }
            sasl::Step::Done(credentials) => {
                self.phase = Phase::Verifying(greeting);
                vec![Action::Verify(credentials)]
            }
            sasl::Step::Fail(r) => {
                self.phase = Phase::Ready(greeting);
                vec![Action::Reply(r)]
            }
        }
    }

    fn greeting_after_auth(&self) -> Phase {
        match &self.phase {
            Phase::Auth(g, _) | Phase::Verifying(g) => Phase::Ready(g.clone()),
            other => other.clone(),
        }
    }

    /// A line during a SASL exchange.
    pub fn on_sasl_line(&mut self, line: &[u8]) -> Vec<Action> {
        let Phase::Auth(greeting, exchange) = std::mem::replace(&mut self.phase, Phase::Fresh)
        else {
            return reply(503, "5.5.1", "No authentication in progress");
        };
        let line = String::from_utf8_lossy(line);
        let actions = self.sasl_step(greeting, sasl::next(exchange, &line));
        self.count_errors(actions)
    }

    /// The policy actor's verdict on the credentials.
    pub fn on_auth_outcome(&mut self, outcome: AuthOutcome) -> Vec<Action> {
        self.phase = self.greeting_after_auth();
        match outcome {
            AuthOutcome::Success(user) if !self.amtp_auth_bound(&user) => {
                tracing::warn!(peer = %self.ctx.peer, user = %user, identity = ?self.identity, "AUTH user not bound to the client certificate");
                self.count_errors(reply(
                    535,
                    "5.7.8",
                    "Authentication credentials invalid for this certificate",
                ))
            }
            AuthOutcome::Success(user) => {
                self.user = Some(user);
                reply(235, "2.7.0", "Authentication successful")
            }
            AuthOutcome::Failed => {
                self.count_errors(reply(535, "5.7.8", "Authentication credentials invalid"))
            }
            AuthOutcome::Locked => {
                self.phase = Phase::Closed;
                let mut a = reply(
                    454,
                    "4.7.0",
                    "Too many authentication failures; try again later",
                );
                a.push(Action::Close);
                a
            }
            AuthOutcome::Unavailable => reply(454, "4.7.0", "Temporary authentication failure"),
        }
    }

    fn mail(&mut self, mail: MailFrom) -> Vec<Action> {
        let greeting = match &self.phase {
            Phase::Ready(g) => g.clone(),
            Phase::Mail(..) => return reply(503, "5.5.1", "Sender already specified"),
            // AMTP never accepts HELO (spec §4), so it never suggests it.
            _ if self.ctx.amtp.is_some() => return reply(503, "5.5.1", "Send EHLO first"),
            _ => return reply(503, "5.5.1", "Send EHLO/HELO first"),
        };
        let listener = &self.ctx.listener;
        if listener.role.requires_auth() {
            if self.tls.is_none() && !listener.allow_insecure_auth {
                return reply(530, "5.7.0", "Must issue a STARTTLS command first");
            }
            if self.user.is_none() {
                return reply(530, "5.7.0", "Authentication required");
            }
        }
        if mail
            .size
            .is_some_and(|s| s > self.ctx.limits.max_message_size.0)
        {
            return reply(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            );
        }
        // RFC 6531 §3.4: a non-ASCII address needs the SMTPUTF8 parameter.
        if !mail.smtputf8
            && matches!(&mail.from, ReversePath::Mailbox(m) if !m.to_string().is_ascii())
        {
            return reply(553, "5.6.7", "Non-ASCII sender address requires SMTPUTF8");
        }
        let mpc = match self.amtp_mail(&mail) {
            Ok(Some(mpc)) => Some(mpc),
            Ok(None) => match self.smtp_mpc(&mail) {
                Ok(mpc) => mpc,
                Err(refusal) => return refusal,
            },
            Err(refusal) => return refusal,
        };
        self.rcpt_overshoot = 0;
        self.phase = Phase::Mail(
            greeting,
            Transaction {
                mail,
                mpc,
                recipients: Vec::new(),
            },
        );
        reply(250, "2.1.0", "Sender OK")
    }

    /// The Mail Policy Code of mail on an SMTP (not AMTP) listener: `MPC=` if MAIL carries
    /// one — a defined code, or `550 5.7.1` as on AMTP listeners (the parser already answered
    /// `501 5.5.4` to a malformed one) — else the user's `mpc` from the users file, else the
    /// listener's `default_mpc` (`per/individual` on submission listeners).
    fn smtp_mpc(&self, mail: &MailFrom) -> Result<Option<Mpc>, Vec<Action>> {
        if let Some(text) = &mail.mpc {
            return text.parse::<Mpc>().map(Some).map_err(|e| {
                tracing::debug!(peer = %self.ctx.peer, error = %e, "MPC refused");
                reply(550, "5.7.1", format!("MPC policy violation: {e}"))
            });
        }
        let user_mpc = self
            .user
            .as_ref()
            .and_then(|u| self.ctx.user_mpcs.get(u).copied());
        Ok(user_mpc.or_else(|| self.ctx.listener.default_mpc()))
    }

    fn rcpt(&mut self, to: ForwardPath) -> Vec<Action> {
        let local = match &to {
            ForwardPath::Postmaster => true,
            ForwardPath::Mailbox(m) => self.is_local(m.domain.as_str()),
        };
        let authenticated = self.user.is_some();
        let max = self.ctx.limits.max_recipients;
        let Phase::Mail(_, tx) = &self.phase else {
            return reply(503, "5.5.1", "Need MAIL command first");
        };
        if !tx.mail.smtputf8 && matches!(&to, ForwardPath::Mailbox(m) if !m.to_string().is_ascii())
        {
            return reply(
                553,
                "5.6.7",
                "Non-ASCII recipient address requires SMTPUTF8",
            );
        }
        if tx.recipients.len() >= max {
            // RFC 5321 §4.5.3.1.10: the client sends the extra recipients again later. A
            // pipelining client learns of the limit only from these replies, so the first
            // RECIPIENT_OVERSHOOT of them do not count toward max_errors.
            self.rcpt_overshoot += 1;
            self.overshoot_tolerated = self.rcpt_overshoot <= RECIPIENT_OVERSHOOT;
            return reply(452, "4.5.3", "Too many recipients");
        }
        let domain = match &to {
            ForwardPath::Postmaster => self.ctx.hostname.to_string(),
            ForwardPath::Mailbox(m) => m.domain.to_string(),
        };
        match self.amtp_rcpt(tx.mpc.as_ref(), &domain, local) {
            Some(refusal) if !refusal.is_empty() => return refusal,
            Some(_) => {}
            None if !local && !authenticated => return reply(550, "5.7.1", "Relay access denied"),
            None => {}
        }
        let Phase::Mail(_, tx) = &mut self.phase else {
            return reply(503, "5.5.1", "Need MAIL command first");
        };
        let address = match to {
            ForwardPath::Postmaster => format!("postmaster@{}", self.ctx.hostname),
            ForwardPath::Mailbox(m) => m.to_string(),
        };
        tx.recipients.push(address);
        reply(250, "2.1.5", "Recipient OK")
    }

    fn data(&mut self) -> Vec<Action> {
        match std::mem::replace(&mut self.phase, Phase::Fresh) {
            Phase::Mail(g, tx) if !tx.recipients.is_empty() => {
                self.phase = Phase::Data(g, tx);
                vec![
                    Action::Reply(Reply::new(354, "", "End data with <CR><LF>.<CR><LF>")),
                    Action::ReceiveData,
                ]
            }
            Phase::Mail(g, tx) => {
                self.phase = Phase::Mail(g, tx);
                reply(554, "5.5.1", "No valid recipients")
            }
            other => {
                self.phase = other;
                reply(503, "5.5.1", "Need MAIL and RCPT commands first")
            }
        }
    }

    /// The DATA receiver finished. `unix_time` dates the Received header; `id` is the queue
    /// id allocated for the message (named in the Received header, the reply and the log), or
    /// `None` when storage could not allocate one (451).
    pub fn on_data(
        &mut self,
        result: Result<Vec<u8>, DataError>,
        unix_time: u64,
        id: Option<QueueId>,
    ) -> Vec<Action> {
        let Phase::Data(greeting, tx) = std::mem::replace(&mut self.phase, Phase::Fresh) else {
            self.phase = Phase::Closed;
            return vec![
                Action::Reply(Reply::new(421, "4.3.0", "Internal state error")),
                Action::Close,
            ];
        };
        let body = match result {
            Ok(body) => body,
            Err(e) => {
                self.phase = Phase::Ready(greeting);
                self.rejected += 1;
                return vec![Action::Reply(e.reply())];
            }
        };
        if let Some(refusal) = self.amtp_refuses_body(&body) {
            self.phase = Phase::Ready(greeting);
            self.rejected += 1;
            return refusal;
        }
        let Some(queue_id) = id else {
            self.phase = Phase::Ready(greeting);
            self.rejected += 1;
            return reply(451, "4.3.0", "Temporary queue failure; try again later");
        };
        // In a fleet the node is part of the id the header shows (ids are per node).
        let id = crate::cluster::fleet_id(queue_id);
        let tls = self
            .tls
            .as_ref()
            .map(|t| format!("version={} cipher={}", t.version, t.cipher));
        let tls = match (tls, self.amtp_received_comment(tx.mpc.as_ref())) {
            (Some(t), Some(a)) => Some(format!("{t} {a}")),
            (t, a) => t.or(a),
        };
        let single = (tx.recipients.len() == 1).then(|| tx.recipients[0].as_str());
        let received = Received {
            helo: &greeting.name,
            client_ip: self.ctx.peer.ip(),
            by: &self.ctx.hostname,
            with: Transmission::new(self.tls.is_some(), self.user.is_some(), tx.mail.smtputf8),
            tls,
            auth_user: self
                .user
                .as_deref()
                .filter(|_| self.ctx.limits.received_auth_user),
            id: &id,
            for_rcpt: single,
            unix_time,
        }
        .header();
        let mut message = Vec::with_capacity(received.len() + body.len());
        message.extend_from_slice(received.as_bytes());
        message.extend_from_slice(&body);
        let message_id = amtp_proto::headers::find(&body, "Message-ID");
        let envelope = Envelope {
            sender: match &tx.mail.from {
                ReversePath::Null => String::new(),
                ReversePath::Mailbox(m) => m.to_string(),
            },
            // The validated code (the client's, the user's or the listener's default).
            mpc: tx.mpc.map(|m| m.to_string()),
            origin: self.amtp_origin().unwrap_or(if self.user.is_some() {
                Origin::Submission
            } else {
                Origin::Smtp
            }),
            listener: self.ctx.listener.name.clone(),
            client_ip: self.ctx.peer.ip().to_string(),
            auth_user: self.user.clone(),
            message_id,
            body: match tx.mail.body {
                None => BodyType::Unspecified,
                Some(Body::SevenBit) => BodyType::SevenBit,
                Some(Body::EightBitMime) => BodyType::EightBitMime,
            },
            smtputf8: tx.mail.smtputf8,
        };
        let new = NewMessage {
            id: Some(queue_id),
            envelope,
            recipients: tx.recipients,
            // Shared from here on: the spool write and delivery use these bytes, no copies.
            body: message.into(),
        };
        self.phase = Phase::Enqueuing(greeting);
        vec![Action::Enqueue(Box::new(new))]
    }

    /// The queue's answer for the message handed over by [`Action::Enqueue`].
    pub fn on_enqueued(&mut self, result: Result<QueueId, EnqueueError>) -> Vec<Action> {
        if let Phase::Enqueuing(g) = std::mem::replace(&mut self.phase, Phase::Fresh) {
            self.phase = Phase::Ready(g);
        }
        match result {
            Ok(id) => {
                self.accepted += 1;
                reply(250, "2.0.0", format!("Ok: queued as {id}"))
            }
            Err(e) => {
                self.rejected += 1;
                tracing::warn!(peer = %self.ctx.peer, error = %e, "message not queued; answered 451");
                reply(451, "4.3.0", "Temporary queue failure; try again later")
            }
        }
    }

    /// The client was silent for too long.
    pub fn on_timeout(&mut self) -> Vec<Action> {
        self.phase = Phase::Closed;
        vec![
            Action::Reply(Reply::new(
                421,
                "4.4.2",
                format!("{} Timeout exceeded, closing connection", self.ctx.hostname),
            )),
            Action::Close,
        ]
    }
}

#[cfg(test)]
mod tests;
