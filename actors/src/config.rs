//! The configuration of each component, as it appears in the TOML file.
//!
//! Each struct is one section; every field has a doc comment and a default that suits a
//! production edge relay. `deny_unknown_fields` turns typos into start-up errors. The binary
//! composes these into the whole file and checks the rules that span sections; each section's
//! own rules are its `validate()` ([`crate::validate`]). Runtime objects are built by the
//! modules that own them (`AmtpPolicy::from_config`, `RetryPolicy::from_config`,
//! `TtlPolicy::from_config`), so this module depends on nothing but [`crate::units`].
//! docs/CONFIG.md documents every field.

use crate::units::{ByteSize, HumanDuration, Rate};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What a listener is for (spec/AMTP.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerRole {
    /// Inbound SMTP (production port 25): local domains without AUTH, STARTTLS offered.
    Mx,
    /// Submission (587): STARTTLS, then AUTH, required before MAIL.
    Submission,
    /// Implicit-TLS submission (465): AUTH required before MAIL.
    Submissions,
    /// AMTP: mutual TLS on connect, identity = certificate name = PTR = EHLO, MPC required.
    Amtp,
}

impl ListenerRole {
    /// Whether MAIL requires a successful AUTH first.
    pub fn requires_auth(self) -> bool {
        matches!(self, Self::Submission | Self::Submissions)
    }

    /// Whether TLS starts on connect.
    pub fn implicit_tls(self) -> bool {
        matches!(self, Self::Submissions | Self::Amtp)
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mx => "mx",
            Self::Submission => "submission",
            Self::Submissions => "submissions",
            Self::Amtp => "amtp",
        }
    }
}

/// One `[[listener]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name for logs and queue records, e.g. "mx".
    pub name: String,
    /// `mx`, `submission` or `submissions`.
    pub role: ListenerRole,
    /// Address and port to bind, e.g. "0.0.0.0:25" or "[::]:587". Port 0 picks a free port
    /// (the chosen address is logged).
    pub address: SocketAddr,
    /// Most simultaneous connections on this listener; more get `421 4.7.0`.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Most simultaneous connections from one client IP; more get `421 4.7.0`.
    #[serde(default = "defaults::max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Offer SMTP AUTH. Default: on for submission/submissions, off for mx.
    pub auth: Option<bool>,
    /// Offer CRAM-MD5 besides PLAIN and LOGIN (users need a `cram_md5` secret; see
    /// docs/CONFIG.md for the trade-off).
    #[serde(default)]
    pub cram_md5: bool,
    /// Offer AUTH before TLS. Insecure: passwords cross the network in clear. Off by default.
    #[serde(default)]
    pub allow_insecure_auth: bool,
    /// The Mail Policy Code given to mail whose MAIL command carries no `MPC=` (and whose
    /// user has no `mpc` in the users file): ordinary mail clients never send one, and mail
    /// without an MPC cannot leave over AMTP. Default: `per/individual` on submission
    /// listeners, none on mx. Not allowed on AMTP listeners (MAIL must carry `MPC=` there).
    pub default_mpc: Option<String>,
    /// Expect a PROXY protocol header (v1 or v2) first on every connection, as sent by a load
    /// balancer (HAProxy `send-proxy-v2`, a cloud NLB); its source address is then the client
    /// address for everything (limits, AUTH lockouts, AMTP identity, `Received:`, logs).
    /// Needs `proxy_trusted`. See docs/CLUSTER.md.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The balancers' networks (`"10.0.0.0/8"`, `"192.0.2.7"`): a connection from anywhere
    /// else on a `proxy_protocol` listener is closed unanswered and counted.
    #[serde(default)]
    pub proxy_trusted: Vec<crate::proxy::Cidr>,
    /// How long a trusted connection may take to send its PROXY header before it is closed.
    #[serde(default = "defaults::proxy_header_timeout")]
    pub proxy_header_timeout: HumanDuration,
}

