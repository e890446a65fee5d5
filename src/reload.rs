//! Reload: turn a configuration into the settings a running relay can take (also used at
//! start, so start and reload build them the same way), decide what a reload cannot change,
//! and apply a new configuration file to a running relay without dropping a session.
//!
//! A reload runs in this order, and nothing changes until the last step:
//! 1. load and validate the file exactly as `check-config` does (same checks, same text);
//! 2. load certificates, keys, CA bundles, CRLs and the users file into new objects;
//! 3. bind the sockets of listeners that are new or moved to another address;
//! 4. apply: one swap of the runtime settings, listener reconfiguration, users, log level.
//!
//! A failure in steps 1–3 refuses the reload with the same message `check-config` prints;
//! the relay keeps serving the old configuration. Settings that cannot change in a running
//! process ([`restart_needed`]) are named in a log line and take effect at the next start.

use crate::config::{self, Config};
use crate::logging::LevelHandle;
use crate::preflight;
use amtp_actors::amtp_policy::AmtpPolicy;
use amtp_actors::amtp_tls::AmtpTrust;
use amtp_actors::auth::users::UserDb;
use amtp_actors::config::ListenerRole;
use amtp_actors::delivery::outbound::{self, OutboundContext};
use amtp_actors::tickets::{TicketKeys, TicketUse};
use amtp_actors::tls::TlsOptions;
use amtp_actors::wiring::{AmtpSettings, DeliverySettings, LiveSettings, Relay};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// TLS, users and AMTP trust and policy of `config`, loaded from their files. The listener
/// list is left empty (the caller binds sockets).
pub fn live_settings(config: &Config) -> Result<LiveSettings> {
    let file = &config.file;
    let smtp_options = TlsOptions {
        kx_groups: file.tls.kx_groups(),
        tickets: TicketKeys::shared(TicketUse::Smtp, file.tls.ticket_lifetime)
            .context("session ticket keys")?,
        ..TlsOptions::default()
    };
    let tls = match &config.tls_files {
        Some((cert, key)) => Some(amtp_actors::tls::server_config(cert, key, &smtp_options)?),
        None => None,
    };
    let users = match &config.users_file {
        Some(p) if p.exists() => Arc::new(UserDb::load(p)?),
        _ => Arc::new(UserDb::empty()),
    };
    let amtp = match (&file.amtp, &config.amtp_files, &config.tls_files) {
        (Some(a), Some(files), Some((cert, key)))
            if file.listeners.iter().any(|l| l.role == ListenerRole::Amtp) =>
        {
            let options = TlsOptions {
                kx_groups: file.tls.kx_groups(),
                tickets: TicketKeys::shared(TicketUse::Amtp, a.ticket_lifetime)
                    .context("session ticket keys")?,
                resumption_kx: a.resumption_kx,
            };
            let trust = AmtpTrust::load(files, cert, key, &options)
                .context("loading the AMTP trust sets")?;
            // Validated by config::parse; an error here would be a bug, not a bad file.
            let policy = AmtpPolicy::from_config(a).map_err(|errors| {
                anyhow::anyhow!(
                    "{}",
                    errors
                        .iter()
                        .map(|e| format!("{}: {}", e.path("amtp"), e.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            })?;
            Some(AmtpSettings {
                trust: Arc::new(trust),
                policy: Arc::new(policy),
                require_forward_confirmation: a.require_forward_confirmation,
            })
        }
        _ => None,
    };
    Ok(LiveSettings {
        hostname: file.server.hostname.clone(),
        local_domains: config.local_domains.clone(),
        session: file.session.clone(),
        tls,
        users,
        amtp,
        listeners: Vec::new(),
        delivery: None,
    })
}

/// Outbound delivery settings (outbound TLS with our certificate, routes, limits), or
/// `None` when delivery is disabled.
pub fn delivery_settings(config: &Config) -> Result<Option<DeliverySettings>> {
    let file = &config.file;
    if !file.delivery.enabled {
        return Ok(None);
    }
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
    Ok(Some(DeliverySettings {
        config: file.delivery.clone(),
        outbound,
    }))
}

/// Whether `config`'s AMTP listener checks PTR names (needs the resolver).
pub fn amtp_needs_dns(config: &Config) -> bool {
    config
        .file
        .listeners
        .iter()
        .any(|l| l.role == ListenerRole::Amtp)
        && config
            .file
            .amtp
            .as_ref()
            .is_some_and(|a| a.public_ca.is_some() || a.private_require_ptr)
}

/// The settings that differ between `old` and `new` but only take effect at the next start.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.file, &new.file);
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut out = Vec::new();
    if old.data_dir != new.data_dir {
        out.push("server.data_dir");
    }
    if differs(&o.pools, &n.pools) {
        out.push("[pools]");
    }
    if differs(&o.queue, &n.queue) {
        out.push("[queue]");
    }
    if o.delivery.enabled != n.delivery.enabled {
        out.push("delivery.enabled");
    }
    if o.delivery.poll_interval.0 != n.delivery.poll_interval.0 {
        out.push("delivery.poll_interval");
    }
    if differs(&o.resolver, &n.resolver) {
        out.push("[resolver]");
    }
    if differs(&o.metrics, &n.metrics) {
        out.push("[metrics]");
    }
    if differs(&o.cluster, &n.cluster) {
        out.push("[cluster]");
    }
    if o.logging.format != n.logging.format {
        out.push("logging.format");
    }
    let mut oa = o.auth.clone();
    oa.users_file.clone_from(&n.auth.users_file);
    if differs(&oa, &n.auth) {
        out.push("[auth] (other than users_file)");
    }
    out
}

/// Modification times of the files a reload would read again (certificate, key, CA bundles,
/// CRLs), for `[tls] watch`.
pub fn watched_files(config: &Config) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some((cert, key)) = &config.tls_files {
        files.push(cert.clone());
        files.push(key.clone());
    }
    if let Some(t) = &config.amtp_files {
        files.extend(t.public_ca.iter().cloned());
        files.extend(t.private_ca.iter().cloned());
        files.extend(t.crl.iter().cloned());
    }
    files
}

/// The current modification time of each file (`None`: missing or unreadable).
pub fn mtimes(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// Applies configuration files to a running relay.
pub struct Reloader {
    /// The file (`None`: the embedded dev configuration).
    path: Option<PathBuf>,
    /// The configuration in force.
    current: Config,
    level: LevelHandle,
}

impl Reloader {
    /// Over the configuration the relay started with.
    pub fn new(path: Option<PathBuf>, current: Config, level: LevelHandle) -> Self {
        Self {
            path,
            current,
            level,
        }
    }

    /// The configuration in force.
    pub fn current(&self) -> &Config {
        &self.current
    }

    /// How long sessions may continue after SIGTERM (live: the value in force at the signal).
    pub fn shutdown_grace(&self) -> Duration {
        self.current.file.server.shutdown_grace.0
    }

    /// Re-read the file and apply it; `why` names the trigger in the log. Returns the text
    /// for the operator, or why the reload was refused (the old configuration stays).
    pub async fn reload(&mut self, relay: &mut Relay, why: &str) -> Result<String, String> {
        crate::notify::reloading();
        let result = self.try_reload(relay).await;
        crate::notify::ready();
        match &result {
            Ok(summary) => {
                tracing::info!(trigger = why, generation = relay.generation(), "{summary}")
            }
            Err(e) => tracing::error!(
                trigger = why,
                "reload refused, still serving the previous configuration: {e}"
            ),
        }
        result
    }

    async fn try_reload(&mut self, relay: &mut Relay) -> Result<String, String> {
        let next = config::load(self.path.as_deref()).map_err(|e| e.to_string())?;
        let report = preflight::check(&next);
        if report.errors().next().is_some() {
            return Err(report.error_text());
        }
        let mut live = live_settings(&next).map_err(|e| format!("{e:#}"))?;
        live.delivery = if relay.delivers() {
            delivery_settings(&next).map_err(|e| format!("{e:#}"))?
        } else {
            None
        };
        if amtp_needs_dns(&next) && !relay.has_resolver() {
            return Err(
                "this relay started without a DNS resolver (no AMTP listener checking PTR names, no delivery): adding one needs a restart".into(),
            );
        }
        // Bind what is new or moved before anything changes: a port conflict refuses the
        // whole reload.
        let running = relay.listener_addresses();
        for l in &next.file.listeners {
            let same = running
                .iter()
                .any(|(name, addr)| *name == l.name && *addr == l.address);
            let socket = if same {
                None
            } else {
                let s = std::net::TcpListener::bind(l.address).map_err(|e| {
                    format!("cannot bind listener `{}` on {}: {e}", l.name, l.address)
                })?;
                let bound = s.local_addr().map_err(|e| e.to_string())?;
                tracing::info!(listener = %l.name, role = l.role.as_str(), address = %bound, "listening");
                Some(s)
            };
            live.listeners.push((l.clone(), socket));
        }
        let restart = restart_needed(&self.current, &next);
        let changes = relay.reload(live).await;
        for c in &changes {
            tracing::info!("reload: {c}");
        }
        if !self.level.set(&next.file.logging.level)
            && next.file.logging.level != self.current.file.logging.level
        {
            tracing::info!("RUST_LOG is set: it overrides [logging] level, also after a reload");
        }
        if !restart.is_empty() {
            tracing::warn!(
                settings = %restart.join(", "),
                "reload: these settings changed but take effect at the next start"
            );
        }
        for w in report.warnings() {
            tracing::warn!("{w}");
        }
        self.current = next;
        let mut summary = format!(
            "configuration reloaded from {} (generation {})",
            self.current.origin,
            relay.generation()
        );
        for c in &changes {
            summary.push_str(&format!("; {c}"));
        }
        if !restart.is_empty() {
            summary.push_str(&format!(
                "; changed but needing a restart: {}",
                restart.join(", ")
            ));
        }
        Ok(summary)
    }
}
