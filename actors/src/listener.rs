//! The listener actor: one per bound address. Accepts connections, enforces the connection
//! limits, and hands each connection to a connection worker (round robin over the pool).
//!
//! On a `proxy_protocol` listener the client address is not known at accept: the connection
//! takes only a global slot there, must come from `proxy_trusted`, and takes its per-IP slot
//! once its PROXY header names the client (see [`crate::proxy`]).
//!
//! Refusals are answered on the wire (`421 4.7.0` over a limit, `421 4.3.2` when every worker's
//! mailbox is full) and closed, never queued. Accept errors (e.g. EMFILE) back off
//! exponentially from 10 ms to 1 s instead of spinning.
//!
//! While the relay drains (`amtp-relay drain`, readiness 503) the socket stays open but every
//! connection is answered `421 4.3.2 Service shutting down` and closed, so a client that races
//! in is told to go elsewhere instead of being left to time out. A reload sends
//! [`Reconfigure`]: the listener's settings (limits, AUTH, MPC default, …) are swapped for
//! the next connection; connections already handed over keep the settings they came with.

use crate::config::ListenerConfig;
use crate::health::Health;
use crate::lifecycle::shutting_down;
use crate::limits::{ConnectionLimits, ConnectionPermit, LimitExceeded};
use crate::messages::{Connection, Reconfigure, StopAccepting};
use crate::metrics::{self, pool::Metered};
use crate::proxy;
use actix::dev::SendError;
use actix::prelude::*;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// See the module docs.
pub struct ListenerActor {
    socket: Option<std::net::TcpListener>,
    config: Arc<ArcSwap<ListenerConfig>>,
    limits: Arc<ConnectionLimits>,
    workers: Vec<Metered<Connection>>,
    hostname: Arc<str>,
    accepting: Option<SpawnHandle>,
    health: Arc<Health>,
    /// Counted as up in `health` (the accept loop started).
    up: bool,
}

impl ListenerActor {
    /// Over an already-bound socket (binding happens before the actor system starts, so that
    /// a port conflict is a clear start-up error).
    pub fn new(
        socket: std::net::TcpListener,
        config: Arc<ListenerConfig>,
        limits: Arc<ConnectionLimits>,
        workers: Vec<Metered<Connection>>,
        hostname: Arc<str>,
        health: Arc<Health>,
    ) -> Self {
        Self {
            socket: Some(socket),
            config: Arc::new(ArcSwap::new(config)),
            limits,
            workers,
            hostname,
            accepting: None,
            health,
            up: false,
        }
    }
}

impl Actor for ListenerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(socket) = self.socket.take() else {
            return;
        };
        let listener = match socket
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(socket))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listener = %self.config.load().name, error = %e, "cannot use listening socket");
                ctx.stop();
                return;
            }
        };
        let accept = accept_loop(
            listener,
            self.config.clone(),
            self.limits.clone(),
            self.workers.clone(),
            self.hostname.clone(),
            self.health.clone(),
        );
        self.accepting = Some(ctx.spawn(actix::fut::wrap_future(accept)));
        self.health.listener_up();
        self.up = true;
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if std::mem::take(&mut self.up) {
            self.health.listener_down();
        }
    }
}

impl Handler<StopAccepting> for ListenerActor {
    type Result = ();

    fn handle(&mut self, _: StopAccepting, ctx: &mut Self::Context) {
        if let Some(handle) = self.accepting.take() {
            ctx.cancel_future(handle);
        }
        ctx.stop();
    }
}

impl Handler<Reconfigure> for ListenerActor {
    type Result = ();

    fn handle(&mut self, msg: Reconfigure, _ctx: &mut Self::Context) {
        self.limits
            .set_limits(msg.0.max_connections, msg.0.max_connections_per_ip);
        self.config.store(msg.0);
    }
}