impl ListenerConfig {
    /// The MPC for mail on this listener whose MAIL carries none (see `default_mpc`); `None`
    /// on AMTP listeners, on mx without `default_mpc`, and for an invalid value (which the
    /// configuration loader refuses before start).
    pub fn default_mpc(&self) -> Option<amtp_proto::mpc::Mpc> {
        match (&self.default_mpc, self.role) {
            (_, ListenerRole::Amtp) => None,
            (Some(text), _) => text.parse().ok(),
            (None, role) if role.requires_auth() => Some(amtp_proto::mpc::Mpc {
                role: amtp_proto::mpc::Role::Per,
                class: amtp_proto::mpc::Class::Individual,
            }),
            (None, _) => None,
        }
    }

    /// What is wrong with the PROXY protocol settings, as (field, message): `proxy_protocol`
    /// without `proxy_trusted` (it would refuse every connection), or `proxy_trusted` without
    /// `proxy_protocol` (the operator expects client addresses that will not be read).
    pub fn proxy_problem(&self) -> Option<(&'static str, &'static str)> {
        if self.proxy_protocol && self.proxy_header_timeout.0.is_zero() {
            return Some((
                "proxy_header_timeout",
                "proxy_header_timeout must be above zero (a few seconds)",
            ));
        }
        match (self.proxy_protocol, self.proxy_trusted.is_empty()) {
            (true, true) => Some((
                "proxy_trusted",
                "proxy_protocol = true needs proxy_trusted: the load balancers' networks (e.g. [\"10.0.0.0/8\"])",
            )),
            (false, false) => Some((
                "proxy_trusted",
                "proxy_trusted is set but proxy_protocol is off; set proxy_protocol = true",
            )),
            _ => None,
        }
    }

    /// Whether AUTH is offered on this listener.
    pub fn auth_enabled(&self) -> bool {
        self.auth.unwrap_or(self.role.requires_auth())
    }
}

/// `[session]`: limits that apply to every SMTP session.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Largest message accepted (advertised in EHLO SIZE; `552 5.3.4` beyond it).
    #[serde(default = "defaults::max_message_size")]
    pub max_message_size: ByteSize,
    /// Most recipients per message; more get `452 4.5.3`.
    #[serde(default = "defaults::max_recipients")]
    pub max_recipients: usize,
    /// How long a whole command line may take, from our previous reply (or the end of the
    /// previous line) to the line's end — a deadline for the line, not for each read, so a
    /// client trickling a byte at a time cannot hold the session (RFC 5321 §4.5.3.2.7: at
    /// least 5 minutes). `421 4.4.2` when it passes.
    #[serde(default = "defaults::command_timeout")]
    pub command_timeout: HumanDuration,
    /// How long to wait for each chunk of DATA (RFC 5321 §4.5.3.2.6: 3 minutes).
    #[serde(default = "defaults::data_timeout")]
    pub data_timeout: HumanDuration,
    /// Slowest DATA transfer accepted, in bytes per second: the whole message must arrive
    /// within `data_timeout` plus one second per `min_data_rate` bytes received, else
    /// `421 4.4.2` (Postfix's `smtpd_min_data_rate`). 0 turns the total deadline off.
    #[serde(default = "defaults::min_data_rate")]
    pub min_data_rate: u64,
    /// How long a TLS handshake may take.
    #[serde(default = "defaults::tls_handshake_timeout")]
    pub tls_handshake_timeout: HumanDuration,
    /// Consecutive error replies (5xx, and 4xx such as `452`) before `421 4.7.0` and
    /// disconnect. Up to 1,000 recipients beyond `max_recipients` are answered `452` without
    /// counting, so a pipelining client learns the limit and still sends its message.
    #[serde(default = "defaults::max_errors")]
    pub max_errors: u32,
    /// Name the authenticated user in the Received header (privacy: off by default).
    #[serde(default)]
    pub received_auth_user: bool,
}

