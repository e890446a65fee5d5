//! The async loop that runs a [`Session`] over a stream: reads with timeouts into bounded
//! buffers, feeds the state machine, and performs its actions (write replies, STARTTLS,
//! receive DATA, ask the policy and queue actors).
//!
//! Replies to pipelined commands are written in order and flushed when no further complete
//! command is buffered (RFC 2920), and always before waiting on the client.
//!
//! Each write to a loopback or LAN socket costs the relay kernel time (it also runs the
//! receiver's TCP path), so a TLS session spends as few as it can: on implicit-TLS listeners the
//! greeting was queued into the handshake ([`Banner::Queued`]) and leaves with the session
//! tickets, and the last reply leaves in one write with the TLS close_notify.

use super::stream::{MaybeTls, handshake_failure, resumed, tls_info};
use super::{Action, Session};
use crate::amtp_tls::TrustClass;
use crate::identity::{IdentityChecker, IdentityError, check_ehlo, normalize};
use crate::lifecycle::{Lifecycle, shutting_down};
use crate::messages::{AuthOutcome, Authenticate, Enqueue, EnqueueError};
use crate::metrics::{self, pool::Metered};
use amtp_proto::{Command, DataReceiver, LineBuffer, LineError, Progress, limits};
use amtp_storage::QueueId;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;

/// What a session needs from the rest of the relay.
#[derive(Clone)]
pub struct SessionDeps {
    /// The policy actor (AUTH), its mailbox depth metered.
    pub policy: Metered<Authenticate>,
    /// The queue's door: makes a message durable (see [`Enqueue`]).
    pub queue: Enqueue,
    /// For STARTTLS, when a certificate is configured.
    pub tls: Option<TlsAcceptor>,
    /// How long to wait for the queue to make a message durable.
    pub enqueue_timeout: Duration,
    /// AMTP identity checks (resolver + identity cache), when an AMTP listener is configured.
    pub identity: Option<IdentityChecker>,
    /// Allocates a queue id when a message's DATA is complete, so the Received header, the
    /// 250 reply and the log name the same id. `None`: storage cannot allocate (answered 451).
    pub new_id: Arc<dyn Fn() -> Option<QueueId> + Send + Sync>,
    /// The relay's stop phase: after SIGTERM no transaction starts; when the grace period
    /// ends, the session is told 421 and closed.
    pub lifecycle: Arc<Lifecycle>,
}

/// How the session ended, for the one log line per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// QUIT, or we closed after a fatal reply (too many errors, lock-out).
    Closed,
    /// The client went away without QUIT.
    Disconnected,
    /// The client went away in the middle of DATA (nothing was queued).
    DisconnectedInData,
    /// The client stopped sending; we said 421.
    Timeout,
    /// The STARTTLS handshake failed.
    TlsFailed,
    /// A read or write failed.
    IoError,
    /// The relay is shutting down; we said 421.
    Shutdown,
}

impl Outcome {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Disconnected => "disconnected",
            Self::DisconnectedInData => "disconnected-in-data",
            Self::Timeout => "timeout",
            Self::TlsFailed => "tls-failed",
            Self::IoError => "io-error",
            Self::Shutdown => "shutdown",
        }
    }
}

/// Who puts the session's `220` greeting on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Banner {
    /// The driver writes it first (plain sessions, and STARTTLS listeners).
    Write,
    /// It is already queued on the stream: an implicit-TLS worker wrote it into the handshake
    /// (see [`super::stream::queue_greeting`]), so it left with the session tickets. The driver
    /// only counts it.
    Queued,
}

const READ_CHUNK: usize = 16 * 1024;

/// Run `session` on `io` until it ends, then close lingeringly (see [`Closing`]).
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    io: MaybeTls<S>,
    session: &mut Session,
    deps: &SessionDeps,
    banner: Banner,
) -> Outcome {
    let (outcome, closing) = serve(io, session, deps, banner).await;
    closing.linger().await;
    outcome
}

