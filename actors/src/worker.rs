//! Connection workers: the pool that runs TLS handshakes and sessions, one actor per arbiter
//! (thread), so the CPU-heavy handshake work and session parsing spread across cores.
//!
//! A worker receives a [`Connection`], re-registers the socket with its own arbiter's reactor,
//! performs the implicit-TLS handshake when the listener asks for it, and runs the session
//! there (STARTTLS upgrades happen on the same thread). It logs one line per session.
//!
//! An implicit-TLS handshake carries the session's `220` greeting: it is written into the
//! rustls connection before the handshake, which sends it only once the client is verified,
//! in the same write as the session tickets (one write per session fewer).
//!
//! The settings a connection runs under are read from the [`Runtime`] swap point when it
//! arrives and kept to the session's end, so a reload never changes an open session.

use crate::amtp_policy::AmtpPolicy;
use crate::amtp_tls::AmtpTrust;
use crate::config::{ListenerRole, SessionConfig};
use crate::identity::PeerCertificate;
use crate::messages::Connection;
use crate::metrics::{self, pool::Meter};
use crate::runtime::Runtime;
use crate::session::amtp::AmtpContext;
use crate::session::driver::{self, Banner, SessionDeps};
use crate::session::stream::{MaybeTls, handshake_failure, queue_greeting, resumed, tls_info};
use crate::session::{Session, SessionContext, greeting};
use crate::tls_accept::{Acceptors, Chosen, Prefixed};
use actix::prelude::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

/// What every session on every worker shares.
pub struct WorkerShared {
    /// Actor recipients and TLS.
    pub deps: SessionDeps,
    /// The implicit-TLS SMTP listeners' (`submissions`) acceptors: the SMTP TLS configuration
    /// (the one STARTTLS uses, `deps.tls`), without a returning-peer configuration.
    pub submissions: Option<Acceptors>,
    /// Our host name.
    pub hostname: Arc<str>,
    /// Session limits.
    pub limits: Arc<SessionConfig>,
    /// Local domains.
    pub local_domains: Arc<HashSet<String>>,
    /// Whether any user has a CRAM-MD5 secret.
    pub cram_secrets: bool,
    /// Users with their own Mail Policy Code (from the users file).
    pub user_mpcs: Arc<std::collections::HashMap<String, amtp_proto::mpc::Mpc>>,
    /// Mailbox bound.
    pub mailbox: usize,
    /// AMTP listeners: trust sets (their own server config) and policy.
    pub amtp: Option<AmtpShared>,
}

/// What AMTP listeners share.
pub struct AmtpShared {
    /// Trust sets, the AMTP server config and the classifier.
    pub trust: Arc<AmtpTrust>,
    /// Acceptors over `trust.server_config` and, for returning peers, `trust.resumption`.
    pub acceptors: Acceptors,
    /// The listener policy.
    pub policy: Arc<AmtpPolicy>,
}

/// See the module docs.
pub struct ConnectionWorker {
    /// The current settings; each connection takes a snapshot when it arrives.
    runtime: Arc<Runtime>,
    /// The mailbox bound (a pool setting: fixed for the life of the process).
    mailbox: usize,
    /// This pool member's meter: its depth is counted by the listeners that send to it, and
    /// its busy time is the time spent polling its sessions (handshakes included).
    meter: Meter,
}

impl ConnectionWorker {
    /// A worker over the shared session dependencies.
    pub fn new(runtime: Arc<Runtime>, meter: Meter) -> Self {
        let mailbox = runtime.load().mailbox;
        Self {
            runtime,
            mailbox,
            meter,
        }
    }
}

impl Actor for ConnectionWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

impl Handler<Connection> for ConnectionWorker {
    type Result = ();

    fn handle(&mut self, conn: Connection, _ctx: &mut Self::Context) {
        let _busy = self.meter.handled();
        let meter = self.meter.clone();
        let session = serve_connection(conn, self.runtime.load());
        actix::spawn(async move { meter.timed(session).await });
    }
}

