//! `amtp-relay serve`: prepare the data directory, load TLS and users, open the queue, bind
//! every listener — all before the actor system starts — then run until SIGTERM/SIGINT.

use crate::config::Config;
use crate::devinit;
use amtp_actors::amtp_tls::AmtpTrust;
use amtp_actors::auth::users::UserDb;
use amtp_actors::config::ListenerRole;
use amtp_actors::delivery::outbound::{self, OutboundContext};
use amtp_actors::resolver::transport::{DnsTransport, HickoryTransport};
use amtp_actors::wiring::{self, AmtpSettings, DeliverySettings, RelaySettings, ResolverSettings};
use amtp_storage::Queue;
use anyhow::{Context, Result};
use std::sync::Arc;

/// Run the relay.
pub fn run(config: Config) -> Result<()> {
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
    let tls = match &config.tls_files {
        Some((cert, key)) => Some(amtp_actors::tls::server_config(cert, key)?),
        None => None,
    };
    let users = match &config.users_file {
        Some(p) if p.exists() => Arc::new(UserDb::load(p)?),
        _ => Arc::new(UserDb::empty()),
    };
    let (queue, report) = Queue::open(&config.queue_dir())
        .with_context(|| format!("opening the queue in {}", config.queue_dir().display()))?;
    tracing::info!(
        messages = report.messages,
        leases_reset = report.leases_reset,
        orphans_removed = report.orphans_removed,
        recovered = report.recovered,
        "queue opened"
    );
    if !report.missing_bodies.is_empty() {
        tracing::error!(ids = ?report.missing_bodies.iter().map(ToString::to_string).collect::<Vec<_>>(), "queue records without a body file; inspect with `amtp-relay queue show`");
    }
    // AMTP trust and policy are loaded before any socket is bound, like everything else.
    let amtp_parts = match (&file.amtp, &config.amtp_files, &config.tls_files) {
        (Some(a), Some(files), Some((cert, key)))
            if file.listeners.iter().any(|l| l.role == ListenerRole::Amtp) =>
        {
            let trust = AmtpTrust::load(files, cert, key).context("loading the AMTP trust sets")?;
            let policy = a.policy().map_err(|e| anyhow::anyhow!(e))?;
            Some((
                Arc::new(trust),
                Arc::new(policy),
                a.require_forward_confirmation,
            ))
        }
        _ => None,
    };
    let delivery = if file.delivery.enabled {
        let (cert, key) = config
            .tls_files
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()))
            .unzip();
        let tls = outbound::tls_configs(cert, key, config.delivery_roots.as_deref())
            .map_err(|e| anyhow::anyhow!("outbound TLS: {e}"))?;
        let outbound = OutboundContext {
            ehlo_name: file
                .delivery
                .ehlo_name
                .clone()
                .unwrap_or_else(|| file.server.hostname.clone()),
            source: file.delivery.source_address,
            connect_timeout: file.delivery.connect_timeout.0,
            command_timeout: file.delivery.command_timeout.0,
            amtp_tls: tls.amtp,
            smtp_verified_tls: tls.verified,
            smtp_opportunistic_tls: tls.opportunistic,
        };
        Some(DeliverySettings {
            config: file.delivery.clone(),
            outbound,
        })
    } else {
        tracing::info!("delivery is disabled: messages are accepted and queued only");
        None
    };
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
    let settings = RelaySettings {
        hostname: file.server.hostname.clone(),
        local_domains: config.local_domains.clone(),
        listeners,
        session: file.session.clone(),
        auth: file.auth.clone(),
        queue: file.queue.clone(),
        pools: file.pools.clone(),
        tls,
        users,
        queue_store: Arc::new(queue),
        admin_socket: Some(config.admin_socket()),
        amtp: None,
        resolver: None,
        delivery,
        metrics_listener,
    };
    let resolver = file.resolver.clone();
    // A private-only AMTP listener without the PTR rule (the dev default) does not use DNS, so
    // a machine without a usable /etc/resolv.conf can still run it.
    let needs_dns = file.delivery.enabled
        || file
            .amtp
            .as_ref()
            .is_some_and(|a| a.public_ca.is_some() || a.private_require_ptr);
    let grace = file.server.shutdown_grace.0;
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
                    queue_depth: Box::new(move || u64::try_from(queue.len()).unwrap_or(u64::MAX)),
                },
            ))
        }
        None => None,
    };
    let system = actix::System::new();
    let result = system.block_on(async move {
        let mut settings = settings;
        // The DNS transport belongs to the runtime, so it is made inside it; only when AMTP
        // listeners or delivery need DNS.
        if amtp_parts.is_some() || settings.delivery.is_some() {
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
        if let Some((trust, policy, require_forward_confirmation)) = amtp_parts {
            settings.amtp = Some(AmtpSettings {
                trust,
                policy,
                require_forward_confirmation,
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
        let relay = wiring::start(settings)?;
        wait_for_signal().await;
        if let Some(h) = heartbeat {
            h.abort();
        }
        tracing::info!(
            grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            "shutting down"
        );
        relay.shutdown(grace).await;
        Ok::<_, anyhow::Error>(())
    });
    let _ = std::fs::remove_file(admin_socket);
    tracing::info!("stopped");
    result
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
