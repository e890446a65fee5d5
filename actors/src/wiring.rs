//! Wiring: starts every actor and connects them. The only module that names concrete actor
//! types; everything else talks through `Recipient<M>` and the types in [`crate::messages`].
//!
//! Must be called inside a running actix `System`. Sockets are bound, the queue opened, TLS
//! and users loaded by the caller beforehand, so every start-up error happens before the
//! first connection is accepted.
//!
//! [`Relay::reload`] applies a new, already validated configuration's live part
//! ([`LiveSettings`]) without dropping a session: one swap in the [`Runtime`], a
//! [`Reconfigure`] per kept listener, new listener actors for added or moved listeners (their
//! sockets bound by the caller, so a port conflict refuses the reload before anything
//! changes), and the users file replaced in the policy actor.

use crate::amtp_policy::AmtpPolicy;
use crate::amtp_tls::AmtpTrust;
use crate::auth::users::UserDb;
use crate::config::{AuthConfig, ListenerConfig, PoolConfig, QueueConfig, SessionConfig, per_core};
use crate::config::{DeliveryConfig, ResolverConfig};
use crate::delivery::fresh::{self, Fresh, Handoff};
use crate::delivery::outbound::OutboundContext;
use crate::delivery::router::{ReplaceShared, Router, RouterShared};
use crate::delivery::schedule::RetryPolicy;
use crate::health::Health;
use crate::identity::{IdentityCache, IdentityChecker};
use crate::lifecycle::{Lifecycle, Phase};
use crate::limits::ConnectionLimits;
use crate::listener::ListenerActor;
use crate::messages::{Connection, Reconfigure, StopAccepting};
use crate::metrics::{
    self,
    pool::{Meter, Metered},
};
use crate::policy::{PolicyActor, ReplaceUsers};
use crate::queue_actor::{Intake, QueueActor};
use crate::resolver::actor::ResolverActor;
use crate::resolver::transport::DnsTransport;
use crate::resolver::{DnsCache, ResolverHandle, TtlPolicy};
use crate::runtime::Runtime;
use crate::session::driver::SessionDeps;
use crate::worker::{AmtpShared, ConnectionWorker, WorkerShared};
use actix::prelude::*;
use amtp_storage::{Committer, CommitterConfig, Queue};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything needed to start the relay.
pub struct RelaySettings {
    /// Our host name.
    pub hostname: String,
    /// Local domains (normalised: lower case, no trailing dot).
    pub local_domains: HashSet<String>,
    /// Listeners with their already-bound sockets.
    pub listeners: Vec<(ListenerConfig, std::net::TcpListener)>,
    /// `[session]`.
    pub session: SessionConfig,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[queue]`.
    pub queue: QueueConfig,
    /// `[pools]`.
    pub pools: PoolConfig,
    /// The server TLS configuration, if a certificate is configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// SMTP AUTH users.
    pub users: Arc<UserDb>,
    /// The opened queue.
    pub queue_store: Arc<Queue>,
    /// Where to serve admin queries.
    pub admin_socket: Option<PathBuf>,
    /// AMTP listeners' trust and policy (present when an `amtp` listener exists).
    pub amtp: Option<AmtpSettings>,
    /// The resolver (present when AMTP or delivery needs DNS).
    pub resolver: Option<ResolverSettings>,
    /// Outbound delivery (absent: the relay only accepts and stores).
    pub delivery: Option<DeliverySettings>,
    /// The bound `[metrics]` listener (absent: no endpoint; recording is on only when the
    /// caller enabled [`metrics::enable`]).
    pub metrics_listener: Option<std::net::TcpListener>,
    /// Where the admin socket sends `reload`, `drain` and `resume` (absent: refused).
    pub control: Option<tokio::sync::mpsc::Sender<crate::admin::ControlRequest>>,
}

/// The part of a configuration a reload applies to a running relay.
pub struct LiveSettings {
    /// Our host name.
    pub hostname: String,
    /// Local domains (normalised).
    pub local_domains: HashSet<String>,
    /// `[session]`.
    pub session: SessionConfig,
    /// The server TLS configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// SMTP AUTH users.
    pub users: Arc<UserDb>,
    /// AMTP trust and policy.
    pub amtp: Option<AmtpSettings>,
    /// Every listener of the new configuration; a socket only for those to (re)bind: new
    /// names, or a listener whose configured address changed.
    pub listeners: Vec<(ListenerConfig, Option<std::net::TcpListener>)>,
    /// Outbound delivery (routes, retry, limits, outbound TLS). Applied when delivery runs;
    /// turning delivery on or off needs a restart.
    pub delivery: Option<DeliverySettings>,
}

/// What `amtp` listeners need, loaded before start.
pub struct AmtpSettings {
    /// Trust sets and the AMTP server config.
    pub trust: Arc<AmtpTrust>,
    /// The listener policy.
    pub policy: Arc<AmtpPolicy>,
    /// Forward-confirm PTR names.
    pub require_forward_confirmation: bool,
}

/// The DNS resolver (needed by AMTP listeners and by delivery).
pub struct ResolverSettings {
    /// The DNS transport (real name servers, or a test double).
    pub transport: Arc<dyn DnsTransport>,
    /// `[resolver]`.
    pub config: ResolverConfig,
}

/// Outbound delivery.
pub struct DeliverySettings {
    /// `[delivery]`.
    pub config: DeliveryConfig,
    /// TLS and addressing for outbound connections.
    pub outbound: OutboundContext,
}

/// A running listener.
struct RunningListener {
    /// Its configured name and address (a reload compares these).
    name: String,
    address: std::net::SocketAddr,
    actor: Addr<ListenerActor>,
    limits: Arc<ConnectionLimits>,
}

/// A running relay.
pub struct Relay {
    listeners: Vec<RunningListener>,
    /// Listeners a reload removed: they no longer accept, but their sessions may still run.
    retired: Vec<Arc<ConnectionLimits>>,
    workers: Vec<Arbiter>,
    committer: Committer,
    admin: Option<SpawnHandleTask>,
    health: Arc<Health>,
    lifecycle: Arc<Lifecycle>,
    runtime: Arc<Runtime>,
    policy: Addr<PolicyActor>,
    recipients: Vec<Metered<Connection>>,
    hostname: Arc<str>,
    /// The router and the settings it runs with (absent: delivery disabled).
    router: Option<(Addr<Router>, Arc<RouterShared>)>,
}

/// Keeps the admin socket task; aborted on shutdown.
struct SpawnHandleTask(tokio::task::JoinHandle<()>);

/// Start all actors. Returns once they are running.
pub fn start(settings: RelaySettings) -> std::io::Result<Relay> {
    let committer_meter = Meter::new("committer", 0);
    let observer = metrics::get().map(|m| {
        let meter = committer_meter.clone();
        Arc::new(move |n: usize, took: Duration, ok: bool| {
            #[allow(clippy::cast_precision_loss)]
            m.commit_batch.observe(n as f64);
            meter.add_handled(u64::try_from(n).unwrap_or(u64::MAX));
            meter.add_busy(took.as_secs_f64());
            if !ok {
                m.commit_failures.inc();
            }
        }) as amtp_storage::committer::CommitObserver
    });
    let committer = Committer::start(
        settings.queue_store.clone(),
        CommitterConfig {
            batch_max: settings.queue.batch_max,
            batch_wait: settings.queue.batch_wait.0,
            capacity: settings.queue.capacity,
            observer,
        },
    )?;
    let health = {
        let committer = committer.clone();
        Arc::new(Health::new(
            settings.listeners.len(),
            Box::new(move || committer.last_failure()),
        ))
    };
    let mut extra_arbiters = Vec::new();
    let resolver = settings.resolver.map(|r| {
        let resolver_arbiter = Arbiter::new();
        let cache = Arc::new(DnsCache::new(r.config.cache_size, 64));
        if let Some(m) = metrics::get() {
            let cache = cache.clone();
            m.on_scrape(move |m| {
                m.dns_cache_entries
                    .set(i64::try_from(cache.len()).unwrap_or(i64::MAX));
            });
        }
        let (transport, actor_cache, ttl) = (
            r.transport.clone(),
            cache.clone(),
            TtlPolicy::from_config(&r.config),
        );
        let meter = Meter::new("resolver", 0);
        Meter::pool_size("resolver", 1);
        let actor_meter = meter.clone();
        let actor = ResolverActor::start_in_arbiter(&resolver_arbiter.handle(), move |_| {
            ResolverActor::new(transport, actor_cache, ttl, actor_meter)
        });
        extra_arbiters.push(resolver_arbiter);
        // A lookup may take every try's timeout; give the actor that long plus a margin.
        let lookup_timeout = r.config.timeout.0
            * u32::try_from(r.config.attempts.max(1)).unwrap_or(1)
            + Duration::from_secs(1);
        (
            ResolverHandle::new(cache, actor.recipient(), lookup_timeout, meter),
            r.config.cache_size,
        )
    });
    let router_resolver = resolver.as_ref().map(|(h, _)| h.clone());
    let router = settings.delivery.map(|d| {
        let shared = Arc::new(router_shared(
            d,
            settings.queue_store.clone(),
            router_resolver,
            &settings.hostname,
            Meter::new("router", 0),
            Meter::new("destination", 0),
        ));
        let arbiter = Arbiter::new();
        Meter::pool_size("router", 1);
        // All destinations share one meter: one member, "destinations in aggregate".
        Meter::pool_size("destination", 1);
        let router_state = shared.clone();
        let fresh = Arc::new(Fresh::new(fresh::DEFAULT_MAX_BYTES));
        let router_fresh = fresh.clone();
        let addr = Router::start_in_arbiter(&arbiter.handle(), move |_| {
            Router::new(shared, router_fresh)
        });
        extra_arbiters.push(arbiter);
        (addr, router_state, fresh)
    });
    Meter::pool_size("queue", 1);
    Meter::pool_size("committer", 1);
    let queue_meter = Meter::new("queue", 0);
    let intake = Intake::new(
        committer.clone(),
        router.as_ref().map(|(addr, _, fresh)| Handoff {
            fresh: fresh.clone(),
            router: addr.clone().recipient(),
        }),
        queue_meter,
    );
    let queue = QueueActor::new(
        settings.queue_store.clone(),
        Arc::from(settings.hostname.as_str()),
        router.as_ref().map(|(addr, _, _)| addr.clone().recipient()),
    )
    .start();
    if let Some(m) = metrics::get() {
        let (store, committer) = (settings.queue_store.clone(), committer.clone());
        m.on_scrape(move |m| {
            let c = store.census();
            let set = |state: &str, n: u64| {
                m.queue_messages
                    .with_label_values(&[state])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            };
            set("ready", c.ready);
            set("deferred", c.deferred);
            set("delivering", c.delivering);
            let age = store
                .oldest_received_at()
                .map_or(0, |at| amtp_storage::now_ms().saturating_sub(at));
            #[allow(clippy::cast_precision_loss)]
            m.queue_oldest_age.set(age as f64 / 1000.0);
            committer_meter.set_depth(committer.backlog());
            m.storage_healthy
                .set(i64::from(committer.last_failure().is_none()));
        });
    }
    let policy_arbiter = Arbiter::new();
    let users = settings.users.clone();
    let auth = settings.auth.clone();
    Meter::pool_size("policy", 1);
    let policy_meter = Meter::new("policy", 0);
    let actor_meter = policy_meter.clone();
    let policy = PolicyActor::start_in_arbiter(&policy_arbiter.handle(), move |_| {
        PolicyActor::new(users, &auth, actor_meter)
    });
    // The identity checker exists whenever there is a resolver, so a reload can add an AMTP
    // listener; its forward-confirmation rule is set per configuration.
    let identity = resolver.as_ref().map(|(handle, cache_size)| {
        IdentityChecker::new(
            handle.clone(),
            Arc::new(IdentityCache::new(*cache_size, 64)),
            false,
        )
    });
    let lifecycle = Arc::new(Lifecycle::new());
    let ids = settings.queue_store.clone();
    let deps = SessionDeps {
        policy: Metered {
            to: policy.clone().recipient(),
            meter: policy_meter,
        },
        queue: intake.door(),
        tls: settings.tls.clone().map(tokio_rustls::TlsAcceptor::from),
        enqueue_timeout: settings.queue.enqueue_timeout.0,
        identity,
        new_id: Arc::new(move || match ids.new_id() {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::error!(error = %e, "cannot allocate a queue id; answering 451");
                None
            }
        }),
        lifecycle: lifecycle.clone(),
    };
    let hostname: Arc<str> = Arc::from(settings.hostname.as_str());
    let shared = Arc::new(Runtime::new(worker_shared(
        deps,
        settings.pools.worker_mailbox,
        &LiveSettings {
            hostname: settings.hostname.clone(),
            local_domains: settings.local_domains.clone(),
            session: settings.session.clone(),
            tls: settings.tls.clone(),
            users: settings.users.clone(),
            amtp: settings.amtp,
            listeners: Vec::new(),
            delivery: None,
        },
    )));
    if let Some(m) = metrics::get() {
        let runtime = Arc::downgrade(&shared);
        m.on_scrape(move |m| {
            // The current generation's cache: a reload starts an empty one.
            let held = runtime
                .upgrade()
                .and_then(|r| r.load().amtp.as_ref().map(|a| a.trust.chain_cache_len()))
                .unwrap_or(0);
            m.tls_chain_cache_entries
                .set(i64::try_from(held).unwrap_or(i64::MAX));
        });
    }
    let n_workers = per_core(settings.pools.connection_workers);
    let mut workers = Vec::with_capacity(n_workers + 1);
    let mut recipients: Vec<Metered<Connection>> = Vec::with_capacity(n_workers);
    Meter::pool_size("worker", n_workers);
    for member in 0..n_workers {
        let arbiter = Arbiter::new();
        let shared = shared.clone();
        let meter = Meter::new("worker", member);
        let worker_meter = meter.clone();
        let addr = ConnectionWorker::start_in_arbiter(&arbiter.handle(), move |_| {
            ConnectionWorker::new(shared, worker_meter)
        });
        recipients.push(Metered {
            to: addr.recipient(),
            meter,
        });
        workers.push(arbiter);
    }
    workers.push(policy_arbiter);
    workers.extend(extra_arbiters);
    let listeners = settings
        .listeners
        .into_iter()
        .map(|(config, socket)| start_listener(config, socket, &recipients, &hostname, &health))
        .collect();
    if let Some(socket) = settings.metrics_listener {
        let arbiter = Arbiter::new();
        let health = health.clone();
        arbiter.spawn(async move {
            let listener = match socket
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(socket))
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot use the metrics listener");
                    return;
                }
            };
            metrics::http::serve(listener, health).await;
        });
        workers.push(arbiter);
    }
    let admin = settings.admin_socket.and_then(|path| {
        let shown = path.display().to_string();
        let failed = move |e: std::io::Error| {
            tracing::error!(path = %shown, error = %e, "admin socket failed; `amtp-relay queue` cannot reach this relay");
        };
        let listener = match crate::admin::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                failed(e);
                return None;
            }
        };
        let queue = queue.recipient();
        let control = settings.control;
        Some(SpawnHandleTask(actix::spawn(async move {
            if let Err(e) = crate::admin::serve(listener, queue, control).await {
                failed(e);
            }
        })))
    });
    tracing::info!(connection_workers = n_workers, "relay started");
    Ok(Relay {
        listeners,
        retired: Vec::new(),
        workers,
        committer,
        admin,
        health,
        lifecycle,
        runtime: shared,
        policy,
        recipients,
        hostname,
        router: router.map(|(addr, shared, _)| (addr, shared)),
    })
}

/// What the router runs with, from `[delivery]` and the parts it shares with the relay.
fn router_shared(
    d: DeliverySettings,
    queue: Arc<Queue>,
    resolver: Option<ResolverHandle>,
    hostname: &str,
    meter: Meter,
    destination_meter: Meter,
) -> RouterShared {
    let routes = d
        .config
        .route
        .iter()
        .flat_map(|r| {
            r.domains
                .iter()
                .map(move |dom| (dom.trim_end_matches('.').to_ascii_lowercase(), r.clone()))
        })
        .collect();
    RouterShared {
        queue,
        resolver,
        routes,
        outbound: d.outbound,
        smtp_fallback: d.config.smtp_fallback,
        smtp_fallback_tls: d.config.smtp_fallback_tls,
        smtp_fallback_port: d.config.smtp_fallback_port,
        retry: RetryPolicy::from_config(&d.config),
        lease: d.config.lease.0,
        poll_interval: d.config.poll_interval.0,
        concurrency: d.config.concurrency_per_destination,
        max_per_connection: d.config.max_messages_per_connection,
        message_rate: d.config.max_messages_per_destination,
        max_in_flight: d.config.max_in_flight.max(1),
        hostname: hostname.to_string(),
        meter,
        destination_meter,
    }
}

/// The settings every connection worker shares, for one configuration generation.
fn worker_shared(deps: SessionDeps, mailbox: usize, live: &LiveSettings) -> WorkerShared {
    let mut deps = deps;
    deps.tls = live.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    if let (Some(identity), Some(a)) = (&mut deps.identity, &live.amtp) {
        identity.require_forward_confirmation = a.require_forward_confirmation;
    }
    WorkerShared {
        submissions: live
            .tls
            .clone()
            .map(|config| crate::tls_accept::Acceptors::new(config, None)),
        deps,
        hostname: Arc::from(live.hostname.as_str()),
        limits: Arc::new(live.session.clone()),
        local_domains: Arc::new(live.local_domains.clone()),
        cram_secrets: live.users.has_cram_secrets(),
        user_mpcs: Arc::new(live.users.mpcs()),
        mailbox,
        amtp: live.amtp.as_ref().map(|a| AmtpShared {
            acceptors: crate::tls_accept::Acceptors::new(
                a.trust.server_config.clone(),
                a.trust.resumption.clone(),
            ),
            trust: a.trust.clone(),
            policy: a.policy.clone(),
        }),
    }
}

fn start_listener(
    config: ListenerConfig,
    socket: std::net::TcpListener,
    recipients: &[Metered<Connection>],
    hostname: &Arc<str>,
    health: &Arc<Health>,
) -> RunningListener {
    let limits = ConnectionLimits::new(config.max_connections, config.max_connections_per_ip);
    let (name, address) = (config.name.clone(), config.address);
    let actor = ListenerActor::new(
        socket,
        Arc::new(config),
        limits.clone(),
        recipients.to_vec(),
        hostname.clone(),
        health.clone(),
    )
    .start();
    RunningListener {
        name,
        address,
        actor,
        limits,
    }
}

impl Relay {
    /// The node's readiness state.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Connections open across all listeners (also those a reload removed).
    pub fn active_connections(&self) -> usize {
        self.listeners
            .iter()
            .map(|l| &l.limits)
            .chain(&self.retired)
            .map(|l| l.active())
            .sum()
    }

    /// The configured (name, address) of each running listener, for a reload to decide
    /// which sockets to bind.
    pub fn listener_addresses(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.listeners
            .iter()
            .map(|l| (l.name.clone(), l.address))
            .collect()
    }

    /// Whether this relay has a DNS resolver (an AMTP listener checking PTR names needs one;
    /// adding the first such listener needs a restart).
    pub fn has_resolver(&self) -> bool {
        self.runtime.load().deps.identity.is_some()
    }

    /// How many configurations this process has run (1 + successful reloads).
    pub fn generation(&self) -> u64 {
        self.runtime.generation()
    }

    /// `amtp-relay drain` (`true`) / `resume` (`false`): readiness says draining and the
    /// listeners answer new connections `421 4.3.2`; open sessions and delivery carry on.
    pub fn set_draining(&self, draining: bool) {
        self.health.set_draining(draining);
    }

    /// Apply a validated configuration's live part. Sessions already open keep the settings
    /// they started with. Returns one line per listener change, for the log.
    pub async fn reload(&mut self, live: LiveSettings) -> Vec<String> {
        let mut changes = Vec::new();
        let base = self.runtime.load();
        let next = worker_shared(base.deps.clone(), base.mailbox, &live);
        let _ = self.policy.send(ReplaceUsers(live.users.clone())).await;
        let mut kept = Vec::new();
        let mut old: Vec<RunningListener> = std::mem::take(&mut self.listeners);
        for (config, socket) in live.listeners {
            let existing = old.iter().position(|l| l.name == config.name);
            match (socket, existing) {
                (None, Some(i)) => {
                    let l = old.swap_remove(i);
                    let _ = l.actor.send(Reconfigure(Arc::new(config))).await;
                    kept.push(l);
                }
                (Some(socket), existing) => {
                    if let Some(i) = existing {
                        let l = old.swap_remove(i);
                        let _ = l.actor.send(StopAccepting).await;
                        changes.push(format!(
                            "listener `{}` moved from {} to {}",
                            l.name, l.address, config.address
                        ));
                        self.retired.push(l.limits);
                    } else {
                        changes.push(format!(
                            "listener `{}` added on {}",
                            config.name, config.address
                        ));
                    }
                    kept.push(start_listener(
                        config,
                        socket,
                        &self.recipients,
                        &self.hostname,
                        &self.health,
                    ));
                }
                (None, None) => {
                    tracing::error!(listener = %config.name, "reload: new listener without a socket; skipped");
                }
            }
        }
        for l in old {
            let _ = l.actor.send(StopAccepting).await;
            changes.push(format!("listener `{}` on {} removed", l.name, l.address));
            self.retired.push(l.limits);
        }
        self.retired.retain(|l| l.active() > 0);
        self.health.set_listeners_expected(kept.len());
        self.listeners = kept;
        if let (Some((router, running)), Some(d)) = (&mut self.router, live.delivery) {
            let routing = Arc::new(router_shared(
                d,
                running.queue.clone(),
                running.resolver.clone(),
                &live.hostname,
                running.meter.clone(),
                running.destination_meter.clone(),
            ));
            let _ = router.send(ReplaceShared(routing.clone())).await;
            *running = routing;
        }
        self.runtime.swap(next);
        changes
    }

    /// Whether outbound delivery runs (turning it on or off needs a restart).
    pub fn delivers(&self) -> bool {
        self.router.is_some()
    }

    /// Stop accepting, let open sessions finish for up to `grace`, then stop the workers.
    /// Messages already acknowledged are on disk; a session cut short had not been
    /// answered 250, so its client will retry.
    pub async fn shutdown(self, grace: Duration) {
        // Readiness says "draining" first, so a load balancer stops sending here.
        self.health.set_draining(true);
        // No new transaction starts; DATA in progress may finish.
        self.lifecycle.advance(Phase::Stopping);
        // Logged only now, so that a client that sees this line (or an operator who reads
        // it) can rely on MAIL being refused: logged before the phase changed, a MAIL could
        // still get 250 after it (seen in CI as a flaky SIGTERM test).
        tracing::info!(
            grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            "shutting down"
        );
        for l in &self.listeners {
            let _ = l.actor.send(StopAccepting).await;
        }
        if let Some(admin) = &self.admin {
            admin.0.abort();
        }
        let deadline = Instant::now() + grace;
        while self.active_connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self.active_connections();
        if left > 0 {
            tracing::warn!(
                sessions = left,
                "shutdown grace period over; telling remaining sessions 421 and closing them"
            );
            // Each open session writes `421 4.3.2` and closes; give them a moment to do so
            // before their threads stop.
            self.lifecycle.advance(Phase::Closing);
            let said = Instant::now() + Duration::from_secs(2);
            while self.active_connections() > 0 && Instant::now() < said {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Let in-flight commits finish before the process exits.
        let wait_commits = Instant::now() + Duration::from_secs(5);
        while self.committer.backlog() > 0 && Instant::now() < wait_commits {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for w in &self.workers {
            w.stop();
        }
    }
}
