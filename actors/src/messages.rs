//! Every message that crosses between actors, in one place.
//!
//! Actors hold `Recipient<M>` for these types, never each other's concrete types; only
//! [`crate::wiring`] names actors. Results are values: a denied AUTH or a full queue is an
//! outcome the session turns into a reply, not an error.

use crate::auth::Credentials;
use crate::config::ListenerConfig;
use crate::limits::ConnectionPermit;
use actix::Message;
use amtp_storage::{NewMessage, QueueId};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Listener → connection worker: a new client connection to serve.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connection {
    /// The socket, deregistered from the listener's reactor (`into_std`) so the worker's
    /// arbiter owns its I/O.
    pub stream: std::net::TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener it arrived on.
    pub listener: Arc<ListenerConfig>,
    /// Held for the connection's lifetime: releases its slot in the connection limits.
    pub permit: ConnectionPermit,
}

/// Session → policy: check SMTP AUTH credentials (with brute-force throttling).
#[derive(Debug, Message)]
#[rtype(result = "AuthOutcome")]
pub struct Authenticate {
    /// The client's IP (failures are counted per IP).
    pub ip: IpAddr,
    /// What the client sent.
    pub credentials: Credentials,
}

/// The policy actor's answer to [`Authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Valid; the canonical user name.
    Success(String),
    /// Invalid credentials (`535 5.7.8`).
    Failed,
    /// The IP or user is locked out (`454 4.7.0` and disconnect).
    Locked,
    /// The policy actor could not answer in time (`454 4.7.0`, the client may retry).
    Unavailable,
}

/// Session → queue: make this message durable; the future is ready once it is on disk (or
/// refused). A function rather than an actor message: the relay's is
/// [`crate::queue_actor::Intake::enqueue`], which hands the message to the group committer
/// from the session's own thread (no hop through another actor's thread); tests give a
/// stand-in.
pub type Enqueue = Arc<
    dyn Fn(
            Box<NewMessage>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<QueueId, EnqueueError>> + Send>,
        > + Send
        + Sync,
>;

/// Why a message was not queued (all become `451 4.3.0`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    /// The commit queue is full: backpressure.
    #[error("queue busy (commit backlog full)")]
    Busy,
    /// Storage is unhealthy or the queue actor is gone or too slow.
    #[error("queue unavailable")]
    Unavailable,
    /// The commit failed.
    #[error("commit failed: {0}")]
    Failed(String),
}

impl EnqueueError {
    /// A bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::Unavailable => "unavailable",
            Self::Failed(_) => "failed",
        }
    }
}

/// Queue → router: messages were committed (their bodies wait in
/// [`crate::delivery::fresh::Fresh`]); look for due messages now. Sent once per commit batch,
/// not once per message.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct WakeRouter;

/// Router → destination: deliver these messages, each to its recipients. One message per
/// destination per router tick, however many jobs it carries (fewer wake-ups than one each).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DeliverJobs(pub Vec<crate::delivery::outbound::Job>);

/// Destination → router: the results that were ready together, from any of its connections
/// (one wake-up of the router for all of them).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct JobResults(pub Vec<JobResult>);

/// Destination → router: jobs its message rate will not let through for a while, handed back
/// untried (no attempt, no outcome): release each message's lease and make it due again at
/// the given time (ms since the epoch), when the destination expects a token for it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Postponed(pub Vec<(amtp_storage::QueueId, u64)>);

/// What happened to one message's recipients at one destination.
#[derive(Debug)]
pub struct JobResult {
    /// The message.
    pub id: amtp_storage::QueueId,
    /// The destination that tried (its key, e.g. `amtp:example.test`), or `-` for decisions
    /// taken before any.
    pub destination: String,
    /// The next hop that gave them (none when the relay decided without connecting).
    pub next_hop: Option<NextHop>,
    /// One disposition per recipient.
    pub outcomes: Vec<(String, amtp_proto::client::Disposition)>,
}

/// A next hop as the per-message log names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    /// Its host name (SRV/MX target or configured host).
    pub name: String,
    /// The address connected to.
    pub addr: SocketAddr,
}

/// Admin socket → queue: a read-only query (`list`, `show ID`); the answer is the text to print.
#[derive(Debug, Message)]
#[rtype(result = "Result<String, String>")]
pub struct AdminQuery(pub String);

/// Wiring → listener: stop accepting (shutdown).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopAccepting;

/// Wiring → listener: new settings for this listener (a reload), used from the next
/// connection on.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Reconfigure(pub Arc<ListenerConfig>);