/// `[auth]`: SMTP AUTH users and brute-force protection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The users file (TOML `[[user]]` entries; see docs/CONFIG.md). Required when any
    /// listener offers AUTH.
    pub users_file: Option<PathBuf>,
    /// Window over which failed AUTH attempts are counted.
    #[serde(default = "defaults::failure_window")]
    pub failure_window: HumanDuration,
    /// Failures from one client IP within the window before it is locked out.
    #[serde(default = "defaults::max_failures_per_ip")]
    pub max_failures_per_ip: u32,
    /// Failures for one user name from one client IP within the window before that IP is
    /// locked out for that name; also the failures (from any IP) after which every attempt
    /// for the name is slowed down (never locked: see `user_delay_max`).
    #[serde(default = "defaults::max_failures_per_user")]
    pub max_failures_per_user: u32,
    /// How long a lock-out lasts (`454 4.7.0` and disconnect meanwhile).
    #[serde(default = "defaults::lockout")]
    pub lockout: HumanDuration,
    /// Longest wait before an attempt for a user name that keeps failing: 1 s after
    /// `max_failures_per_user` failures, doubling with each further one, up to this.
    #[serde(default = "defaults::user_delay_max")]
    pub user_delay_max: HumanDuration,
    /// Password hashes verified at once (argon2 is deliberately slow); 0 = one per core.
    #[serde(default)]
    pub verify_workers: usize,
}

/// `[queue]`: the durable queue and group commit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Most messages made durable by one flush+fsync.
    #[serde(default = "defaults::batch_max")]
    pub batch_max: usize,
    /// How long the committer waits for more messages after the first one. Higher trades
    /// per-message latency for fewer fsyncs under load; 0 commits what is already waiting.
    #[serde(default = "defaults::batch_wait")]
    pub batch_wait: HumanDuration,
    /// Messages waiting for commit before new ones get `451 4.3.0` (backpressure).
    #[serde(default = "defaults::commit_capacity")]
    pub capacity: usize,
    /// How long a session waits for its commit before answering `451 4.3.0`.
    #[serde(default = "defaults::enqueue_timeout")]
    pub enqueue_timeout: HumanDuration,
}

/// `[pools]`: actor pool sizes (see docs/TUNING.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Connection workers: arbiters (threads) that run TLS handshakes and sessions.
    /// 0 = one per CPU core.
    #[serde(default)]
    pub connection_workers: usize,
    /// Mailbox bound of each connection worker; when every worker's mailbox is full new
    /// connections get `421 4.3.2`.
    #[serde(default = "defaults::worker_mailbox")]
    pub worker_mailbox: usize,
}

/// `[amtp]`: trust sets, identity and Mail Policy Code rules for `amtp` listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmtpConfig {
    /// PEM bundle of the public trust anchors: public AMTP peers' client certificates chain
    /// to these. Without it the listener accepts private connections only (at least one of
    /// `public_ca` and `private_ca` is required).
    #[serde(default)]
    pub public_ca: Option<PathBuf>,
    /// PEM bundles of private CAs (customers, staff). None may also be in `public_ca`.
    #[serde(default)]
    pub private_ca: Vec<PathBuf>,
    /// PEM CRL files honoured for client certificates (optional).
    #[serde(default)]
    pub crl: Vec<PathBuf>,
    /// Most intermediate certificates between a client certificate and its anchor.
    #[serde(default = "defaults::max_intermediates")]
    pub max_intermediates: usize,
    /// Session tickets: how long a returning peer may resume its TLS session (`"off"`: every
    /// connection is a full handshake). A resumed session's stored certificate chain is checked
    /// again against the current trust sets and CRLs.
    #[serde(default)]
    pub ticket_lifetime: crate::tickets::TicketLifetime,
    /// The key exchange of a peer resuming with a valid ticket: `"classical"` (default:
    /// `[tls] kx_groups` without the post-quantum hybrids; the session keys still descend
    /// from the hybrid exchange of the peer's full handshake) or `"as-full"`.
    #[serde(default)]
    pub resumption_kx: crate::tls::ResumptionKx,
    /// Also require the PTR name to resolve back to the client address.
    #[serde(default)]
    pub require_forward_confirmation: bool,
    /// Apply the PTR check to private connections too (default: certificate name = EHLO only).
    #[serde(default)]
    pub private_require_ptr: bool,
    /// The published MPC policy, e.g. "ALLOW=com/individual DENY=com/*" (EHLO `MPC` line).
    #[serde(default)]
    pub mpc_policy: String,
    /// Domains besides `server.local_domains` that public connections may address
    /// (configured private next hops).
    #[serde(default)]
    pub relay_domains: Vec<String>,
    /// Messages per minute per client identity; 0 = unlimited. Beyond: `451 4.7.1`.
    #[serde(default)]
    pub rate_limit_per_minute: u32,
    /// Unadvertised rules (`[[amtp.rule]]`).
    #[serde(default)]
    pub rule: Vec<MpcRuleConfig>,
    /// Private connections: AUTH user name → certificate names it may use.
    #[serde(default)]
    pub auth_bindings: HashMap<String, Vec<String>>,
}

