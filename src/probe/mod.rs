//! `amtp-relay probe TARGET`: can we talk AMTP to this peer, and what does it say?
//!
//! The probe is the relay's own outbound client — the delivery connection
//! ([`amtp_actors::delivery::outbound::run_connection_with`]) over the AMTP client TLS
//! configuration delivery builds, driving `amtp-proto`'s client state machine — with hooks
//! that record each step. It finds the peer like delivery does (`_amtp._tcp` SRV, RFC 2782
//! order; or a given `host:port`), connects, and reports: TCP, TLS parameters, the server's
//! chain and whether we trust it, the server's identity as AMTP would check it, the EHLO reply
//! and the published MPC policy, and the replies to MAIL and RCPT. With `--send` it sends a
//! message and shows the queue id from the peer's `250`. The exit code says how it ended
//! ([`report::Outcome`]).
//!
//! - `observe` — the connection hooks and the chain-recording verifier.
//! - `certs` — certificates in words.
//! - `report` — findings as data (`--json`) and text; outcomes and exit codes.

mod certs;
mod observe;
mod report;

use amtp_actors::delivery::outbound::{self, HopTarget, Job, OutboundContext, run_connection_with};
use amtp_actors::delivery::route::{Route, order_srv};
use amtp_actors::identity::{PeerCertificate, normalize};
use amtp_actors::resolver::transport::{DnsTransport, HickoryTransport};
use amtp_actors::resolver::{DnsQuery, LookupError, Records};
use amtp_proto::client::{BodyType, Cause, Disposition, Envelope, TlsPolicy, has_8bit};
use amtp_proto::mpc::{Mpc, MpcPolicy, Verdict};
use observe::{Recorder, RecordingVerifier, SeenChain};
use report::{Attempt, Outcome, PolicyRow, PolicyView, Report, ServerIdentity, SrvRecord, Step};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Exit code when the options or the configuration are unusable (EX_USAGE, as elsewhere).
const EXIT_USAGE: u8 = 64;

/// `amtp-relay probe` options.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// A domain (its `_amtp._tcp.DOMAIN` SRV records are tried in order) or HOST:PORT.
    pub target: String,
    /// Take our identity, trust anchors, source address and resolver from this relay config.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Our client certificate chain, PEM (default: the configured [tls] certificate).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Its private key, PEM (default: the configured [tls] private_key).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Trust anchors for the server, PEM; repeatable (default: the configured [amtp] public
    /// and private CA sets).
    #[arg(long)]
    pub ca: Vec<PathBuf>,
    /// EHLO name (default: our certificate's name).
    #[arg(long)]
    pub ehlo: Option<String>,
    /// Connect from this local address (default: [delivery] source_address with --config).
    #[arg(long)]
    pub source: Option<IpAddr>,
    /// Connect and per-reply timeout, e.g. "10s".
    #[arg(long, default_value = "30s", value_parser = amtp_actors::units::parse_duration)]
    pub timeout: Duration,
    /// DNS server HOST:PORT (default: [resolver] servers with --config, else the system's).
    #[arg(long)]
    pub resolver: Option<SocketAddr>,
    /// The Mail Policy Code for MAIL.
    #[arg(long, default_value = "per/individual")]
    pub mpc: String,
    /// Reverse path for MAIL (default: probe@EHLO-NAME).
    #[arg(long)]
    pub from: Option<String>,
    /// A recipient for RCPT; repeatable (default for a domain target: postmaster@DOMAIN).
    #[arg(long)]
    pub to: Vec<String>,
    /// Send a real message (otherwise: RSET after RCPT, nothing is sent).
    #[arg(long)]
    pub send: bool,
    /// The message for --send: a file, or "-" for standard input (default: a generated test
    /// message with a unique Message-ID).
    #[arg(long)]
    pub body: Option<PathBuf>,
    /// SMTP AUTH user (private AMTP connections authenticate as the user bound to their
    /// certificate).
    #[arg(long, requires = "password_file")]
    pub auth_user: Option<String>,
    /// File holding the AUTH password (first line).
    #[arg(long, requires = "auth_user")]
    pub password_file: Option<PathBuf>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Run the probe; prints the report and returns its exit code.
pub fn run(args: ProbeArgs) -> ExitCode {
    let settings = match Settings::from_args(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("amtp-relay probe: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("amtp-relay probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(probe(&args, settings));
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("amtp-relay probe: {e}"),
        }
    } else {
        print!("{}", report::text(&report));
    }
    ExitCode::from(report.exit_code)
}