async fn refuse(mut stream: TcpStream, reply: String) {
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(reply.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// What a connection needs to reach a worker once its client address is known; shared by the
/// accept loop and the PROXY header readers it spawns.
struct HandOver {
    workers: Vec<Metered<Connection>>,
    hostname: Arc<str>,
    /// Round-robin position over `workers`.
    next: AtomicUsize,
}

impl HandOver {
    /// Give the connection to a worker (round robin, skipping full mailboxes), or refuse it
    /// with `421 4.3.2` when every worker is saturated.
    fn dispatch(
        &self,
        config: &Arc<ListenerConfig>,
        stream: TcpStream,
        peer: SocketAddr,
        permit: ConnectionPermit,
    ) {
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand over connection");
                return;
            }
        };
        let mut pending = Some(Connection {
            stream: std_stream,
            peer,
            listener: config.clone(),
            permit,
        });
        for _ in 0..self.workers.len() {
            let Some(msg) = pending.take() else { break };
            let next = self.next.fetch_add(1, Ordering::Relaxed);
            let worker = &self.workers[next % self.workers.len()];
            if let Err(SendError::Full(m) | SendError::Closed(m)) = worker.try_send(msg) {
                pending = Some(m);
            }
        }
        if pending.is_none() {
            metrics::connection_accepted(&config.name);
        }
        if let Some(msg) = pending {
            metrics::connection_refused(&config.name, "pool_full");
            tracing::warn!(listener = %config.name, %peer, "all connection workers are saturated; refusing");
            if let Ok(stream) = TcpStream::from_std(msg.stream) {
                actix::spawn(refuse(
                    stream,
                    format!(
                        "421 4.3.2 {} System busy, try again later\r\n",
                        self.hostname
                    ),
                ));
            }
        }
    }

    /// Refuse a connection over a connection limit with `421 4.7.0`.
    fn over_limit(
        &self,
        config: &ListenerConfig,
        stream: TcpStream,
        peer: SocketAddr,
        which: LimitExceeded,
    ) {
        let (why, reason) = match which {
            LimitExceeded::Global => ("Too many connections", "limit"),
            LimitExceeded::PerIp => ("Too many connections from your address", "per_ip_limit"),
        };
        metrics::connection_refused(&config.name, reason);
        tracing::info!(listener = %config.name, %peer, limit = ?which, "connection refused: limit reached");
        actix::spawn(refuse(
            stream,
            format!("421 4.7.0 {} {why}, try again later\r\n", self.hostname),
        ));
    }
}

/// A connection on a `proxy_protocol` listener, holding its global slot: read the header,
/// take the per-IP slot for the client it names, and hand it over. Closed unanswered (and
/// counted) when the header is late or invalid: whatever is on the other end does not speak
/// SMTP to us.
async fn after_proxy_header(
    mut stream: TcpStream,
    socket_peer: SocketAddr,
    mut permit: ConnectionPermit,
    hand: Arc<HandOver>,
    config: Arc<ListenerConfig>,
) {
    let timeout = config.proxy_header_timeout.0;
    let client = match proxy::read_header(&mut stream, timeout).await {
        Ok(client) => client.unwrap_or(socket_peer),
        Err(why) => {
            metrics::proxy_refused(&config.name, why.as_str());
            tracing::info!(listener = %config.name, balancer = %socket_peer, reason = why.as_str(), "connection closed: no valid PROXY header");
            return;
        }
    };
    if let Err(which) = permit.bind_ip(client.ip()) {
        drop(permit);
        hand.over_limit(&config, stream, client, which);
        return;
    }
    hand.dispatch(&config, stream, client, permit);
}

async fn accept_loop(
    listener: TcpListener,
    settings: Arc<ArcSwap<ListenerConfig>>,
    limits: Arc<ConnectionLimits>,
    workers: Vec<Metered<Connection>>,
    hostname: Arc<str>,
    health: Arc<Health>,
) {
    let hand = Arc::new(HandOver {
        workers,
        hostname,
        next: AtomicUsize::new(0),
    });
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = listener.accept().await;
        let config = settings.load_full();
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(10);
                pair
            }
            Err(e) => {
                tracing::warn!(listener = %config.name, error = %e, backoff_ms = backoff.as_millis(), "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if health.is_draining() {
            metrics::connection_refused(&config.name, "draining");
            tracing::info!(listener = %config.name, %peer, "connection refused: draining");
            let mut reply = Vec::new();
            shutting_down(&hand.hostname).write_to(&mut reply);
            actix::spawn(refuse(stream, String::from_utf8_lossy(&reply).into_owned()));
            continue;
        }
        if config.proxy_protocol {
            // The client address comes from the header: only the global slot now.
            if !proxy::is_trusted(&config.proxy_trusted, peer.ip()) {
                metrics::proxy_refused(&config.name, proxy::ProxyRefusal::Untrusted.as_str());
                tracing::warn!(listener = %config.name, %peer, "connection closed: not from a proxy_trusted address");
                continue;
            }
            match limits.try_acquire_global() {
                Ok(permit) => {
                    actix::spawn(after_proxy_header(
                        stream,
                        peer,
                        permit,
                        hand.clone(),
                        config.clone(),
                    ));
                }
                Err(which) => hand.over_limit(&config, stream, peer, which),
            }
            continue;
        }
        match limits.try_acquire(peer.ip()) {
            Ok(permit) => hand.dispatch(&config, stream, peer, permit),
            Err(which) => hand.over_limit(&config, stream, peer, which),
        }
    }
}