/// Run `session` on `io` until it ends and send our end of the stream; the caller can log
/// the session, then must await [`Closing::linger`] before the socket is dropped.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    io: MaybeTls<S>,
    session: &mut Session,
    deps: &SessionDeps,
    banner: Banner,
) -> (Outcome, Closing<S>) {
    let mut d = Driver {
        io,
        session,
        deps,
        banner,
        lines: LineBuffer::new(limits::AUTH_LINE),
        out: Vec::with_capacity(1024),
        buf: vec![0; READ_CHUNK],
        verb: "-",
        auth_mechanism: "-",
    };
    let outcome = d.serve().await;
    let closing = Closing::start(d.io, d.buf, outcome).await;
    (outcome, closing)
}

/// End a session that never ran: say `reply` on `io` and close. For an implicit-TLS
/// connection refused after its handshake (the client has read the greeting queued into the
/// handshake, so it gets a reply rather than a silent close). Counted as sent replies, the
/// queued greeting too.
pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: MaybeTls<S>,
    banner: Banner,
    reply: &amtp_proto::Reply,
    listener: &str,
    write_timeout: Duration,
) -> Closing<S> {
    if banner == Banner::Queued {
        metrics::reply_sent(listener, 220);
    }
    metrics::reply_sent(listener, reply.code);
    let mut out = Vec::with_capacity(128);
    reply.write_to(&mut out);
    let outcome = match write_closing(&mut io, &mut out, write_timeout).await {
        Ok(()) => Outcome::Closed,
        Err(_) => Outcome::IoError,
    };
    Closing::start(io, vec![0; 4096], outcome).await
}

/// Write `out` (then empty it) as the session's last words: on TLS, the replies and the
/// close_notify leave in one write (instead of one for the replies and one when the stream
/// is shut down); plain TCP writes them as usual (the FIN follows in [`Closing::start`]).
/// Bounded by `limit`, as every flush (a client that stops reading cannot hold us).
async fn write_closing<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut MaybeTls<S>,
    out: &mut Vec<u8>,
    limit: Duration,
) -> std::io::Result<()> {
    if let MaybeTls::Tls(tls) = io {
        let conn = tls.get_mut().1;
        // rustls encrypts into its own (bounded) buffer; what it does not take is written
        // the normal way below, and the close_notify then follows at shutdown.
        let taken = std::io::Write::write(&mut conn.writer(), out).unwrap_or(0);
        out.drain(..taken);
        if out.is_empty() {
            // The shutdown in `Closing::start` asks again; rustls sends it once.
            conn.send_close_notify();
        }
    }
    let write = async {
        io.write_all(out).await?;
        io.flush().await
    };
    let result = timeout(limit, write).await;
    out.clear();
    result.map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
}

/// A session's connection on its way out, so that our last reply (`221`, or a `421`)
/// reaches the client.
///
/// Closing a socket that still holds unread input makes the kernel answer with a reset, and
/// a reset discards whatever we wrote that the client has not yet received: a client that
/// pipelined more than we read (or kept sending past a timeout) would see the connection
/// reset instead of our reply. So: our FIN goes out after the reply (TLS: close_notify
/// first, in the reply's own write), then [`Closing::linger`] reads and discards input until
/// the client closes too, for at most [`LINGER`] and [`LINGER_BYTES`], and only then is the
/// socket closed.
pub struct Closing<S> {
    io: MaybeTls<S>,
    buf: Vec<u8>,
    /// `None` when there is nothing to wait for (the client is gone, the socket broke).
    deadline: Option<Instant>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Closing<S> {
    async fn start(mut io: MaybeTls<S>, buf: Vec<u8>, outcome: Outcome) -> Self {
        let deadline = Instant::now() + LINGER;
        let client_gone = matches!(
            outcome,
            Outcome::Disconnected | Outcome::DisconnectedInData | Outcome::IoError
        );
        let sent = timeout_at(deadline, io.shutdown()).await.is_ok();
        Self {
            io,
            buf,
            deadline: (sent && !client_gone).then_some(deadline),
        }
    }

    /// Discard what the client still sends until it closes (bounded), then drop the socket.
    pub async fn linger(mut self) {
        let Some(deadline) = self.deadline else {
            return;
        };
        let mut discarded = 0usize;
        while discarded < LINGER_BYTES {
            match timeout_at(deadline, self.io.read(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => discarded += n,
                _ => break,
            }
        }
    }
}

/// How long a closing session keeps reading (and discarding) what the client still sends.
const LINGER: Duration = Duration::from_secs(3);
/// Most bytes discarded while lingering; a client that sends more is cut off.
const LINGER_BYTES: usize = 256 * 1024;

struct Driver<'a, S> {
    io: MaybeTls<S>,
    session: &'a mut Session,
    deps: &'a SessionDeps,
    /// Whether the greeting is ours to write.
    banner: Banner,
    lines: LineBuffer,
    out: Vec<u8>,
    buf: Vec<u8>,
    /// The verb of the command being answered (for the refused-command log and metric).
    verb: &'static str,
    /// The mechanism of the AUTH in progress (for the AUTH metric).
    auth_mechanism: &'static str,
}

/// The command verb a line starts with, for logs and metric labels (bounded: a known verb or
/// `unknown`), also for lines that failed to parse.
fn verb_of(line: &[u8]) -> &'static str {
    const VERBS: [&str; 12] = [
        "EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "HELP", "AUTH",
        "STARTTLS",
    ];
    let word = line
        .split(|b| *b == b' ' || *b == b'\r' || *b == b'\n')
        .next()
        .unwrap_or_default();
    VERBS
        .iter()
        .find(|v| v.as_bytes().eq_ignore_ascii_case(word))
        .copied()
        .unwrap_or("unknown")
}

