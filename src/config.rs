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
use amtp_actors::validate::FieldError;
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
    /// Poll the certificate, key, CA bundle and CRL files this often and reload when one
    /// changes (an ACME client's renewal is picked up without a signal). Absent: no polling.
    pub watch: Option<HumanDuration>,
    /// Key-exchange groups inbound TLS accepts (SMTP and AMTP listeners). Absent: the
    /// post-quantum hybrid X25519MLKEM768, then x25519, secp256r1, secp384r1.
    pub kx_groups: Option<Vec<amtp_actors::tls::KxGroup>>,
    /// Session tickets on the SMTP listeners (STARTTLS, implicit TLS): how long a ticket is
    /// honoured, `"off"` for none. AMTP listeners have `[amtp] ticket_lifetime`.
    #[serde(default)]
    pub ticket_lifetime: amtp_actors::tickets::TicketLifetime,
}

impl TlsSection {
    /// The key-exchange groups in force.
    pub fn kx_groups(&self) -> Vec<amtp_actors::tls::KxGroup> {
        self.kx_groups
            .clone()
            .unwrap_or_else(|| amtp_actors::tls::KxGroup::DEFAULT.to_vec())
    }
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

/// Every error found in a configuration, in file order.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

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
    /// The file's text, to name lines in checks made after parsing (see `preflight`).
    pub text: String,
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
pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    match path {
        None => parse(DEV_CONFIG, "embedded dev config", Path::new(".")),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                ConfigErrors(vec![ConfigError {
                    origin: p.display().to_string(),
                    field: String::new(),
                    line: None,
                    message: format!("cannot read: {e}"),
                }])
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
pub fn line_of(
    text: &str,
    section: &str,
    index: Option<usize>,
    key: Option<&str>,
) -> Option<usize> {
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

/// serde names Rust types (`expected usize`); say what the operator must write instead.
fn operator_words(message: &str) -> String {
    const WHOLE: [&str; 10] = [
        "usize", "u8", "u16", "u32", "u64", "u128", "isize", "i32", "i64", "i128",
    ];
    let mut out = message.to_string();
    for (rust, words) in WHOLE
        .iter()
        .map(|t| (*t, "a whole number"))
        .chain([("f64", "a number"), ("f32", "a number")])
    {
        let rust = format!("expected {rust}");
        let mut from = 0;
        while let Some(i) = out[from..].find(&rust).map(|i| i + from) {
            let end = i + rust.len();
            if out[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                from = end;
                continue;
            }
            let said = format!("expected {words}");
            out.replace_range(i..end, &said);
            from = i + said.len();
        }
    }
    out
}

/// Parse and validate configuration text. Relative paths resolve against `base`. Every error
/// is reported (in file order), not only the first; a file that is not valid TOML for this
/// structure has one.
pub fn parse(text: &str, origin: &str, base: &Path) -> Result<Config, ConfigErrors> {
    let file: ConfigFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_at(text, s.start));
        let field = line
            .and_then(|l| text.lines().nth(l - 1))
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim().to_string())
            .unwrap_or_default();
        ConfigErrors(vec![ConfigError {
            origin: origin.into(),
            field,
            line,
            message: operator_words(e.message().trim()),
        }])
    })?;
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut err = |field: String, line: Option<usize>, message: String| {
        errors.push(ConfigError {
            origin: origin.into(),
            field,
            line,
            message,
        });
    };
    let resolve = |p: &Path| {
        if p.is_absolute() || base == Path::new(".") {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    // A section's own `validate()` errors, with the field's line.
    let section_errors =
        |section: &str, found: Vec<FieldError>| -> Vec<(String, Option<usize>, String)> {
            found
                .into_iter()
                .map(|e| {
                    let key = (!e.key.is_empty()).then_some(e.key);
                    let line = match e.entry {
                        Some((array, i)) => {
                            let table = format!("{section}.{array}");
                            key.and_then(|k| line_of(text, &table, Some(i), Some(k)))
                                .or_else(|| line_of(text, &table, Some(i), None))
                        }
                        None => key
                            .and_then(|k| line_of(text, section, None, Some(k)))
                            .or_else(|| line_of(text, section, None, None)),
                    };
                    (e.path(section), line, e.message)
                })
                .collect()
        };

    // [server]
    if let Err(m) = Domain::parse(&file.server.hostname) {
        err(
            "server.hostname".into(),
            line_of(text, "server", None, Some("hostname")),
            format!("{:?} is not a host name: {m}", file.server.hostname),
        );
    }
    let mut local_domains = HashSet::new();
    for d in &file.server.local_domains {
        match Domain::parse(d) {
            Ok(parsed) => {
                local_domains.insert(parsed.normalized());
            }
            Err(m) => err(
                "server.local_domains".into(),
                line_of(text, "server", None, Some("local_domains")),
                format!("{d:?} is not a domain: {m}"),
            ),
        }
    }
    let data_dir = resolve(&file.server.data_dir);

    // [[listener]]
    if file.listeners.is_empty() {
        err(
            "listener".into(),
            None,
            "at least one [[listener]] is required".into(),
        );
    }
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    if let Some(c) = &file.cluster
        && let Err((key, why)) = c.check()
    {
        err(
            format!("cluster.{key}"),
            line_of(text, "cluster", None, Some(key)),
            why,
        );
    }
    for (i, l) in file.listeners.iter().enumerate() {
        let at = |key| {
            line_of(text, "listener", Some(i), Some(key))
                .or_else(|| line_of(text, "listener", Some(i), None))
        };
        let field = |key: &str| format!("listener[{i}].{key}");
        for e in l.validate() {
            err(field(e.key), at(e.key), e.message);
        }
        if !l.name.is_empty() && !names.insert(l.name.clone()) {
            err(
                field("name"),
                at("name"),
                format!("listener names must be unique ({:?} is used twice)", l.name),
            );
        }
        if l.address.port() != 0 && !addresses.insert(l.address) {
            err(
                field("address"),
                at("address"),
                format!("{} is used by two listeners", l.address),
            );
        }
        if let Some((key, why)) = l.proxy_problem() {
            err(field(key), at(key), why.into());
        }
        if let Some(text) = &l.default_mpc {
            if l.role == ListenerRole::Amtp {
                err(
                    field("default_mpc"),
                    at("default_mpc"),
                    "AMTP clients must send MPC= themselves; default_mpc is for SMTP listeners"
                        .into(),
                );
            } else if let Err(e) = text.parse::<amtp_proto::mpc::Mpc>() {
                err(
                    field("default_mpc"),
                    at("default_mpc"),
                    format!("{e} (a defined Mail Policy Code such as per/individual)"),
                );
            }
        }
    }

    // [metrics]
    if let Some(m) = &file.metrics
        && m.listen.port() != 0
        && addresses.contains(&m.listen)
    {
        err(
            "metrics.listen".into(),
            line_of(text, "metrics", None, Some("listen")),
            format!("{} is already used by a [[listener]]", m.listen),
        );
    }

    // [tls]
    let tls = &file.tls;
    if tls.watch.is_some_and(|w| w.0 < Duration::from_secs(1)) {
        err(
            "tls.watch".into(),
            line_of(text, "tls", None, Some("watch")),
            "must be at least 1s".into(),
        );
    }
    if tls.kx_groups.as_ref().is_some_and(Vec::is_empty) {
        err(
            "tls.kx_groups".into(),
            line_of(text, "tls", None, Some("kx_groups")),
            format!(
                "lists no key-exchange group; name at least one of {} (or remove the key for the default)",
                amtp_actors::tls::KxGroup::ALL
                    .map(amtp_actors::tls::KxGroup::name)
                    .join(", ")
            ),
        );
    }
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
            err(
                "tls.private_key".into(),
                line_of(text, "tls", None, None),
                "tls.certificate is set but tls.private_key is not".into(),
            );
            None
        }
        (None, Some(_), _) => {
            err(
                "tls.certificate".into(),
                line_of(text, "tls", None, None),
                "tls.private_key is set but tls.certificate is not".into(),
            );
            None
        }
    };
    // Half a [tls] section is reported above; do not also say every listener lacks one.
    let tls_given = tls_files.is_some() || tls.certificate.is_some() || tls.private_key.is_some();
    if let Some((cert, key)) = &tls_files
        && !tls.generate_dev_certificate
    {
        for (field, p) in [("tls.certificate", cert), ("tls.private_key", key)] {
            if !p.is_file() {
                let key = field.trim_start_matches("tls.");
                err(
                    field.into(),
                    line_of(text, "tls", None, Some(key)),
                    format!("{} does not exist", p.display()),
                );
            }
        }
    }
    for (i, l) in file.listeners.iter().enumerate() {
        let needs_tls = matches!(l.role, ListenerRole::Submissions | ListenerRole::Amtp)
            || (l.role == ListenerRole::Submission && !l.allow_insecure_auth);
        if needs_tls && !tls_given {
            err(
                format!("listener[{i}].role"),
                line_of(text, "listener", Some(i), Some("role")),
                format!(
                    "a {} listener needs a certificate: set [tls] certificate and private_key",
                    l.role.as_str()
                ),
            );
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
            None => err(
                "auth.users_file".into(),
                line_of(text, "auth", None, None),
                "a listener offers AUTH, so [auth] users_file is required".into(),
            ),
            Some(p) if !file.server.create_dev_user || p.exists() => {
                if let Err(e) = UserDb::load(p) {
                    err(
                        "auth.users_file".into(),
                        line_of(text, "auth", None, Some("users_file")),
                        e.to_string(),
                    );
                }
            }
            Some(_) => {}
        }
    }
    for (field, line, message) in section_errors("auth", file.auth.validate()) {
        err(field, line, message);
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
            err(
                format!("listener[{i}].role"),
                line_of(text, "listener", Some(i), Some("role")),
                "an amtp listener needs an [amtp] section (public_ca or private_ca at least)"
                    .into(),
            );
        }
        (Some(a), _) => {
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
                    err(
                        field.into(),
                        line_of(text, "amtp", None, Some(key)),
                        format!("{} does not exist", p.display()),
                    );
                }
            }
            for (field, line, message) in section_errors("amtp", a.validate()) {
                err(field, line, message);
            }
        }
        (None, false) => {}
    }
    for (field, line, message) in section_errors("resolver", file.resolver.validate()) {
        err(field, line, message);
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
        let mut missing: Vec<&String> = local_domains
            .iter()
            .filter(|l| !routed.contains(*l))
            .collect();
        missing.sort();
        for missing in missing {
            err(
                "delivery.route".into(),
                line_of(text, "delivery", None, None),
                format!(
                    "local domain {missing:?} has no [[delivery.route]] to a mailbox store (or set [delivery] enabled = false to only accept and queue)"
                ),
            );
        }
        for (field, line, message) in section_errors("delivery", d.validate()) {
            err(field, line, message);
        }
        for (i, r) in d.route.iter().enumerate() {
            let at = line_of(text, "delivery.route", Some(i), None);
            let needs_roots = r.protocol == HopProtocol::Amtp || r.tls == HopTls::Required;
            if needs_roots && delivery_roots.is_none() {
                err(
                    format!("delivery.route[{i}]"),
                    at,
                    "verified TLS needs [delivery] server_ca (or [amtp] public_ca)".into(),
                );
            }
            if r.protocol == HopProtocol::Amtp && !tls_given {
                err(
                    format!("delivery.route[{i}].protocol"),
                    at,
                    "an AMTP hop presents our certificate: configure [tls]".into(),
                );
            }
        }
        if d.smtp_fallback && d.smtp_fallback_tls == HopTls::Required && delivery_roots.is_none() {
            err(
                "delivery.smtp_fallback_tls".into(),
                line_of(text, "delivery", None, Some("smtp_fallback_tls")),
                "required TLS needs [delivery] server_ca".into(),
            );
        }
        if let Some(p) = &d.server_ca
            && !resolve(p).is_file()
        {
            err(
                "delivery.server_ca".into(),
                line_of(text, "delivery", None, Some("server_ca")),
                format!("{} does not exist", resolve(p).display()),
            );
        }
    }

    // [session], [queue], [pools]
    for (field, line, message) in section_errors("session", file.session.validate())
        .into_iter()
        .chain(section_errors("queue", file.queue.validate()))
        .chain(section_errors("pools", file.pools.validate()))
    {
        err(field, line, message);
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&file.logging.level) {
        err(
            "logging.level".into(),
            line_of(text, "logging", None, Some("level")),
            e.to_string(),
        );
    }

    // With delivery on, mail for any domain that publishes an `_amtp._tcp` SRV record leaves
    // over AMTP, whose next hops must be verified. Without trust anchors every such message
    // would fail at delivery.
    if file.delivery.enabled && delivery_roots.is_none() {
        err(
            "delivery.server_ca".into(),
            line_of(text, "delivery", None, None),
            "delivery is on but nothing can verify next hops: outbound AMTP (any domain with an _amtp._tcp SRV record) needs trust anchors — set [delivery] server_ca or [amtp] public_ca, or [delivery] enabled = false to only accept and queue".into(),
        );
    }

    if !errors.is_empty() {
        // File order; errors without a line (a missing section) last.
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        return Err(ConfigErrors(errors));
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
        text: text.to_string(),
    })
}

#[cfg(test)]
mod tests;