/// Options resolved against the configuration.
struct Settings {
    cert: PathBuf,
    ca: Vec<PathBuf>,
    tls: Arc<rustls::ClientConfig>,
    seen: Arc<Mutex<Option<SeenChain>>>,
    ehlo: String,
    mpc: Mpc,
    source: Option<IpAddr>,
    resolver: Option<SocketAddr>,
    auth: Option<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Settings {
    fn from_args(args: &ProbeArgs) -> Result<Self, String> {
        let config = match &args.config {
            Some(p) => Some(crate::config::load(Some(p)).map_err(|e| e.to_string())?),
            None => None,
        };
        let configured = config.as_ref().and_then(|c| c.tls_files.clone());
        let cert = args
            .cert
            .clone()
            .or_else(|| configured.as_ref().map(|(c, _)| c.clone()))
            .ok_or("no client certificate: give --cert and --key, or --config")?;
        let key = args
            .key
            .clone()
            .or_else(|| configured.as_ref().map(|(_, k)| k.clone()))
            .ok_or("no private key: give --key (with --cert), or --config")?;
        let mut ca = args.ca.clone();
        if ca.is_empty()
            && let Some(c) = &config
        {
            if let Some(files) = &c.amtp_files {
                ca.extend(files.public_ca.iter().cloned());
                ca.extend(files.private_ca.iter().cloned());
            } else if let Some(roots) = &c.delivery_roots {
                ca.push(roots.clone());
            }
        }
        if ca.is_empty() {
            return Err("no trust anchors: give --ca (repeatable), or --config with [amtp]".into());
        }
        let paths: Vec<&std::path::Path> = ca.iter().map(PathBuf::as_path).collect();
        let roots = Arc::new(outbound::root_store(&paths)?);
        let seen = Arc::new(Mutex::new(None));
        let verifier = RecordingVerifier::new(outbound::webpki_verifier(roots)?, seen.clone());
        let tls = outbound::amtp_client_tls_verified_by(Arc::new(verifier), &cert, &key)?;
        let leaf = CertificateDer::pem_file_iter(&cert)
            .ok()
            .and_then(|mut i| i.next())
            .and_then(Result::ok)
            .ok_or_else(|| format!("{}: no PEM certificate", cert.display()))?;
        let ehlo = match &args.ehlo {
            Some(e) => e.clone(),
            None => config
                .as_ref()
                .and_then(|c| c.file.delivery.ehlo_name.clone())
                .or_else(|| certs::identity_name(&leaf))
                .ok_or("our certificate has no name: give --ehlo")?,
        };
        let mpc: Mpc = args
            .mpc
            .parse()
            .map_err(|e| format!("--mpc {}: {e}", args.mpc))?;
        let auth = match (&args.auth_user, &args.password_file) {
            (Some(u), Some(p)) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("--password-file {}: {e}", p.display()))?;
                let password = text.lines().next().unwrap_or("").to_string();
                if password.is_empty() {
                    return Err(format!("--password-file {}: empty", p.display()));
                }
                Some((u.clone(), password))
            }
            _ => None,
        };
        let body = match (&args.body, args.send) {
            (Some(_), false) => return Err("--body needs --send".into()),
            (Some(p), true) if p.as_os_str() == "-" => {
                let mut b = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut b)
                    .map_err(|e| format!("reading the message from standard input: {e}"))?;
                Some(b)
            }
            (Some(p), true) => {
                Some(std::fs::read(p).map_err(|e| format!("--body {}: {e}", p.display()))?)
            }
            (None, _) => None,
        };
        Ok(Self {
            cert,
            ca,
            tls,
            seen,
            ehlo,
            mpc,
            source: args
                .source
                .or_else(|| config.as_ref().and_then(|c| c.file.delivery.source_address)),
            resolver: args.resolver.or_else(|| {
                config
                    .as_ref()
                    .and_then(|c| c.file.resolver.servers.first().copied())
            }),
            auth,
            body,
        })
    }
}