/// A bounded label for a SASL mechanism name.
fn mechanism_label(name: &str) -> &'static str {
    ["PLAIN", "LOGIN", "CRAM-MD5"]
        .into_iter()
        .find(|m| m.eq_ignore_ascii_case(name))
        .unwrap_or("other")
}

impl<S: AsyncRead + AsyncWrite + Unpin> Driver<'_, S> {
    async fn serve(&mut self) -> Outcome {
        let greeting = self.session.greeting();
        self.record_reply(&greeting);
        if self.banner == Banner::Write {
            greeting.write_to(&mut self.out);
        }
        let command_timeout = self.session.ctx.limits.command_timeout.0;
        // The deadline for the command line being received: it starts when we begin waiting
        // for a line and does not move while bytes trickle in (a per-read timeout alone lets
        // one byte every few minutes hold the session for good).
        let mut line_deadline: Option<Instant> = None;
        loop {
            while let Some(item) = self.lines.next_line() {
                let actions = match item {
                    Err(LineError::TooLong) => {
                        self.verb = "unknown";
                        self.session.on_line_too_long()
                    }
                    Ok(line) if self.session.expects_sasl_line() => {
                        self.verb = "AUTH";
                        self.session.on_sasl_line(&line)
                    }
                    Ok(line) => {
                        self.verb = verb_of(&line);
                        let parsed = amtp_proto::command::parse(&line);
                        if let Ok(Command::Auth { mechanism, .. }) = &parsed {
                            self.auth_mechanism = mechanism_label(mechanism);
                        }
                        if matches!(parsed, Ok(Command::Mail(_)))
                            && !self.deps.lifecycle.accepts_transactions()
                        {
                            // SIGTERM: no new transaction starts.
                            self.say_shutting_down();
                            let _ = self.flush_closing().await;
                            return Outcome::Shutdown;
                        }
                        if let Ok(Command::Mail { .. }) = &parsed {
                            self.prepare_rate().await;
                        }
                        self.session.on_command(parsed)
                    }
                };
                if let Some(end) = self.perform(actions).await {
                    return end;
                }
                line_deadline = None;
            }
            if self.flush().await.is_err() {
                return Outcome::IoError;
            }
            let deadline = *line_deadline.get_or_insert_with(|| Instant::now() + command_timeout);
            let read = tokio::select! {
                r = timeout_at(deadline, self.io.read(&mut self.buf)) => r,
                () = self.deps.lifecycle.closing() => {
                    self.say_shutting_down();
                    let _ = self.flush_closing().await;
                    return Outcome::Shutdown;
                }
            };
            match read {
                Err(_) => {
                    self.verb = "-";
                    if self.lines.has_partial() {
                        metrics::client_too_slow(&self.session.ctx.listener.name, "command_line");
                        tracing::info!(peer = %self.session.ctx.peer, "command line not completed within command_timeout; closing");
                    } else {
                        metrics::client_too_slow(&self.session.ctx.listener.name, "idle");
                    }
                    let actions = self.session.on_timeout();
                    self.perform(actions).await;
                    return Outcome::Timeout;
                }
                Ok(Ok(0)) => return Outcome::Disconnected,
                Ok(Ok(n)) => self.lines.push(&self.buf[..n]),
                Ok(Err(_)) => return Outcome::IoError,
            }
        }
    }

    /// Queue the `421 4.3.2` said when the relay shuts down (the caller flushes and ends).
    fn say_shutting_down(&mut self) {
        self.verb = "-";
        let reply = shutting_down(&self.session.ctx.hostname);
        self.record_reply(&reply);
        reply.write_to(&mut self.out);
    }

    /// Write buffered replies; a client that stops reading cannot hold the session past the
    /// command timeout (TLS flushes can block too, so both are under one deadline).
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let (io, out) = (&mut self.io, &self.out);
        let write = async move {
            io.write_all(out).await?;
            io.flush().await
        };
        let result = timeout(self.session.ctx.limits.command_timeout.0, write).await;
        self.out.clear();
        result.map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
    }

    /// Write buffered replies as the session's last (see [`write_closing`]): the caller ends
    /// the session.
    async fn flush_closing(&mut self) -> std::io::Result<()> {
        let limit = self.session.ctx.limits.command_timeout.0;
        write_closing(&mut self.io, &mut self.out, limit).await
    }

    /// Perform actions in order; follow-up actions from the session run before the rest.
    /// Returns `Some` when the session is over.
    async fn perform(&mut self, actions: Vec<Action>) -> Option<Outcome> {
        let mut todo: VecDeque<Action> = actions.into();
        while let Some(action) = todo.pop_front() {
            let follow =
                match action {
                    Action::Reply(r) => {
                        self.record_reply(&r);
                        r.write_to(&mut self.out);
                        continue;
                    }
                    Action::Close => {
                        let _ = self.flush_closing().await;
                        return Some(Outcome::Closed);
                    }
                    Action::StartTls => {
                        if self.flush().await.is_err() {
                            return Some(Outcome::IoError);
                        }
                        // RFC 3207 §6: anything the client pipelined after STARTTLS is discarded.
                        let _ = self.lines.take_unconsumed();
                        match self.upgrade().await {
                            Some(info) => {
                                self.session.on_tls_established(info);
                                continue;
                            }
                            None => return Some(Outcome::TlsFailed),
                        }
                    }
                    Action::ReceiveData => {
                        if self.flush().await.is_err() {
                            return Some(Outcome::IoError);
                        }
                        match self.receive_data().await {
                            Ok(result) => {
                                let now = std::time::SystemTime::now()
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .map_or(0, |d| d.as_secs());
                                let id = if result.is_ok() {
                                    (self.deps.new_id)()
                                } else {
                                    None
                                };
                                self.verb = "DATA";
                                self.session.on_data(result, now, id)
                            }
                            Err(Outcome::Timeout) => {
                                self.verb = "DATA";
                                let actions = self.session.on_timeout();
                                Box::pin(self.perform(actions)).await;
                                return Some(Outcome::Timeout);
                            }
                            Err(end) => return Some(end),
                        }
                    }
                    Action::Verify(credentials) => {
                        let ask = self.deps.policy.send(Authenticate {
                            ip: self.session.ctx.peer.ip(),
                            credentials,
                        });
                        let outcome =
                            match timeout(self.session.ctx.limits.command_timeout.0, ask).await {
                                Ok(Ok(outcome)) => outcome,
                                _ => AuthOutcome::Unavailable,
                            };
                        let label = match &outcome {
                            AuthOutcome::Success(user) if !self.session.amtp_auth_bound(user) => {
                                "not_bound"
                            }
                            AuthOutcome::Success(_) => "success",
                            AuthOutcome::Failed => "failed",
                            AuthOutcome::Locked => "locked",
                            AuthOutcome::Unavailable => "unavailable",
                        };
                        metrics::auth_attempt(self.auth_mechanism, label);
                        self.session.on_auth_outcome(outcome)
                    }
                    Action::VerifyIdentity { ehlo } => {
                        let (result, cached) = self.identify(&ehlo).await;
                        metrics::identity_check(match &result {
                            Ok(name) if check_ehlo(name, &ehlo).is_err() => "ehlo_mismatch",
                            Ok(_) if cached => "cache_hit",
                            Ok(_) => "verified",
                            Err(e) => e.label(),
                        });
                        self.session.on_identity(result)
                    }
                    Action::Enqueue(message) => {
                        let summary = Received::of(&message, self.session);
                        let waited = Instant::now();
                        let result =
                            match timeout(self.deps.enqueue_timeout, (self.deps.queue)(message))
                                .await
                            {
                                Ok(r) => r,
                                Err(_) => Err(EnqueueError::Unavailable),
                            };
                        match &result {
                            Ok(id) => {
                                let listener = &self.session.ctx.listener.name;
                                metrics::message_accepted(listener, summary.size, waited.elapsed());
                                summary.log(*id, listener, self.session.ctx.peer.ip());
                            }
                            Err(e) => metrics::enqueue_refused(e.label()),
                        }
                        self.session.on_enqueued(result)
                    }
                };
            for a in follow.into_iter().rev() {
                todo.push_front(a);
            }
        }
        None
    }

    /// Count a reply, and log it when it refuses the command (4xx/5xx): the trail an
    /// operator greps for "why was this refused" (Postfix's `reject:` lines).
    fn record_reply(&self, r: &amtp_proto::Reply) {
        let listener = &self.session.ctx.listener.name;
        metrics::reply_sent(listener, r.code);
        if r.code >= 400 {
            metrics::command_refused(listener, self.verb);
            tracing::info!(
                listener = %listener,
                client = %self.session.ctx.peer.ip(),
                verb = self.verb,
                code = r.code,
                reason = %r.text(),
                "refused"
            );
        }
    }

    /// With `[cluster]`, have a fleet rate token ready for the identity before its MAIL is
    /// decided (see [`crate::cluster::rate`]); nothing to do otherwise.
    async fn prepare_rate(&self) {
        if let (Some(amtp), Some(identity)) = (&self.session.ctx.amtp, self.session.identity())
            && let Some(limiter) = &amtp.policy.rate_limit
        {
            limiter.prepare(identity).await;
        }
    }

    /// The AMTP identity for this connection: by reverse DNS (public, or private when the
    /// PTR rule applies to them), else the certificate name equal to the EHLO argument.
    /// Also says whether the binding came from the identity cache.
    async fn identify(&self, ehlo: &str) -> (Result<String, IdentityError>, bool) {
        let Some(amtp) = &self.session.ctx.amtp else {
            return (
                Err(IdentityError::Temporary("not an AMTP session".into())),
                false,
            );
        };
        if amtp.class == TrustClass::Private && !amtp.policy.private_require_ptr {
            let wanted = normalize(ehlo);
            let result = if amtp.peer.names.contains(&wanted) {
                Ok(wanted)
            } else {
                Err(IdentityError::EhloMismatch {
                    ehlo: ehlo.to_string(),
                    identity: amtp.peer.names.join(","),
                })
            };
            return (result, false);
        }
        let Some(checker) = &self.deps.identity else {
            return (
                Err(IdentityError::Temporary("no resolver configured".into())),
                false,
            );
        };
        match checker
            .verify_cached(self.session.ctx.peer.ip(), &amtp.peer)
            .await
        {
            Ok((name, cached)) => (Ok(name), cached),
            Err(e) => (Err(e), false),
        }
    }

    async fn upgrade(&mut self) -> Option<super::TlsInfo> {
        let acceptor = self.deps.tls.clone()?;
        let MaybeTls::Plain(plain) = std::mem::replace(&mut self.io, MaybeTls::Upgrading) else {
            return None;
        };
        let started = Instant::now();
        let listener = self.session.ctx.listener.name.clone();
        match timeout(
            self.session.ctx.limits.tls_handshake_timeout.0,
            acceptor.accept(plain),
        )
        .await
        {
            Ok(Ok(tls)) => {
                metrics::tls_handshake(&listener, Ok(resumed(&tls)), started.elapsed());
                let info = tls_info(&tls);
                self.io = MaybeTls::Tls(Box::new(tls));
                Some(info)
            }
            Ok(Err(e)) => {
                metrics::tls_handshake(&listener, Err(handshake_failure(&e)), started.elapsed());
                tracing::debug!(peer = %self.session.ctx.peer, error = %e, "STARTTLS handshake failed");
                None
            }
            Err(_) => {
                metrics::tls_handshake(&listener, Err("timeout"), started.elapsed());
                None
            }
        }
    }

    /// Receive one message. Bytes after the end marker go back to the line buffer.
    async fn receive_data(&mut self) -> Result<Result<Vec<u8>, amtp_proto::DataError>, Outcome> {
        let limits = self.session.ctx.limits.clone();
        let max = usize::try_from(limits.max_message_size.0).unwrap_or(usize::MAX);
        let mut rx = DataReceiver::new(max);
        let pending = self.lines.take_unconsumed();
        if let Progress::Done { consumed } = rx.feed(&pending) {
            self.lines.push(&pending[consumed..]);
            return Ok(rx.finish());
        }
        let started = Instant::now();
        let mut received = u64::try_from(pending.len()).unwrap_or(u64::MAX);
        loop {
            let idle = Instant::now() + limits.data_timeout.0;
            let total = data_deadline(
                started,
                limits.data_timeout.0,
                received,
                limits.min_data_rate,
            );
            let read = tokio::select! {
                r = timeout_at(idle.min(total), self.io.read(&mut self.buf)) => r,
                () = self.deps.lifecycle.closing() => {
                    // The grace period is over in the middle of DATA: nothing was
                    // acknowledged, so the client keeps the message and retries.
                    self.say_shutting_down();
                    let _ = self.flush_closing().await;
                    return Err(Outcome::Shutdown);
                }
            };
            let n = match read {
                Err(_) => {
                    if total <= idle {
                        metrics::client_too_slow(&self.session.ctx.listener.name, "data_rate");
                        tracing::info!(peer = %self.session.ctx.peer, received, min_data_rate = limits.min_data_rate, "DATA slower than min_data_rate; closing");
                    } else {
                        metrics::client_too_slow(&self.session.ctx.listener.name, "data_idle");
                    }
                    return Err(Outcome::Timeout);
                }
                Ok(Ok(0)) => return Err(Outcome::DisconnectedInData),
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return Err(Outcome::IoError),
            };
            received = received.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
            if let Progress::Done { consumed } = rx.feed(&self.buf[..n]) {
                self.lines.push(&self.buf[consumed..n]);
                return Ok(rx.finish());
            }
        }
    }
}

