//! The async loop that runs a [`Session`] over a stream: reads with timeouts into bounded
//! buffers, feeds the state machine, and performs its actions (write replies, STARTTLS,
//! receive DATA, ask the policy and queue actors).
//!
//! Replies to pipelined commands are written in order and flushed when no further complete
//! command is buffered (RFC 2920), and always before waiting on the client.

use super::stream::{MaybeTls, tls_info};
use super::{Action, Session};
use crate::amtp_tls::TrustClass;
use crate::identity::{IdentityChecker, IdentityError, normalize};
use crate::messages::{AuthOutcome, Authenticate, Enqueue, EnqueueError};
use actix::Recipient;
use amtp_proto::{DataReceiver, LineBuffer, LineError, Progress, limits};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;

/// What a session needs from the rest of the relay.
#[derive(Clone)]
pub struct SessionDeps {
    /// The policy actor (AUTH).
    pub policy: Recipient<Authenticate>,
    /// The queue actor.
    pub queue: Recipient<Enqueue>,
    /// For STARTTLS, when a certificate is configured.
    pub tls: Option<TlsAcceptor>,
    /// How long to wait for the queue to make a message durable.
    pub enqueue_timeout: Duration,
    /// AMTP identity checks (resolver + identity cache), when an AMTP listener is configured.
    pub identity: Option<IdentityChecker>,
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
        }
    }
}

const READ_CHUNK: usize = 16 * 1024;

/// Run `session` on `io` until it ends, then close lingeringly (see [`Closing`]).
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    io: MaybeTls<S>,
    session: &mut Session,
    deps: &SessionDeps,
) -> Outcome {
    let (outcome, closing) = serve(io, session, deps).await;
    closing.linger().await;
    outcome
}

/// Run `session` on `io` until it ends and send our end of the stream; the caller can log
/// the session, then must await [`Closing::linger`] before the socket is dropped.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    io: MaybeTls<S>,
    session: &mut Session,
    deps: &SessionDeps,
) -> (Outcome, Closing<S>) {
    let mut d = Driver {
        io,
        session,
        deps,
        lines: LineBuffer::new(limits::AUTH_LINE),
        out: Vec::with_capacity(1024),
        buf: vec![0; READ_CHUNK],
    };
    let outcome = d.serve().await;
    let closing = Closing::start(d.io, d.buf, outcome).await;
    (outcome, closing)
}

/// A session's connection on its way out, so that our last reply (`221`, or a `421`)
/// reaches the client.
///
/// Closing a socket that still holds unread input makes the kernel answer with a reset, and
/// a reset discards whatever we wrote that the client has not yet received: a client that
/// pipelined more than we read (or kept sending past a timeout) would see the connection
/// reset instead of our reply. So: our FIN goes out after the reply (TLS: close_notify
/// first), then [`Closing::linger`] reads and discards input until the client closes too,
/// for at most [`LINGER`] and [`LINGER_BYTES`], and only then is the socket closed.
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
    lines: LineBuffer,
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Driver<'_, S> {
    async fn serve(&mut self) -> Outcome {
        self.session.greeting().write_to(&mut self.out);
        let command_timeout = self.session.ctx.limits.command_timeout.0;
        // The deadline for the command line being received: it starts when we begin waiting
        // for a line and does not move while bytes trickle in (a per-read timeout alone lets
        // one byte every few minutes hold the session for good).
        let mut line_deadline: Option<Instant> = None;
        loop {
            while let Some(item) = self.lines.next_line() {
                let actions = match item {
                    Err(LineError::TooLong) => self.session.on_line_too_long(),
                    Ok(line) if self.session.expects_sasl_line() => {
                        self.session.on_sasl_line(&line)
                    }
                    Ok(line) => self.session.on_command(amtp_proto::command::parse(&line)),
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
            match timeout_at(deadline, self.io.read(&mut self.buf)).await {
                Err(_) => {
                    if self.lines.has_partial() {
                        tracing::info!(peer = %self.session.ctx.peer, "command line not completed within command_timeout; closing");
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

    /// Perform actions in order; follow-up actions from the session run before the rest.
    /// Returns `Some` when the session is over.
    async fn perform(&mut self, actions: Vec<Action>) -> Option<Outcome> {
        let mut todo: VecDeque<Action> = actions.into();
        while let Some(action) = todo.pop_front() {
            let follow = match action {
                Action::Reply(r) => {
                    r.write_to(&mut self.out);
                    continue;
                }
                Action::Close => {
                    let _ = self.flush().await;
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
                            self.session.on_data(result, now)
                        }
                        Err(Outcome::Timeout) => {
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
                    self.session.on_auth_outcome(outcome)
                }
                Action::VerifyIdentity { ehlo } => {
                    let result = self.identify(&ehlo).await;
                    self.session.on_identity(result)
                }
                Action::Enqueue(message) => {
                    let result = match timeout(
                        self.deps.enqueue_timeout,
                        self.deps.queue.send(Enqueue(message)),
                    )
                    .await
                    {
                        Ok(Ok(r)) => r,
                        Ok(Err(_)) | Err(_) => Err(EnqueueError::Unavailable),
                    };
                    self.session.on_enqueued(result)
                }
            };
            for a in follow.into_iter().rev() {
                todo.push_front(a);
            }
        }
        None
    }

    /// The AMTP identity for this connection: by reverse DNS (public, or private when the
    /// PTR rule applies to them), else the certificate name equal to the EHLO argument.
    async fn identify(&self, ehlo: &str) -> Result<String, IdentityError> {
        let Some(amtp) = &self.session.ctx.amtp else {
            return Err(IdentityError::Temporary("not an AMTP session".into()));
        };
        if amtp.class == TrustClass::Private && !amtp.policy.private_require_ptr {
            let wanted = normalize(ehlo);
            return if amtp.peer.names.contains(&wanted) {
                Ok(wanted)
            } else {
                Err(IdentityError::EhloMismatch {
                    ehlo: ehlo.to_string(),
                    identity: amtp.peer.names.join(","),
                })
            };
        }
        let Some(checker) = &self.deps.identity else {
            return Err(IdentityError::Temporary("no resolver configured".into()));
        };
        checker.verify(self.session.ctx.peer.ip(), &amtp.peer).await
    }

    async fn upgrade(&mut self) -> Option<super::TlsInfo> {
        let acceptor = self.deps.tls.clone()?;
        let MaybeTls::Plain(plain) = std::mem::replace(&mut self.io, MaybeTls::Upgrading) else {
            return None;
        };
        match timeout(
            self.session.ctx.limits.tls_handshake_timeout.0,
            acceptor.accept(plain),
        )
        .await
        {
            Ok(Ok(tls)) => {
                let info = tls_info(&tls);
                self.io = MaybeTls::Tls(Box::new(tls));
                Some(info)
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.session.ctx.peer, error = %e, "STARTTLS handshake failed");
                None
            }
            Err(_) => None,
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
            let read = timeout_at(idle.min(total), self.io.read(&mut self.buf)).await;
            let n = match read {
                Err(_) => {
                    if total <= idle {
                        tracing::info!(peer = %self.session.ctx.peer, received, min_data_rate = limits.min_data_rate, "DATA slower than min_data_rate; closing");
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