fn nonce() -> String {
    let mut b = [0u8; 6];
    if getrandom::fill(&mut b).is_err() {
        // Uniqueness, not secrecy, is what the Received id needs; CRAM-MD5 challenges add a
        // counter and the host name. Fall back to the clock.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    crate::auth::cram::hex(&b)
}

/// What an AMTP client whose verified certificate we cannot read is told before we close.
fn unusable_certificate(hostname: &str) -> amtp_proto::Reply {
    amtp_proto::Reply::new(
        421,
        "4.7.0",
        format!("{hostname} Client certificate not usable"),
    )
}

async fn serve_connection(conn: Connection, shared: Arc<WorkerShared>) {
    let started = Instant::now();
    let Connection {
        stream,
        peer,
        listener,
        permit,
    } = conn;
    let _permit = permit;
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot register connection");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let is_amtp = listener.role == ListenerRole::Amtp;
    let mut banner = Banner::Write;
    let (io, tls) = if listener.role.implicit_tls() {
        let handshake = Instant::now();
        let mut hello = Vec::with_capacity(64);
        greeting(&shared.hostname).write_to(&mut hello);
        // Queued, not sent: see `queue_greeting` (a failed handshake never shows it).
        let queue = |conn: &mut rustls::ServerConnection| {
            if queue_greeting(conn, &hello) {
                banner = Banner::Queued;
            }
        };
        let acceptors = if is_amtp {
            shared.amtp.as_ref().map(|a| &a.acceptors)
        } else {
            shared.submissions.as_ref()
        };
        let Some(acceptors) = acceptors else {
            tracing::error!(listener = %listener.name, "implicit TLS listener without a certificate");
            return;
        };
        let accept = acceptors.accept(stream, queue);
        match tokio::time::timeout(shared.limits.tls_handshake_timeout.0, accept).await {
            Ok(Ok((tls, chosen))) => {
                metrics::tls_handshake(&listener.name, Ok(resumed(&tls)), handshake.elapsed());
                if chosen == Chosen::Resuming {
                    metrics::tls_classical_resumption();
                }
                let info = tls_info(&tls);
                (MaybeTls::Tls(Box::new(tls)), Some(info))
            }
            Ok(Err(e)) => {
                metrics::tls_handshake(
                    &listener.name,
                    Err(handshake_failure(&e)),
                    handshake.elapsed(),
                );
                tracing::info!(listener = %listener.name, %peer, error = %e, outcome = "tls-handshake-failed", "session");
                return;
            }
            Err(_) => {
                metrics::tls_handshake(&listener.name, Err("timeout"), handshake.elapsed());
                tracing::info!(listener = %listener.name, %peer, outcome = "tls-handshake-timeout", "session");
                return;
            }
        }
    } else {
        (MaybeTls::Plain(Prefixed::new(stream, Vec::new())), None)
    };
    let amtp = match (&io, &shared.amtp) {
        (MaybeTls::Tls(tls), Some(a)) if is_amtp => {
            let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
            let peer_cert = match chain.first().map(|leaf| PeerCertificate::from_der(leaf)) {
                Some(Ok(c)) => c,
                refused => {
                    match refused {
                        Some(Err(e)) => {
                            tracing::info!(listener = %listener.name, %peer, error = %e, outcome = "bad-client-certificate", "session");
                        }
                        _ => {
                            tracing::info!(listener = %listener.name, %peer, outcome = "no-client-certificate", "session");
                        }
                    }
                    // The client has read the greeting that came with the handshake: it is
                    // told why the session ends rather than seeing a silent close.
                    let reply = unusable_certificate(&shared.hostname);
                    let limit = shared.limits.command_timeout.0;
                    driver::refuse(io, banner, &reply, &listener.name, limit)
                        .await
                        .linger()
                        .await;
                    return;
                }
            };
            let class = a.trust.classify(&peer_cert, chain);
            Some(AmtpContext {
                policy: a.policy.clone(),
                peer: peer_cert,
                class,
            })
        }
        _ => None,
    };
    let ctx = SessionContext {
        hostname: shared.hostname.clone(),
        cram_md5: listener.cram_md5 && shared.cram_secrets,
        listener: listener.clone(),
        limits: shared.limits.clone(),
        local_domains: shared.local_domains.clone(),
        peer,
        tls_available: shared.deps.tls.is_some(),
        nonce: nonce(),
        amtp,
        user_mpcs: shared.user_mpcs.clone(),
    };
    let mut session = Session::new(ctx, tls);
    metrics::session_started(&listener.name);
    let (outcome, closing) = driver::serve(io, &mut session, &shared.deps, banner).await;
    metrics::session_ended(&listener.name, outcome.as_str());
    tracing::info!(
        listener = %listener.name,
        %peer,
        helo = session.helo().unwrap_or("-"),
        tls = session.tls().map_or("-", |t| t.version.as_str()),
        user = session.user().unwrap_or("-"),
        identity = session.identity().unwrap_or("-"),
        accepted = session.accepted,
        rejected = session.rejected,
        outcome = outcome.as_str(),
        ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "session"
    );
    // The connection (and its slot) is held until the client has read our last reply.
    closing.linger().await;
}