/// One `[[amtp.rule]]`: when every given selector matches, the `deny` codes are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MpcRuleConfig {
    /// Sender domain (checked at MAIL).
    pub sender_domain: Option<String>,
    /// Recipient domain (checked per RCPT).
    pub recipient_domain: Option<String>,
    /// Client identity, the certificate name (checked at MAIL).
    pub client: Option<String>,
    /// Refused codes, `role/class` with `*` wildcards, e.g. ["com/*", "*/optout"].
    pub deny: Vec<String>,
}

/// Protocol of a configured next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HopProtocol {
    /// SMTP (STARTTLS per `tls`); the `MPC:` header is added (the message leaves AMTP).
    Smtp,
    /// AMTP: TLS on connect with our certificate, `MPC=` on MAIL.
    Amtp,
}

/// TLS on SMTP hops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HopTls {
    /// Plain text.
    None,
    /// STARTTLS when offered (certificate not verified unless `server_ca` is set).
    Opportunistic,
    /// STARTTLS must succeed and the certificate must verify against `server_ca`.
    Required,
}

/// One `[[delivery.route]]`: a configured (private) next hop for some domains.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Recipient domains sent to this hop (e.g. the local domains, to the mailbox store).
    pub domains: Vec<String>,
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `smtp` or `amtp`.
    pub protocol: HopProtocol,
    /// TLS on SMTP hops (`none`, `opportunistic`, `required`).
    #[serde(default = "defaults::hop_tls")]
    pub tls: HopTls,
}

/// `[delivery]`: outbound delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Deliver queued mail (off: the relay only accepts and stores).
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Our EHLO name outbound (default `server.hostname`); on AMTP hops it must be our
    /// certificate name and the PTR of `source_address`.
    pub ehlo_name: Option<String>,
    /// Bind outbound connections to this local address.
    pub source_address: Option<std::net::IpAddr>,
    /// Configured next hops, by recipient domain.
    #[serde(default)]
    pub route: Vec<RouteConfig>,
    /// For remote domains without an `_amtp._tcp` SRV record, fall back to SMTP via MX
    /// (transition; adds the `MPC:` header).
    #[serde(default)]
    pub smtp_fallback: bool,
    /// TLS for the SMTP fallback.
    #[serde(default = "defaults::hop_tls")]
    pub smtp_fallback_tls: HopTls,
    /// Port for the SMTP fallback (25; other values are for tests and private networks).
    #[serde(default = "defaults::smtp_port")]
    pub smtp_fallback_port: u16,
    /// CA bundle to verify next hops' server certificates (default: `[amtp] public_ca`).
    pub server_ca: Option<PathBuf>,
    /// Simultaneous connections per next hop.
    #[serde(default = "defaults::hop_concurrency")]
    pub concurrency_per_destination: usize,
    /// Messages sent over one connection before it is closed.
    #[serde(default = "defaults::messages_per_connection")]
    pub max_messages_per_connection: usize,
    /// Most messages sent to one next hop, e.g. `"600/min"` or `"10/s"` (a token bucket:
    /// an even pace with small bursts); messages beyond it wait in the queue, without
    /// counting an attempt, until the budget allows. With `[cluster]`, across the whole
    /// fleet. Default: no limit.
    #[serde(default)]
    pub max_messages_per_destination: Option<Rate>,
    /// TCP connect timeout.
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Wait for each reply (RFC 5321 §4.5.3.2 suggests minutes).
    #[serde(default = "defaults::command_timeout")]
    pub command_timeout: HumanDuration,
    /// How often the router looks for due messages (it is also woken on every enqueue).
    #[serde(default = "defaults::poll_interval")]
    pub poll_interval: HumanDuration,
    /// A delivery attempt holds its message this long at most.
    #[serde(default = "defaults::lease")]
    pub lease: HumanDuration,
    /// Most messages out for delivery at once (leased, bodies in memory). Bounds the router's
    /// memory: no more is leased until attempts finish.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// Wait before the first retry.
    #[serde(default = "defaults::first_retry")]
    pub first_retry: HumanDuration,
    /// Longest wait between retries.
    #[serde(default = "defaults::max_backoff")]
    pub max_backoff: HumanDuration,
    /// Bounce what is still undelivered after this long.
    #[serde(default = "defaults::max_lifetime")]
    pub max_lifetime: HumanDuration,
}

