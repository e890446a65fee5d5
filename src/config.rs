//! The configuration file: its root structure, loading, and validation of everything before
//! any socket is bound. Errors name the field and, where it can be found, the line.
//!
//! Component sections (`[session]`, `[auth]`, `[queue]`, `[pools]`, `[[listener]]`) are the
//! component configs from `amtp_actors::config`; this module adds `[server]`, `[tls]`,
//! `[logging]`, resolves relative paths against the config file's directory, and checks the
//! rules that span sections.

use amtp_actors::auth::users::UserDb;
use amtp_actors::config::{
    AmtpConfig, AuthConfig, DeliveryConfig, HopProtocol, HopTls, ListenerConfig, ListenerRole,
    PoolConfig, QueueConfig, ResolverConfig, SessionConfig,
};
use amtp_actors::units::HumanDuration;
use amtp_proto::Domain;
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The embedded development configuration.
pub const DEV_CONFIG: &str = include_str!("dev.toml");

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[server]`.
    pub server: ServerSection,
    /// `[tls]`.
    #[serde(default)]
    pub tls: TlsSection,
    /// `[logging]`.
    #[serde(default)]
    pub logging: LoggingSection,
    /// `[[listener]]`, one or more.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// `[session]`.
    #[serde(default)]
    pub session: SessionConfig,
    /// `[auth]`.
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[queue]`.
    #[serde(default)]
    pub queue: QueueConfig,
    /// `[pools]`.
    #[serde(default)]
    pub pools: PoolConfig,
    /// `[amtp]`: required when an `amtp` listener exists.
    pub amtp: Option<AmtpConfig>,
    /// `[resolver]`: the DNS resolver used by AMTP identity checks and delivery.
    #[serde(default)]
    pub resolver: ResolverConfig,
    /// `[delivery]`: outbound delivery.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// `[metrics]`: the Prometheus and health endpoint (absent: none, nothing recorded).
    pub metrics: Option<amtp_actors::config::MetricsConfig>,
    /// `[cluster]`: limits shared by a fleet of relays through Redis (absent: this node alone).
    pub cluster: Option<amtp_actors::cluster::ClusterConfig>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Our host name: greeting, EHLO, Received headers, certificate name.
    pub hostname: String,
    /// Where the queue, admin socket and generated dev files live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Domains we accept mail for from anyone (unauthenticated relay is limited to these).
    #[serde(default)]
    pub local_domains: Vec<String>,
    /// Development only: create user `dev` with a random password on first start.
    #[serde(default)]
    pub create_dev_user: bool,
    /// On SIGTERM/SIGINT, how long open sessions may continue before the relay exits.
    #[serde(default = "default_grace")]
    pub shutdown_grace: HumanDuration,
}

/// `[tls]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain (leaf first).
    pub certificate: Option<PathBuf>,
    /// PEM private key.
    pub private_key: Option<PathBuf>,
    /// Development only: generate a dev CA and an ECDSA P-256 server certificate when the
    /// files are missing (default paths: `<data_dir>/tls/server.pem`, `server-key.pem`).
    #[serde(default)]
    pub generate_dev_certificate: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[logging]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `amtp_actors=debug,info`… (`RUST_LOG` overrides).
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LoggingSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: default_level(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./amtp-data")
}
fn default_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_level() -> String {
    "info".into()
}

/// A configuration error, naming where.
#[derive(Debug)]
pub struct ConfigError {
    /// The file (or "embedded dev config").
    pub origin: String,
    /// The offending field, e.g. `listener[1].address`.
    pub field: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error in {}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A loaded and validated configuration with resolved paths.
#[derive(Debug, Clone)]
pub struct Config {
    /// The parsed file.
    pub file: ConfigFile,
    /// Where it came from.
    pub origin: String,
    /// The data directory (resolved).
    pub data_dir: PathBuf,
    /// Certificate and key paths, when TLS is configured.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// The users file, when AUTH is used.
    pub users_file: Option<PathBuf>,
    /// Local domains, normalised.
    pub local_domains: HashSet<String>,
    /// AMTP trust files (resolved), when `[amtp]` is present.
    pub amtp_files: Option<amtp_actors::amtp_tls::TrustFiles>,
    /// Trust anchors for verifying next hops (resolved).
    pub delivery_roots: Option<PathBuf>,
}

impl Config {
    /// The queue directory.
    pub fn queue_dir(&self) -> PathBuf {
        self.data_dir.join("queue")
    }