/// A generated test message: headers a receiving system expects, a unique Message-ID.
fn test_message(from: &str, to: &[String], ehlo: &str, mpc: &Mpc) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut random = [0u8; 8];
    let _ = getrandom::fill(&mut random);
    let id: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "From: <{from}>\r\nTo: {}\r\nSubject: amtp-relay probe test message\r\nDate: {}\r\nMessage-ID: <probe.{}.{id}@{ehlo}>\r\n\r\nA test message sent by `amtp-relay probe` from {ehlo} with MPC {mpc}.\r\n",
        to.iter()
            .map(|t| format!("<{t}>"))
            .collect::<Vec<_>>()
            .join(", "),
        amtp_proto::received::rfc5322_date(now.as_secs()),
        now.as_secs(),
    )
    .into_bytes()
}

/// The outcome of one SRV/host resolution.
struct Targets {
    srv_name: Option<String>,
    srv: Vec<SrvRecord>,
    srv_error: Option<String>,
    /// (host, address) in the order to try.
    hops: Vec<(String, SocketAddr)>,
    /// Why there is nothing to try.
    none: Option<String>,
}

fn random_pick(max: u32) -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b) % max.saturating_add(1).max(1)
}

async fn addresses(dns: Option<&dyn DnsTransport>, host: &str) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let dns = dns.ok_or("no DNS resolver")?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for q in [DnsQuery::A(host.into()), DnsQuery::Aaaa(host.into())] {
        match dns.query(q).await.0 {
            Ok(Records::Addrs(a)) => out.extend(a),
            Ok(_) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    if out.is_empty() {
        return Err(format!("{host} has no address ({})", errors.join("; ")));
    }
    Ok(out)
}

async fn targets(target: &str, dns: Option<&dyn DnsTransport>) -> Targets {
    let mut t = Targets {
        srv_name: None,
        srv: Vec::new(),
        srv_error: None,
        hops: Vec::new(),
        none: None,
    };
    if let Ok(addr) = target.parse::<SocketAddr>() {
        t.hops.push((addr.ip().to_string(), addr));
        return t;
    }
    if let Some((host, port)) = target.rsplit_once(':')
        && let Ok(port) = port.parse::<u16>()
    {
        match addresses(dns, host).await {
            Ok(ips) => t.hops.extend(
                ips.into_iter()
                    .map(|ip| (host.to_string(), SocketAddr::new(ip, port))),
            ),
            Err(e) => t.none = Some(e),
        }
        return t;
    }
    let name = format!("_amtp._tcp.{}", normalize(target));
    t.srv_name = Some(name.clone());
    let Some(dns) = dns else {
        t.none = Some("no DNS resolver".into());
        return t;
    };
    let records = match dns.query(DnsQuery::Srv(name.clone())).await.0 {
        Ok(Records::Srv(r)) => r,
        Ok(_) => Vec::new(),
        Err(LookupError::NxDomain | LookupError::NoData) => {
            t.srv_error = Some(format!(
                "{name}: no SRV records: {target} does not offer AMTP"
            ));
            t.none = t.srv_error.clone();
            return t;
        }
        Err(e) => {
            t.srv_error = Some(format!("{name}: {e}"));
            t.none = t.srv_error.clone();
            return t;
        }
    };
    match order_srv(&records, &mut random_pick) {
        Route::NoService => {
            t.srv.extend(records.iter().map(|r| SrvRecord {
                priority: r.priority,
                weight: r.weight,
                port: r.port,
                target: ".".into(),
            }));
            t.none = Some(format!(
                "{name} says \".\": {target} offers no AMTP service"
            ));
        }
        Route::Hops(hops) => {
            for hop in hops {
                if let Some(r) = records
                    .iter()
                    .find(|r| r.target == hop.host && r.port == hop.port)
                {
                    t.srv.push(SrvRecord {
                        priority: r.priority,
                        weight: r.weight,
                        port: r.port,
                        target: r.target.clone(),
                    });
                }
                match addresses(Some(dns), &hop.host).await {
                    Ok(ips) => t.hops.extend(
                        ips.into_iter()
                            .map(|ip| (hop.host.clone(), SocketAddr::new(ip, hop.port))),
                    ),
                    Err(e) => t.srv_error = Some(e),
                }
            }
            if t.hops.is_empty() {
                t.none = Some(
                    t.srv_error
                        .clone()
                        .unwrap_or_else(|| "no SRV target has an address".into()),
                );
            }
        }
    }
    t
}

fn policy_view(lines: &[String], mpc: &Mpc) -> Option<PolicyView> {
    let keyword_lines: Vec<String> = lines
        .iter()
        .skip(1)
        .filter(|l| {
            let k = l
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            k == "MPC" || k.starts_with("MPC-")
        })
        .cloned()
        .collect();
    if keyword_lines.is_empty() {
        return None;
    }
    let mut view = PolicyView {
        lines: keyword_lines.clone(),
        declarations: Vec::new(),
        implied: String::new(),
        our_mpc: String::new(),
        mpc: mpc.to_string(),
        error: None,
    };
    match MpcPolicy::from_ehlo_lines(&keyword_lines) {
        Ok(Some(policy)) => {
            for d in &policy.declarations {
                let text = d.to_string();
                let (verdict, pattern) = text.split_once('=').unwrap_or((&text, "*/*"));
                let (role, class) = pattern.split_once('/').unwrap_or((pattern, "*"));
                view.declarations.push(PolicyRow {
                    verdict: verdict.into(),
                    role: role.into(),
                    class: class.into(),
                });
            }
            view.implied = match policy.declarations.first() {
                Some(d) if d.verdict == Verdict::Allow => "DENY".into(),
                _ => "ALLOW".into(),
            };
            view.our_mpc = if policy.evaluate(mpc) == Verdict::Allow {
                "allow".into()
            } else {
                "deny".into()
            };
        }
        Ok(None) => return None,
        Err(e) => view.error = Some(e.to_string()),
    }
    Some(view)
}

async fn server_identity(
    dns: Option<&dyn DnsTransport>,
    host: &str,
    ip: IpAddr,
    leaf: Option<&CertificateDer<'_>>,
) -> Option<ServerIdentity> {
    let names = PeerCertificate::from_der(leaf?.as_ref()).ok()?.names;
    let connected_name = host.parse::<IpAddr>().is_err().then(|| normalize(host));
    let name_matches = connected_name.as_ref().map(|n| names.contains(n));
    let (ptr, ptr_error) = match dns {
        None => (Vec::new(), Some("no DNS resolver".to_string())),
        Some(d) => match d.query(DnsQuery::Ptr(ip)).await.0 {
            Ok(Records::Names(n)) => (n, None),
            Ok(_) | Err(LookupError::NxDomain | LookupError::NoData) => (Vec::new(), None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        },
    };
    let ptr_matches = ptr_error
        .is_none()
        .then(|| ptr.iter().any(|p| names.contains(&normalize(p))));
    Some(ServerIdentity {
        certificate_names: names,
        connected_name,
        name_matches,
        ptr,
        ptr_error,
        ptr_matches,
    })
}

/// Is this reply an MPC refusal (550 naming the MPC)?
fn mpc_refusal(code: u16, text: &str) -> bool {
    code == 550 && text.contains("MPC")
}

async fn attempt(
    args: &ProbeArgs,
    s: &Settings,
    dns: Option<&dyn DnsTransport>,
    host: &str,
    addr: SocketAddr,
    recipients: &[String],
) -> Attempt {
    if let Ok(mut seen) = s.seen.lock() {
        *seen = None;
    }
    let ctx = OutboundContext {
        ehlo_name: s.ehlo.clone(),
        source: s.source,
        connect_timeout: args.timeout,
        command_timeout: args.timeout,
        amtp_tls: Some(s.tls.clone()),
        smtp_verified_tls: None,
        smtp_opportunistic_tls: s.tls.clone(),
    };
    let target = HopTarget {
        host: host.to_string(),
        addr,
        amtp: true,
        tls: TlsPolicy::Implicit,
    };
    let from = args
        .from
        .clone()
        .unwrap_or_else(|| format!("probe@{}", s.ehlo));
    let body = s
        .body
        .clone()
        .unwrap_or_else(|| test_message(&from, recipients, &s.ehlo, &s.mpc));
    let mut job = (!recipients.is_empty()).then(|| Job {
        id: amtp_storage::QueueId(0),
        envelope: Envelope {
            from: from.clone(),
            recipients: recipients.to_vec(),
            mpc: Some(s.mpc),
            size: u64::try_from(body.len()).unwrap_or(u64::MAX),
            // As a mail client would declare it: 8BITMIME for 8-bit content, SMTPUTF8 for
            // non-ASCII addresses.
            body: if has_8bit(&body) {
                BodyType::EightBitMime
            } else {
                BodyType::Unspecified
            },
            eight_bit: has_8bit(&body),
            smtputf8: !from.is_ascii() || recipients.iter().any(|r| !r.is_ascii()),
            utf8_headers: has_8bit(amtp_proto::headers::header_section(&body)),
        },
        body: body.into(),
    });
    let mut recorder = Recorder::new(s.auth.clone(), !args.send);
    let mut dispositions: Vec<(String, Disposition)> = Vec::new();
    let result = run_connection_with(
        &target,
        &ctx,
        1,
        || std::future::ready(job.take()),
        |_, d| dispositions = d,
        &mut recorder,
    )
    .await;
    let seen = s.seen.lock().ok().and_then(|s| s.clone());
    let chain_der: Vec<CertificateDer<'static>> = if recorder.peer_chain.is_empty() {
        seen.as_ref().map(|s| s.chain.clone()).unwrap_or_default()
    } else {
        recorder.peer_chain.clone()
    };
    let chain = chain_der.iter().filter_map(certs::view).collect();
    let (trusted, trust) = match &seen {
        Some(SeenChain { error: None, .. }) => (
            Some(true),
            Some(format!(
                "trusted: chains to our trust anchors ({}) and is valid for {host}",
                s.ca.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        ),
        Some(SeenChain { error: Some(e), .. }) => (Some(false), Some(certs::explain(e, host))),
        None => (None, None),
    };
    let server_identity = if recorder.local.is_some() {
        server_identity(dns, host, addr.ip(), chain_der.first()).await
    } else {
        None
    };
    let ehlo_reply = recorder.reply_to("EHLO").cloned();
    let mpc_policy = ehlo_reply
        .as_ref()
        .filter(|r| r.code == 250)
        .and_then(|r| policy_view(&r.lines, &s.mpc));
    let steps = recorder
        .exchanges
        .iter()
        .map(|e| Step {
            command: e.command.clone(),
            code: e.reply.code,
            reply: e
                .reply
                .lines
                .iter()
                .map(|l| match &e.reply.status {
                    Some(st) => format!("{st} {l}"),
                    None => l.clone(),
                })
                .collect::<Vec<_>>()
                .join("\n"),
        })
        .collect();
    let final_reply = recorder
        .exchanges
        .iter()
        .rev()
        .find(|e| e.command == observe::END_OF_DATA)
        .map(|e| e.reply.clone());
    let queue_id = final_reply
        .as_ref()
        .filter(|r| r.code / 100 == 2)
        .and_then(|r| queue_id_from(&r.text()));
    let (outcome, detail) = classify(
        &result,
        &recorder,
        seen.as_ref(),
        mpc_policy.as_ref(),
        &dispositions,
        args.send,
    );
    Attempt {
        host: host.to_string(),
        address: addr.to_string(),
        local_address: recorder.local.map(|l| l.to_string()),
        connected: recorder.local.is_some(),
        tls: recorder.tls.clone(),
        chain,
        trusted,
        trust,
        peer_refused_our_certificate: recorder.alert.clone(),
        server_identity,
        mpc_policy,
        steps,
        queue_id,
        outcome,
        detail,
    }
}

/// The queue id in a `250 … queued as ID` reply.
fn queue_id_from(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let at = lower.find("queued as ")? + "queued as ".len();
    text[at..]
        .split(|c: char| c.is_whitespace() || c == ')' || c == ',')
        .next()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn classify(
    result: &Result<(), Cause>,
    rec: &Recorder,
    seen: Option<&SeenChain>,
    policy: Option<&PolicyView>,
    dispositions: &[(String, Disposition)],
    send: bool,
) -> (Outcome, String) {
    if rec.local.is_none() {
        let why = result
            .as_ref()
            .err()
            .map_or("not connected".to_string(), ToString::to_string);
        return (Outcome::ConnectFailed, why);
    }
    if rec.tls.is_none() {
        let why = match seen {
            Some(SeenChain { error: Some(e), .. }) => {
                format!("we do not trust the server: {e}")
            }
            _ => result
                .as_ref()
                .err()
                .map_or("TLS handshake failed".to_string(), ToString::to_string),
        };
        return (Outcome::TlsRefused, why);
    }
    if let Some(alert) = &rec.alert
        && rec.exchanges.is_empty()
    {
        return (
            Outcome::TlsRefused,
            format!("the server refused our certificate (TLS alert {alert})"),
        );
    }
    if let Some(r) = rec.reply_to("EHLO")
        && r.code == 504
    {
        return (
            Outcome::IdentityRefused,
            format!("the server refused our identity: {r}"),
        );
    }
    if let Some(r) = rec.reply_to("AUTH")
        && r.code != 235
    {
        return (Outcome::Failed, format!("AUTH refused: {r}"));
    }
    if let Some(r) = rec.reply_to("MAIL") {
        if mpc_refusal(r.code, &r.text()) {
            return (Outcome::PolicyRefused, format!("MAIL refused: {r}"));
        }
        if r.code == 530 {
            return (
                Outcome::Failed,
                format!(
                    "MAIL refused: {r} (a private connection: give --auth-user and --password-file for the user bound to our certificate)"
                ),
            );
        }
    }
    if let Some(e) = rec
        .replies_to("RCPT")
        .find(|e| mpc_refusal(e.reply.code, &e.reply.text()))
    {
        return (
            Outcome::PolicyRefused,
            format!("{} refused: {}", e.command, e.reply),
        );
    }
    if let Some(p) = policy
        && p.our_mpc == "deny"
    {
        return (
            Outcome::PolicyRefused,
            format!(
                "the server's published MPC policy denies {}: not sent (a relay would bounce it, not retry)",
                p.mpc
            ),
        );
    }
    if let Err(f) = result {
        return (Outcome::Failed, f.to_string());
    }
    if rec.reply_to("EHLO").is_none_or(|r| r.code != 250) {
        return (Outcome::Failed, "no EHLO reply".into());
    }
    let refused: Vec<String> = dispositions
        .iter()
        .filter_map(|(r, d)| match d {
            Disposition::Delivered(_) => None,
            Disposition::Failed(t) | Disposition::Deferred(t) => Some(format!("{r}: {t}")),
        })
        .collect();
    if !refused.is_empty() {
        return (Outcome::Failed, format!("refused: {}", refused.join("; ")));
    }
    let what = match (dispositions.is_empty(), send) {
        (true, _) => "EHLO accepted (no recipient given: MAIL and RCPT not tried)",
        (false, false) => "MAIL and RCPT accepted (nothing sent; --send sends a message)",
        (false, true) => "message accepted",
    };
    (Outcome::Accepted, what.to_string())
}

async fn probe(args: &ProbeArgs, s: Settings) -> Report {
    // DNS tries are bounded by --timeout too (at most 5 s each, two tries).
    let dns_timeout = args.timeout.min(Duration::from_secs(5));
    let transport: Option<Box<dyn DnsTransport>> = match s.resolver {
        Some(server) => HickoryTransport::new(&[server], dns_timeout, 2)
            .ok()
            .map(|t| Box::new(t) as Box<dyn DnsTransport>),
        None => HickoryTransport::from_system(dns_timeout, 2)
            .ok()
            .map(|t| Box::new(t) as Box<dyn DnsTransport>),
    };
    let dns = transport.as_deref();
    let t = targets(&args.target, dns).await;
    let recipients = if args.to.is_empty() && t.srv_name.is_some() {
        vec![format!("postmaster@{}", normalize(&args.target))]
    } else {
        args.to.clone()
    };
    let mut report = Report {
        target: args.target.clone(),
        srv_name: t.srv_name.clone(),
        srv: t.srv.clone(),
        srv_error: t.srv_error.clone(),
        client_certificate: Some(s.cert.display().to_string()),
        ehlo: s.ehlo.clone(),
        mpc: s.mpc.to_string(),
        send: args.send,
        attempts: Vec::new(),
        outcome: Outcome::ConnectFailed,
        exit_code: 0,
        summary: String::new(),
    };
    if let Some(none) = &t.none {
        report.outcome = if t.srv_error.is_some() && t.srv.is_empty() {
            Outcome::Failed
        } else {
            Outcome::ConnectFailed
        };
        report.summary = none.clone();
    }
    for (host, addr) in &t.hops {
        let a = attempt(args, &s, dns, host, *addr, &recipients).await;
        report.outcome = a.outcome;
        report.summary = format!("{}: {}", a.host, a.detail);
        let stop = a.outcome != Outcome::ConnectFailed;
        report.attempts.push(a);
        if stop {
            break;
        }
    }
    if report.attempts.len() > 1 && report.outcome == Outcome::ConnectFailed {
        report.summary = format!("no target could be connected to; last: {}", report.summary);
    }
    report.exit_code = report.outcome.exit_code();
    report
}

#[cfg(test)]
mod tests;