/// `[metrics]`: the operations HTTP endpoint (`/metrics`, `/healthz/live`, `/healthz/ready`).
/// Absent: no endpoint, and metrics are not recorded at all.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to serve it, e.g. "127.0.0.1:9425". Bind a private or loopback address: the
    /// endpoint has no authentication (like every Prometheus exporter).
    pub listen: SocketAddr,
}

/// `[resolver]`: the DNS/rDNS caching resolver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    /// Name servers ("127.0.0.1:53"); empty = those of /etc/resolv.conf.
    #[serde(default)]
    pub servers: Vec<SocketAddr>,
    /// Per-try timeout.
    #[serde(default = "defaults::dns_timeout")]
    pub timeout: HumanDuration,
    /// Tries per lookup.
    #[serde(default = "defaults::dns_attempts")]
    pub attempts: usize,
    /// Most cached answers.
    #[serde(default = "defaults::dns_cache_size")]
    pub cache_size: usize,
    /// Positive answers are kept at least this long.
    #[serde(default = "defaults::dns_min_ttl")]
    pub min_ttl: HumanDuration,
    /// …and at most this long.
    #[serde(default = "defaults::dns_max_ttl")]
    pub max_ttl: HumanDuration,
    /// Negative answers are kept for the SOA minimum, at most this long.
    #[serde(default = "defaults::dns_negative_max_ttl")]
    pub negative_max_ttl: HumanDuration,
}

/// One problem in one field of a section, as each section's `validate()`
/// ([`crate::validate`]) and the runtime constructors report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The entry of an array of tables inside the section the field is in, e.g.
    /// `("rule", 1)` for `[[amtp.rule]]` number 2; `None` for a plain field.
    pub entry: Option<(&'static str, usize)>,
    /// The key within the section (or the entry); empty for the table itself.
    pub key: &'static str,
    /// What is wrong, in the operator's words.
    pub message: String,
}

impl FieldError {
    /// A plain field of the section.
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            entry: None,
            key,
            message: message.into(),
        }
    }

    /// A field of entry `index` of the array `array` inside the section.
    pub fn in_entry(
        array: &'static str,
        index: usize,
        key: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            entry: Some((array, index)),
            key,
            message: message.into(),
        }
    }

    /// The full field name under `section`, e.g. `amtp.rule[1].deny`.
    pub fn path(&self, section: &str) -> String {
        let mut out = section.to_string();
        if let Some((array, i)) = self.entry {
            out.push_str(&format!(".{array}[{i}]"));
        }
        if !self.key.is_empty() {
            out.push('.');
            out.push_str(self.key);
        }
        out
    }
}

/// Resolve "0 = one per core".
pub fn per_core(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    } else {
        n
    }
}

macro_rules! default_impl {
    ($($ty:ident),*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                toml::from_str("").expect(concat!("defaults of ", stringify!($ty), " must parse"))
            }
        }
    )*};
}
default_impl!(
    SessionConfig,
    AuthConfig,
    QueueConfig,
    PoolConfig,
    ResolverConfig,
    DeliveryConfig
);