    /// The admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.data_dir.join("admin.sock")
    }
}

/// Load `path`, or the embedded dev configuration when `None`.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        None => parse(DEV_CONFIG, "embedded dev config", Path::new(".")),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                origin: p.display().to_string(),
                field: String::new(),
                line: None,
                message: format!("cannot read: {e}"),
            })?;
            let base = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            parse(&text, &p.display().to_string(), base)
        }
    }
}

/// 1-based line of a byte offset.
fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line of `key` inside table `section` (the `index`-th `[[section]]` for arrays), or of
/// the table header when `key` is `None`. A plain scan: good enough for naming a line.
fn line_of(text: &str, section: &str, index: Option<usize>, key: Option<&str>) -> Option<usize> {
    let mut in_table = false;
    let mut seen = 0usize;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            let name = line
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
            in_table = name == section
                && if line.starts_with("[[") {
                    seen += 1;
                    index.is_none_or(|n| n + 1 == seen)
                } else {
                    index.is_none()
                };
            if in_table && key.is_none() {
                return Some(i + 1);
            }
            continue;
        }
        if in_table
            && let Some(k) = key
            && line
                .strip_prefix(k)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    None
}

/// Parse and validate configuration text. Relative paths resolve against `base`.
pub fn parse(text: &str, origin: &str, base: &Path) -> Result<Config, ConfigError> {
    let file: ConfigFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_at(text, s.start));
        let field = line
            .and_then(|l| text.lines().nth(l - 1))
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim().to_string())
            .unwrap_or_default();
        ConfigError {
            origin: origin.into(),
            field,
            line,
            message: e.message().trim().to_string(),
        }
    })?;
    let err = |field: String, line: Option<usize>, message: String| ConfigError {
        origin: origin.into(),
        field,
        line,
        message,
    };
    let resolve = |p: &Path| {
        if p.is_absolute() || base == Path::new(".") {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };

    // [server]
    Domain::parse(&file.server.hostname).map_err(|m| {
        err(
            "server.hostname".into(),
            line_of(text, "server", None, Some("hostname")),
            format!("{:?} is not a host name: {m}", file.server.hostname),
        )
    })?;
    let mut local_domains = HashSet::new();
    for d in &file.server.local_domains {
        let parsed = Domain::parse(d).map_err(|m| {
            err(
                "server.local_domains".into(),
                line_of(text, "server", None, Some("local_domains")),
                format!("{d:?} is not a domain: {m}"),
            )
        })?;
        local_domains.insert(parsed.normalized());
    }
    let data_dir = resolve(&file.server.data_dir);

    // [[listener]]
    if file.listeners.is_empty() {
        return Err(err(
            "listener".into(),
            None,
            "at least one [[listener]] is required".into(),
        ));
    }
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    if let Some(c) = &file.cluster
        && let Err((key, why)) = c.check()
    {
        return Err(err(
            format!("cluster.{key}"),
            line_of(text, "cluster", None, Some(key)),
            why,
        ));
    }
    for (i, l) in file.listeners.iter().enumerate() {
        let at = |key| {
            line_of(text, "listener", Some(i), Some(key))
                .or_else(|| line_of(text, "listener", Some(i), None))
        };
        let field = |key: &str| format!("listener[{i}].{key}");
        if l.name.is_empty() || !names.insert(l.name.clone()) {
            return Err(err(
                field("name"),
                at("name"),
                format!("listener names must be unique and non-empty ({:?})", l.name),
            ));
        }
        if l.address.port() != 0 && !addresses.insert(l.address) {
            return Err(err(
                field("address"),
                at("address"),
                format!("{} is used by two listeners", l.address),
            ));
        }
        if l.max_connections == 0 || l.max_connections_per_ip == 0 {
            return Err(err(
                field("max_connections"),
                at("max_connections"),
                "connection limits must be at least 1".into(),
            ));
        }
        if let Some((key, why)) = l.proxy_problem() {
            return Err(err(field(key), at(key), why.into()));
        }
        if l.cram_md5 && !l.auth_enabled() {
            return Err(err(
                field("cram_md5"),
                at("cram_md5"),
                "CRAM-MD5 needs AUTH enabled on this listener".into(),
            ));
        }
        if l.role.requires_auth() && l.auth == Some(false) {
            return Err(err(
                field("auth"),
                at("auth"),
                format!(
                    "a {} listener requires AUTH before MAIL; it cannot be disabled",
                    l.role.as_str()
                ),
            ));
        }
        if let Some(text) = &l.default_mpc {
            if l.role == ListenerRole::Amtp {
                return Err(err(
                    field("default_mpc"),
                    at("default_mpc"),
                    "AMTP clients must send MPC= themselves; default_mpc is for SMTP listeners"
                        .into(),
                ));
            }
            if let Err(e) = text.parse::<amtp_proto::mpc::Mpc>() {
                return Err(err(
                    field("default_mpc"),
                    at("default_mpc"),
                    format!("{e} (a defined Mail Policy Code such as per/individual)"),
                ));
            }
        }
    }

    // [metrics]
    if let Some(m) = &file.metrics
        && m.listen.port() != 0
        && addresses.contains(&m.listen)
    {
        return Err(err(
            "metrics.listen".into(),
            line_of(text, "metrics", None, Some("listen")),
            format!("{} is already used by a [[listener]]", m.listen),
        ));
    }

    // [tls]
    let tls = &file.tls;
    let tls_dir = data_dir.join("tls");
    let tls_files = match (
        &tls.certificate,
        &tls.private_key,
        tls.generate_dev_certificate,
    ) {
        (Some(c), Some(k), _) => Some((resolve(c), resolve(k))),
        (None, None, true) => Some((tls_dir.join("server.pem"), tls_dir.join("server-key.pem"))),
        (None, None, false) => None,
        (Some(_), None, _) => {
            return Err(err(
                "tls.private_key".into(),
                line_of(text, "tls", None, None),
                "tls.certificate is set but tls.private_key is not".into(),
            ));
        }
        (None, Some(_), _) => {
            return Err(err(
                "tls.certificate".into(),
                line_of(text, "tls", None, None),
                "tls.private_key is set but tls.certificate is not".into(),
            ));
        }
    };
    if let Some((cert, key)) = &tls_files
        && !tls.generate_dev_certificate
    {
        for (field, p) in [("tls.certificate", cert), ("tls.private_key", key)] {
            if !p.is_file() {
                let key = field.trim_start_matches("tls.");
                return Err(err(
                    field.into(),
                    line_of(text, "tls", None, Some(key)),
                    format!("{} does not exist", p.display()),
                ));
            }
        }
    }
    for (i, l) in file.listeners.iter().enumerate() {
        let needs_tls = matches!(l.role, ListenerRole::Submissions | ListenerRole::Amtp)
            || (l.role == ListenerRole::Submission && !l.allow_insecure_auth);
        if needs_tls && tls_files.is_none() {
            return Err(err(
                format!("listener[{i}].role"),
                line_of(text, "listener", Some(i), Some("role")),
                format!(
                    "a {} listener needs a certificate: set [tls] certificate and private_key",
                    l.role.as_str()
                ),
            ));
        }
    }

    // [auth]
    let users_file = match (&file.auth.users_file, file.server.create_dev_user) {
        (Some(p), _) => Some(resolve(p)),
        (None, true) => Some(data_dir.join("users.toml")),
        (None, false) => None,
    };
    if file.listeners.iter().any(ListenerConfig::auth_enabled) {
        match &users_file {
            None => {
                return Err(err(
                    "auth.users_file".into(),
                    line_of(text, "auth", None, None),
                    "a listener offers AUTH, so [auth] users_file is required".into(),
                ));
            }
            Some(p) if !file.server.create_dev_user || p.exists() => {
                UserDb::load(p).map_err(|e| {
                    err(
                        "auth.users_file".into(),
                        line_of(text, "auth", None, Some("users_file")),
                        e.to_string(),
                    )
                })?;
            }
            Some(_) => {}
        }
    }
    let a = &file.auth;
    if a.max_failures_per_ip == 0 || a.max_failures_per_user == 0 {
        return Err(err(
            "auth.max_failures_per_ip".into(),
            line_of(text, "auth", None, None),
            "failure limits must be at least 1".into(),
        ));
    }

    // [amtp], [resolver]
    let amtp_files = file
        .amtp
        .as_ref()
        .map(|a| amtp_actors::amtp_tls::TrustFiles {
            public_ca: a.public_ca.as_deref().map(resolve),
            private_ca: a.private_ca.iter().map(|p| resolve(p)).collect(),
            crl: a.crl.iter().map(|p| resolve(p)).collect(),
            max_intermediates: a.max_intermediates,
        });
    let has_amtp = file.listeners.iter().any(|l| l.role == ListenerRole::Amtp);
    match (&file.amtp, has_amtp) {
        (None, true) => {
            let i = file
                .listeners
                .iter()
                .position(|l| l.role == ListenerRole::Amtp)
                .unwrap_or(0);
            return Err(err(
                format!("listener[{i}].role"),
                line_of(text, "listener", Some(i), Some("role")),
                "an amtp listener needs an [amtp] section (public_ca or private_ca at least)"
                    .into(),
            ));
        }
        (Some(a), _) => {
            if a.public_ca.is_none() && a.private_ca.is_empty() {
                return Err(err(
                    "amtp.public_ca".into(),
                    line_of(text, "amtp", None, None),
                    "give public_ca (public peers) or private_ca (private clients), or both".into(),
                ));
            }
            let mut bundles: Vec<(&str, &PathBuf)> =
                a.public_ca.iter().map(|p| ("amtp.public_ca", p)).collect();
            bundles.extend(a.private_ca.iter().map(|p| ("amtp.private_ca", p)));
            bundles.extend(a.crl.iter().map(|p| ("amtp.crl", p)));
            // The dev CA is written on first start, after this check.
            let generated = tls.generate_dev_certificate.then(|| tls_dir.join("ca.pem"));
            for (field, p) in bundles {
                let p = resolve(p);
                if !p.is_file() && generated.as_ref() != Some(&p) {
                    let key = field.trim_start_matches("amtp.");
                    return Err(err(
                        field.into(),
                        line_of(text, "amtp", None, Some(key)),
                        format!("{} does not exist", p.display()),
                    ));
                }
            }
            a.policy().map_err(|m| {
                let key = m.split(['.', ':', '[']).nth(1).unwrap_or("");
                err(
                    m.split(':').next().unwrap_or("amtp").to_string(),
                    line_of(text, "amtp", None, Some(key)),
                    m.clone(),
                )
            })?;
        }
        (None, false) => {}
    }
    if file.resolver.attempts == 0 || file.resolver.timeout.0.is_zero() {
        return Err(err(
            "resolver.timeout".into(),
            line_of(text, "resolver", None, None),
            "timeout and attempts must be more than 0".into(),
        ));
    }

    // [delivery]
    let d = &file.delivery;
    let delivery_roots = d
        .server_ca
        .as_ref()
        .map(|p| resolve(p))
        .or_else(|| amtp_files.as_ref().and_then(|f| f.public_ca.clone()));
    if d.enabled {
        let routed: HashSet<String> = d
            .route
            .iter()
            .flat_map(|r| {
                r.domains
                    .iter()
                    .map(|x| x.trim_end_matches('.').to_ascii_lowercase())
            })
            .collect();
        if let Some(missing) = local_domains.iter().find(|l| !routed.contains(*l)) {
            return Err(err(
                "delivery.route".into(),
                line_of(text, "delivery", None, None),
                format!(
                    "local domain {missing:?} has no [[delivery.route]] to a mailbox store (or set [delivery] enabled = false to only accept and queue)"
                ),
            ));
        }
        for (i, r) in d.route.iter().enumerate() {
            let at = line_of(text, "delivery.route", Some(i), None);
            if r.domains.is_empty() || r.host.is_empty() || r.port == 0 {
                return Err(err(
                    format!("delivery.route[{i}]"),
                    at,
                    "a route needs domains, host and a non-zero port".into(),
                ));
            }
            let needs_roots = r.protocol == HopProtocol::Amtp || r.tls == HopTls::Required;
            if needs_roots && delivery_roots.is_none() {
                return Err(err(
                    format!("delivery.route[{i}]"),
                    at,
                    "verified TLS needs [delivery] server_ca (or [amtp] public_ca)".into(),
                ));
            }
            if r.protocol == HopProtocol::Amtp && tls_files.is_none() {
                return Err(err(
                    format!("delivery.route[{i}].protocol"),
                    at,
                    "an AMTP hop presents our certificate: configure [tls]".into(),
                ));
            }
        }
        if d.smtp_fallback && d.smtp_fallback_tls == HopTls::Required && delivery_roots.is_none() {
            return Err(err(
                "delivery.smtp_fallback_tls".into(),
                line_of(text, "delivery", None, Some("smtp_fallback_tls")),
                "required TLS needs [delivery] server_ca".into(),
            ));
        }
        if let Some(p) = &d.server_ca
            && !resolve(p).is_file()
        {
            return Err(err(
                "delivery.server_ca".into(),
                line_of(text, "delivery", None, Some("server_ca")),
                format!("{} does not exist", resolve(p).display()),
            ));
        }
        if d.concurrency_per_destination == 0 || d.max_messages_per_connection == 0 {
            return Err(err(
                "delivery.concurrency_per_destination".into(),
                line_of(text, "delivery", None, None),
                "concurrency and messages per connection must be at least 1".into(),
            ));
        }
    }

    // [session], [queue], [pools]
    let s = &file.session;
    let checks: [(&str, &str, bool, &str); 9] = [
        (
            "session",
            "max_message_size",
            s.max_message_size.0 == 0,
            "must be more than 0",
        ),
        (
            "session",
            "max_recipients",
            s.max_recipients == 0,
            "must be at least 1",
        ),
        (
            "session",
            "max_errors",
            s.max_errors == 0,
            "must be at least 1",
        ),
        (
            "session",
            "command_timeout",
            s.command_timeout.0.is_zero(),
            "must be more than 0",
        ),
        (
            "session",
            "data_timeout",
            s.data_timeout.0.is_zero(),
            "must be more than 0",
        ),
        (
            "session",
            "tls_handshake_timeout",
            s.tls_handshake_timeout.0.is_zero(),
            "must be more than 0",
        ),
        (
            "queue",
            "batch_max",
            file.queue.batch_max == 0,
            "must be at least 1",
        ),
        (
            "queue",
            "capacity",
            file.queue.capacity == 0,
            "must be at least 1",
        ),
        (
            "pools",
            "worker_mailbox",
            file.pools.worker_mailbox == 0,
            "must be at least 1",
        ),
    ];
    for (section, key, bad, why) in checks {
        if bad {
            return Err(err(
                format!("{section}.{key}"),
                line_of(text, section, None, Some(key)),
                why.into(),
            ));
        }
    }
    if s.max_message_size.0 > 1 << 30 {
        return Err(err(
            "session.max_message_size".into(),
            line_of(text, "session", None, Some("max_message_size")),
            "at most 1GiB (messages are held in memory while received)".into(),
        ));
    }
    tracing_subscriber::EnvFilter::try_new(&file.logging.level).map_err(|e| {
        err(
            "logging.level".into(),
            line_of(text, "logging", None, Some("level")),
            e.to_string(),
        )
    })?;

    // Last, so that the more specific errors above are reported first: with delivery on, mail
    // for any domain that publishes an `_amtp._tcp` SRV record leaves over AMTP, whose next
    // hops must be verified. Without trust anchors every such message would fail at delivery.
    if file.delivery.enabled && delivery_roots.is_none() {
        return Err(err(
            "delivery.server_ca".into(),
            line_of(text, "delivery", None, None),
            "delivery is on but nothing can verify next hops: outbound AMTP (any domain with an _amtp._tcp SRV record) needs trust anchors — set [delivery] server_ca or [amtp] public_ca, or [delivery] enabled = false to only accept and queue".into(),
        ));
    }

    Ok(Config {
        file,
        origin: origin.into(),
        data_dir,
        tls_files,
        users_file,
        local_domains,
        amtp_files,
        delivery_roots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_dev_config_is_valid() {
        let c = parse(DEV_CONFIG, "dev", Path::new("/base")).unwrap();
        assert_eq!(c.file.listeners.len(), 4);
        let amtp = c.amtp_files.as_ref().unwrap();
        assert_eq!(amtp.public_ca, None, "the dev CA is private only");
        assert_eq!(
            amtp.private_ca,
            vec![Path::new("/base/./amtp-data/tls/ca.pem").to_path_buf()]
        );
        assert_eq!(c.data_dir, Path::new("/base/./amtp-data"));
        assert!(c.local_domains.contains("example.test"));
        assert_eq!(
            c.users_file.as_deref(),
            Some(Path::new("/base/./amtp-data/users.toml"))
        );
    }

    #[test]
    fn errors_name_field_and_line() {
        let base = "[server]\nhostname = \"relay.test\"\n\n[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:2525\"\n";
        let cases: Vec<(String, &str, Option<usize>, &str)> = vec![
            (
                format!("{base}bogus = 1\n"),
                "bogus",
                Some(8),
                "unknown field `bogus`",
            ),
            (
                base.replace("role = \"mx\"", "role = \"relay\""),
                "role",
                Some(6),
                "unknown variant `relay`",
            ),
            (
                base.replace("127.0.0.1:2525", "localhost"),
                "address",
                Some(7),
                "invalid socket address",
            ),
            (
                format!("{base}[session]\nmax_message_size = \"10 parsecs\"\n"),
                "max_message_size",
                Some(9),
                "unknown size unit",
            ),
            (
                format!("{base}[session]\ncommand_timeout = \"5\"\n"),
                "command_timeout",
                Some(9),
                "needs a unit",
            ),
            (
                format!("{base}[session]\nmax_recipients = 0\n"),
                "session.max_recipients",
                Some(9),
                "at least 1",
            ),
            (
                format!(
                    "{base}[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:2526\"\n"
                ),
                "listener[1].name",
                Some(9),
                "unique",
            ),
            (
                format!(
                    "{base}[[listener]]\nname = \"sub\"\nrole = \"submission\"\naddress = \"127.0.0.1:2587\"\n"
                ),
                "listener[1].role",
                Some(10),
                "needs a certificate",
            ),
            (
                format!(
                    "{base}[tls]\ngenerate_dev_certificate = true\n[[listener]]\nname = \"amtp\"\nrole = \"amtp\"\naddress = \"127.0.0.1:3025\"\n[amtp]\nmpc_policy = \"DENY=com/optout\"\n"
                ),
                "amtp.public_ca",
                Some(14),
                "public_ca (public peers) or private_ca",
            ),
            (
                base.replace("relay.test", "bad host"),
                "server.hostname",
                Some(2),
                "not a host name",
            ),
            (
                "[server]\n".to_string(),
                "",
                Some(1),
                "missing field `hostname`",
            ),
            (
                base.replace(
                    "[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:2525\"\n",
                    "",
                ),
                "listener",
                None,
                "at least one",
            ),
            (
                format!(
                    "{base}[tls]\ncertificate = \"/nonexistent.pem\"\nprivate_key = \"/nonexistent-key.pem\"\n"
                ),
                "tls.certificate",
                Some(9),
                "does not exist",
            ),
            (
                base.replace(
                    "address = \"127.0.0.1:2525\"\n",
                    "address = \"127.0.0.1:2525\"\ndefault_mpc = \"foo/bar\"\n",
                ),
                "listener[0].default_mpc",
                Some(8),
                "undefined MPC role",
            ),
            (
                format!("{base}[logging]\nlevel = \"[[[\"\n"),
                "logging.level",
                Some(9),
                "",
            ),
        ];
        for (text, field, line, needle) in cases {
            let e = parse(&text, "t.toml", Path::new("/")).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert_eq!(e.line, line, "{e}");
            assert!(e.message.contains(needle), "{e}");
        }
    }

    #[test]
    fn proxy_settings_are_checked() {
        let base = "[server]\nhostname = \"relay.test\"\n[delivery]\nenabled = false\n[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:25\"\n";
        let ok = parse(
            &format!("{base}proxy_protocol = true\nproxy_trusted = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]\n"),
            "t",
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(ok.file.listeners[0].proxy_trusted.len(), 3);
        for (extra, wants) in [
            ("proxy_protocol = true\n", "listener[0].proxy_trusted"),
            (
                "proxy_trusted = [\"10.0.0.0/8\"]\n",
                "listener[0].proxy_trusted",
            ),
            (
                "proxy_protocol = true\nproxy_trusted = [\"10.0.0.1/8\"]\n",
                "host bits",
            ),
            (
                "proxy_protocol = true\nproxy_trusted = [\"10.0.0.0/40\"]\n",
                "prefix length",
            ),
            (
                "proxy_protocol = true\nproxy_trusted = [\"balancer\"]\n",
                "not an IP address",
            ),
            (
                "proxy_protocol = true\nproxy_trusted = [\"10.0.0.0/8\"]\nproxy_header_timeout = \"0s\"\n",
                "above zero",
            ),
        ] {
            let e = parse(&format!("{base}{extra}"), "t", Path::new("/")).unwrap_err();
            assert!(e.to_string().contains(wants), "{extra:?}: {e}");
        }
    }

    #[test]
    fn cluster_settings_are_checked() {
        let base = "[server]\nhostname = \"relay.test\"\n[delivery]\nenabled = false\n[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:25\"\n[cluster]\n";
        let ok = parse(
            &format!("{base}redis = \"redis://127.0.0.1:6379/0\"\nnode_id = \"edge-1\"\n"),
            "t",
            Path::new("/"),
        )
        .unwrap();
        let c = ok.file.cluster.unwrap();
        assert_eq!(c.node_id(), "edge-1");
        assert_eq!(c.deadline.0, Duration::from_millis(5));
        for (extra, field) in [
            ("redis = \"http://x\"\n", "cluster.redis"),
            (
                "redis = \"redis://h/0\"\npool_size = 0\n",
                "cluster.pool_size",
            ),
            (
                "redis = \"redis://h/0\"\ndeadline = \"5s\"\n",
                "cluster.deadline",
            ),
            (
                "redis = \"redis://h/0\"\nnode_id = \"a b\"\n",
                "cluster.node_id",
            ),
        ] {
            let e = parse(&format!("{base}{extra}"), "t", Path::new("/")).unwrap_err();
            assert_eq!(e.field, field, "{extra:?}: {e}");
        }
    }

    #[test]
    fn auth_needs_a_users_file() {
        let text = "[server]\nhostname = \"relay.test\"\n[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:25\"\nauth = true\nallow_insecure_auth = true\n";
        let e = parse(text, "t", Path::new("/")).unwrap_err();
        assert_eq!(e.field, "auth.users_file");
    }
}
