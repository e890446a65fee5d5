//! `amtp-relay serve`: prepare the data directory, load TLS and users, open the queue, bind
//! every listener — all before the actor system starts — then run until SIGTERM/SIGINT.
//!
//! While running, the control loop takes SIGHUP and the admin socket's `reload` (re-read the
//! configuration, see [`crate::reload`]), `drain` and `resume`, and with `[tls] watch` polls
//! the certificate files. SIGHUP is caught from the first moment, so it never ends the
//! process.

use crate::config::Config;
use crate::devinit;
use crate::logging::LevelHandle;
use crate::notify;
use crate::reload::{self, Reloader};
use amtp_actors::admin::Control;
use amtp_actors::resolver::transport::{DnsTransport, HickoryTransport};
use amtp_actors::wiring::{self, Relay, RelaySettings, ResolverSettings};
use amtp_storage::Queue;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Run the relay. `path` is the configuration file a reload reads again (`None`: the
/// embedded dev configuration).
pub fn run(config: Config, path: Option<PathBuf>, level: LevelHandle) -> Result<()> {
    // Signals first, so that neither kills the process with its default disposition: a
    // SIGHUP that arrives while starting is a reload once the relay runs, a SIGTERM stops it
    // as soon as it has started.
    let system = actix::System::new();
    let signals = system.block_on(async {
        Ok::<_, std::io::Error>(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    })?;
    let file = &config.file;
    devinit::data_dir(&config.data_dir)?;
    if file.tls.generate_dev_certificate
        && let Some((cert, key)) = &config.tls_files
        && devinit::certificate(&file.server.hostname, cert, key)?
    {
        tracing::info!(certificate = %cert.display(), ca = %cert.with_file_name("ca.pem").display(), client = %devinit::dev_client_files(cert).0.display(), "generated development CA, ECDSA P-256 server certificate and AMTP client identity");
    }
    if file.server.create_dev_user
        && let Some(users) = &config.users_file
    {
        let password_file = config.data_dir.join("dev-password");
        if devinit::dev_user(&password_file, users)? {
            tracing::info!(user = "dev", password_file = %password_file.display(), "created development user");
        }
        tracing::info!(user = "dev", password_file = %password_file.display(), "development user `dev`: its password is in this file");
    }
    // TLS, users, AMTP trust and policy: built the same way a reload builds them.
    let live = reload::live_settings(&config)?;
    let (queue, report) = Queue::open(&config.queue_dir())
        .with_context(|| format!("opening the queue in {}", config.queue_dir().display()))?;
    tracing::info!(
        messages = report.messages,
        leases_reset = report.leases_reset,
        orphans_removed = report.orphans_removed,
        segments_removed = report.segments_removed,
        recovered = report.recovered,
        "queue opened"
    );
    if !report.missing_bodies.is_empty() {
        tracing::error!(ids = ?report.missing_bodies.iter().map(ToString::to_string).collect::<Vec<_>>(), "queue records without their body (file or segment deleted or truncated): they can never be delivered; when delivery is enabled each fails on its next attempt with a DSN (5.3.0) to its sender and leaves the queue (`amtp-relay queue list` shows them until then)");
    }
    let delivery = reload::delivery_settings(&config)?;
    if delivery.is_none() {
        tracing::info!("delivery is disabled: messages are accepted and queued only");
    }
    // Metrics are recorded only when the endpoint is configured (no cost otherwise); turned
    // on before wiring so every actor's meter is live.
    let metrics_listener = match &file.metrics {
        Some(m) => {
            amtp_actors::metrics::enable();
            let socket = std::net::TcpListener::bind(m.listen)
                .with_context(|| format!("cannot bind the [metrics] endpoint on {}", m.listen))?;
            let bound = socket.local_addr()?;
            tracing::info!(listener = "metrics", role = "metrics", address = %bound, "listening");
            Some(socket)
        }
        None => None,
    };
    let mut listeners = Vec::new();
    for l in &file.listeners {
        let socket = std::net::TcpListener::bind(l.address)
            .with_context(|| format!("cannot bind listener `{}` on {}", l.name, l.address))?;
        let bound = socket.local_addr()?;
        tracing::info!(listener = %l.name, role = l.role.as_str(), address = %bound, "listening");
        listeners.push((l.clone(), socket));
    }
    let (control_tx, control_rx) = tokio::sync::mpsc::channel(8);
    let has_amtp = live.amtp.is_some();
    let settings = RelaySettings {
        hostname: live.hostname,
        local_domains: live.local_domains,
        listeners,
        session: live.session,
        auth: file.auth.clone(),
        queue: file.queue.clone(),
        pools: file.pools.clone(),
        tls: live.tls,
        users: live.users,
        queue_store: Arc::new(queue),
        admin_socket: Some(config.admin_socket()),
        amtp: live.amtp,
        resolver: None,
        delivery,
        metrics_listener,
        control: Some(control_tx),
    };
    let resolver = file.resolver.clone();
    // A private-only AMTP listener without the PTR rule (the dev default) does not use DNS, so
    // a machine without a usable /etc/resolv.conf can still run it.
    let needs_dns = file.delivery.enabled
        || file
            .amtp
            .as_ref()
            .is_some_and(|a| a.public_ca.is_some() || a.private_require_ptr);
    let admin_socket = config.admin_socket();
    let cluster = match &file.cluster {
        Some(c) => {
            let listeners = settings
                .listeners
                .iter()
                .map(|(l, s)| {
                    let addr = s
                        .local_addr()
                        .map_or_else(|_| l.address.to_string(), |a| a.to_string());
                    format!("{addr} ({})", l.role.as_str())
                })
                .collect::<Vec<_>>()
                .join(", ");
            let queue = settings.queue_store.clone();
            Some((
                c.clone(),
                amtp_actors::cluster::membership::Announcement {
                    listeners,
                    // The census, not Queue::len(): that is a scan of sled every heartbeat.
                    queue_depth: Box::new(move || queue.census().total()),
                },
            ))
        }
        None => None,
    };
    let reloader = Reloader::new(path, config, level);
    let result = system.block_on(async move {
        let mut settings = settings;
        // The DNS transport belongs to the runtime, so it is made inside it; only when AMTP
        // listeners or delivery need DNS.
        if has_amtp || settings.delivery.is_some() {
            let transport: Option<Arc<dyn DnsTransport>> = if resolver.servers.is_empty() {
                match HickoryTransport::from_system(resolver.timeout.0, resolver.attempts) {
                    Ok(t) => Some(Arc::new(t)),
                    Err(e) if !needs_dns => {
                        tracing::warn!(error = %e, "no system DNS resolver; not needed: the AMTP listener takes private connections without the PTR check only");
                        None
                    }
                    Err(e) => return Err(anyhow::anyhow!(e)),
                }
            } else {
                Some(Arc::new(HickoryTransport::new(
                    &resolver.servers,
                    resolver.timeout.0,
                    resolver.attempts,
                )?))
            };
            settings.resolver = transport.map(|transport| ResolverSettings {
                transport,
                config: resolver,
            });
        }
        // The Redis connections belong to the runtime, so they are made inside it.
        let heartbeat = match cluster {
            Some((c, announce)) => {
                let node = amtp_actors::cluster::Cluster::new(&c)
                    .map_err(|e| anyhow::anyhow!("[cluster] {e}"))?;
                tracing::info!(node = %node.node_id(), redis = %c.redis, "cluster: sharing limits through Redis");
                amtp_actors::cluster::install(node.clone());
                Some(actix::spawn(node.heartbeat_loop(announce)))
            }
            None => None,
        };
        let mut relay = wiring::start(settings)?;
        // Every listener is bound and the queue is open.
        notify::ready();
        let mut reloader = reloader;
        let mut signals = signals;
        control_loop(&mut relay, &mut reloader, &mut signals, control_rx).await;
        if let Some(h) = heartbeat {
            h.abort();
        }
        notify::stopping();
        // Relay::shutdown logs "shutting down" once new transactions are refused.
        relay.shutdown(reloader.shutdown_grace()).await;
        Ok::<_, anyhow::Error>(())
    });
    let _ = std::fs::remove_file(admin_socket);
    tracing::info!("stopped");
    result
}

/// The signals the relay handles.
struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

/// Serve reloads, drain/resume and certificate-file changes until SIGTERM or SIGINT.
async fn control_loop(
    relay: &mut Relay,
    reloader: &mut Reloader,
    signals: &mut Signals,
    mut controls: tokio::sync::mpsc::Receiver<amtp_actors::admin::ControlRequest>,
) {
    let mut watched = Watched::new(reloader);
    loop {
        tokio::select! {
            _ = signals.terminate.recv() => return,
            _ = signals.interrupt.recv() => return,
            _ = signals.hangup.recv() => {
                let _ = reloader.reload(relay, "SIGHUP").await;
                watched = Watched::new(reloader);
            }
            Some((command, reply)) = controls.recv() => {
                let outcome = match command {
                    Control::Reload => {
                        let outcome = reloader.reload(relay, "admin socket").await;
                        watched = Watched::new(reloader);
                        outcome
                    }
                    Control::Drain => {
                        relay.set_draining(true);
                        tracing::warn!("draining: readiness reports 503, listeners answer new connections 421 4.3.2; open sessions and delivery continue (`amtp-relay resume` undoes it)");
                        Ok("draining: new connections are refused with 421 4.3.2; open sessions and delivery continue\n".into())
                    }
                    Control::Resume => {
                        relay.set_draining(false);
                        tracing::info!("resumed: accepting connections again");
                        Ok("resumed: accepting connections\n".into())
                    }
                };
                let _ = reply.send(outcome.map(|t| if t.ends_with('\n') { t } else { t + "\n" }));
            }
            () = watched.changed() => {
                tracing::info!("certificate files changed; reloading");
                let _ = reloader.reload(relay, "certificate files changed").await;
                watched = Watched::new(reloader);
            }
        }
    }
}

/// `[tls] watch`: the certificate, key, CA and CRL files of the configuration in force,
/// polled for a new modification time.
struct Watched {
    files: Vec<PathBuf>,
    seen: Vec<Option<std::time::SystemTime>>,
    interval: Option<tokio::time::Interval>,
}

impl Watched {
    fn new(reloader: &Reloader) -> Self {
        let config = reloader.current();
        let files = reload::watched_files(config);
        let seen = reload::mtimes(&files);
        let interval = config.file.tls.watch.map(|every| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + every.0, every.0);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        Self {
            files,
            seen,
            interval,
        }
    }

    /// Resolves when a file's modification time differs from the last poll (never when
    /// watching is off).
    async fn changed(&mut self) {
        let Some(interval) = &mut self.interval else {
            return std::future::pending().await;
        };
        loop {
            interval.tick().await;
            let now = reload::mtimes(&self.files);
            if now != self.seen {
                self.seen = now;
                return;
            }
        }
    }
}