/// Default values, one function per field (serde needs functions).
pub mod defaults {
    use super::*;

    pub(crate) fn max_connections() -> usize {
        10_000
    }
    pub(crate) fn max_connections_per_ip() -> usize {
        50
    }
    pub(crate) fn proxy_header_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
    pub(crate) fn max_message_size() -> ByteSize {
        ByteSize(25_000_000)
    }
    pub(crate) fn max_recipients() -> usize {
        100
    }
    pub(crate) fn command_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(300))
    }
    pub(crate) fn data_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(180))
    }
    pub(crate) fn tls_handshake_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    pub(crate) fn min_data_rate() -> u64 {
        500
    }
    pub(crate) fn max_errors() -> u32 {
        10
    }
    pub(crate) fn failure_window() -> HumanDuration {
        HumanDuration(Duration::from_secs(600))
    }
    pub(crate) fn max_failures_per_ip() -> u32 {
        10
    }
    pub(crate) fn max_failures_per_user() -> u32 {
        5
    }
    pub(crate) fn user_delay_max() -> HumanDuration {
        HumanDuration(Duration::from_secs(15))
    }
    pub(crate) fn lockout() -> HumanDuration {
        HumanDuration(Duration::from_secs(900))
    }
    pub(crate) fn batch_max() -> usize {
        128
    }
    pub(crate) fn batch_wait() -> HumanDuration {
        HumanDuration(Duration::from_millis(1))
    }
    pub(crate) fn commit_capacity() -> usize {
        4096
    }
    pub(crate) fn enqueue_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub(crate) fn worker_mailbox() -> usize {
        1024
    }
    pub(crate) fn max_intermediates() -> usize {
        3
    }
    pub(crate) fn yes() -> bool {
        true
    }
    pub(crate) fn smtp_port() -> u16 {
        25
    }
    pub(crate) fn max_in_flight() -> usize {
        2000
    }
    pub(crate) fn hop_tls() -> HopTls {
        HopTls::Opportunistic
    }
    pub(crate) fn hop_concurrency() -> usize {
        4
    }
    pub(crate) fn messages_per_connection() -> usize {
        50
    }
    pub(crate) fn connect_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub(crate) fn poll_interval() -> HumanDuration {
        HumanDuration(Duration::from_secs(1))
    }
    pub(crate) fn lease() -> HumanDuration {
        HumanDuration(Duration::from_secs(600))
    }
    pub(crate) fn first_retry() -> HumanDuration {
        HumanDuration(Duration::from_secs(300))
    }
    pub(crate) fn max_backoff() -> HumanDuration {
        HumanDuration(Duration::from_secs(3600))
    }
    pub(crate) fn max_lifetime() -> HumanDuration {
        HumanDuration(Duration::from_secs(5 * 86_400))
    }
    pub(crate) fn dns_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(2))
    }
    pub(crate) fn dns_attempts() -> usize {
        2
    }
    pub(crate) fn dns_cache_size() -> usize {
        100_000
    }
    pub(crate) fn dns_min_ttl() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
    pub(crate) fn dns_max_ttl() -> HumanDuration {
        HumanDuration(Duration::from_secs(86_400))
    }
    pub(crate) fn dns_negative_max_ttl() -> HumanDuration {
        HumanDuration(Duration::from_secs(300))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_unknown_fields_are_refused() {
        assert_eq!(
            SessionConfig::default().max_message_size,
            ByteSize(25_000_000)
        );
        assert_eq!(AuthConfig::default().lockout.0, Duration::from_secs(900));
        let err = toml::from_str::<SessionConfig>("max_mesage_size = \"1MB\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `max_mesage_size`"), "{err}");
        let l: ListenerConfig =
            toml::from_str("name = \"s\"\nrole = \"submission\"\naddress = \"127.0.0.1:0\"")
                .unwrap();
        assert!(l.auth_enabled());
        let l: ListenerConfig =
            toml::from_str("name = \"m\"\nrole = \"mx\"\naddress = \"127.0.0.1:0\"").unwrap();
        assert!(!l.auth_enabled());
    }
}