/// What the `received` log event says about a message, taken before it goes to the queue.
struct Received {
    sender: String,
    recipients: usize,
    size: usize,
    mpc: Option<String>,
    message_id: Option<String>,
    user: Option<String>,
    identity: Option<String>,
}

impl Received {
    fn of(m: &amtp_storage::NewMessage, session: &Session) -> Self {
        Self {
            sender: m.envelope.sender.clone(),
            recipients: m.recipients.len(),
            size: m.body.len(),
            mpc: m.envelope.mpc.clone(),
            message_id: m.envelope.message_id.clone(),
            user: session.user().map(str::to_string),
            identity: session.identity().map(str::to_string),
        }
    }

    /// The first milestone of the per-message trail: one line keyed by the queue id.
    fn log(&self, id: QueueId, listener: &str, client: std::net::IpAddr) {
        tracing::info!(
            queue_id = %id,
            node = crate::cluster::get().map_or("-", |c| c.node_id()),
            listener = %listener,
            client = %client,
            identity = self.identity.as_deref().unwrap_or("-"),
            user = self.user.as_deref().unwrap_or("-"),
            sender = %self.sender,
            recipients = self.recipients,
            size = self.size,
            mpc = self.mpc.as_deref().unwrap_or("-"),
            message_id = self.message_id.as_deref().unwrap_or("-"),
            "received"
        );
    }
}

/// When a DATA transfer that started at `started` and has delivered `received` bytes so far
/// must be complete: `data_timeout`, plus one second per `min_rate` bytes (never, when
/// `min_rate` is 0). A client that keeps the per-read timeout alive with a byte now and then
/// still runs out of time.
fn data_deadline(
    started: Instant,
    data_timeout: Duration,
    received: u64,
    min_rate: u64,
) -> Instant {
    /// Far enough to mean "no deadline" without overflowing `Instant`.
    const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    if min_rate == 0 {
        return started + NEVER;
    }
    let credit_ms = received.saturating_mul(1000) / min_rate;
    started + (data_timeout + Duration::from_millis(credit_ms)).min(NEVER)
}
