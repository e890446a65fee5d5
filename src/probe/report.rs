//! The probe's findings as data (serialised for `--json`) and as text for people, and the
//! outcome that becomes the exit code.

use super::certs::CertView;
use super::observe::TlsParams;
use serde::Serialize;
use std::fmt::Write as _;

/// How a probe ended; each has its own exit code (documented in docs/AMTP.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The peer accepted: EHLO (and MAIL/RCPT, and with `--send` the message).
    Accepted,
    /// Something else went wrong: DNS, a temporary refusal, a non-policy refusal.
    Failed,
    /// No target could be connected to (or DNS named none).
    ConnectFailed,
    /// The TLS handshake failed: we did not trust the peer, or it refused our certificate.
    TlsRefused,
    /// The peer answered EHLO with 504: it did not accept our identity.
    IdentityRefused,
    /// The peer refused our MPC (550 at MAIL or RCPT, or its published policy denies it).
    PolicyRefused,
}

impl Outcome {
    /// The process exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Accepted => 0,
            Self::Failed => 1,
            Self::ConnectFailed => 3,
            Self::TlsRefused => 4,
            Self::IdentityRefused => 5,
            Self::PolicyRefused => 6,
        }
    }
}

/// One SRV record as published.
#[derive(Debug, Clone, Serialize)]
pub struct SrvRecord {
    /// Priority.
    pub priority: u16,
    /// Weight.
    pub weight: u16,
    /// Port.
    pub port: u16,
    /// Target host.
    pub target: String,
}

/// One declaration of a published MPC policy.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRow {
    /// `ALLOW` or `DENY`.
    pub verdict: String,
    /// Role pattern (`*` for any).
    pub role: String,
    /// Class pattern (`*` for any).
    pub class: String,
}

/// The peer's published MPC policy.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyView {
    /// The EHLO lines it came from.
    pub lines: Vec<String>,
    /// Declarations in order (the last match wins).
    pub declarations: Vec<PolicyRow>,
    /// The implied first rule.
    pub implied: String,
    /// Our `--mpc` under this policy: `allow` or `deny`.
    pub our_mpc: String,
    /// Our `--mpc`.
    pub mpc: String,
    /// Set when the line did not parse.
    pub error: Option<String>,
}

/// The server's identity as we see it (the check it makes of its clients, made of it).
#[derive(Debug, Clone, Serialize)]
pub struct ServerIdentity {
    /// The names its certificate asserts (normalised).
    pub certificate_names: Vec<String>,
    /// The name we connected to (SRV target or the host given), when it is a name.
    pub connected_name: Option<String>,
    /// Whether the certificate carries that name.
    pub name_matches: Option<bool>,
    /// PTR names of its address.
    pub ptr: Vec<String>,
    /// The PTR lookup failed (NXDOMAIN counts as "no PTR", not as a failure).
    pub ptr_error: Option<String>,
    /// Whether a PTR name is a certificate name (what AMTP requires of a public client).
    pub ptr_matches: Option<bool>,
}

/// A command and its reply.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// The command, `greeting`, or `<message>` (the reply after the message).
    pub command: String,
    /// Reply code.
    pub code: u16,
    /// Reply lines, joined by newlines, as received (without codes).
    pub reply: String,
}

/// One connection attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// Host as named (SRV target or given).
    pub host: String,
    /// Address connected to.
    pub address: String,
    /// Our address.
    pub local_address: Option<String>,
    /// Whether TCP connected.
    pub connected: bool,
    /// TLS parameters, when the handshake succeeded.
    pub tls: Option<TlsParams>,
    /// The server's chain, leaf first.
    pub chain: Vec<CertView>,
    /// Whether we trust it.
    pub trusted: Option<bool>,
    /// Why (not).
    pub trust: Option<String>,
    /// The peer refused our certificate (TLS alert).
    pub peer_refused_our_certificate: Option<String>,
    /// The server's identity as seen from here.
    pub server_identity: Option<ServerIdentity>,
    /// The published MPC policy (`null`: none published, every MPC allowed).
    pub mpc_policy: Option<PolicyView>,
    /// Every command and reply.
    pub steps: Vec<Step>,
    /// The queue id from the peer's 250 after the message (`--send`).
    pub queue_id: Option<String>,
    /// The outcome of this attempt.
    pub outcome: Outcome,
    /// The outcome in words.
    pub detail: String,
}

/// The whole probe.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was probed.
    pub target: String,
    /// The SRV name looked up (domain targets).
    pub srv_name: Option<String>,
    /// The SRV records, in the order tried.
    pub srv: Vec<SrvRecord>,
    /// SRV lookup failure.
    pub srv_error: Option<String>,
    /// Our identity: the certificate and EHLO name used.
    pub client_certificate: Option<String>,
    /// EHLO name.
    pub ehlo: String,
    /// The MPC sent.
    pub mpc: String,
    /// Whether a message was sent (`--send`).
    pub send: bool,
    /// Attempts in order.
    pub attempts: Vec<Attempt>,
    /// Final outcome.
    pub outcome: Outcome,
    /// Exit code.
    pub exit_code: u8,
    /// One line for people.
    pub summary: String,
}

fn mark(ok: bool) -> &'static str {
    if ok { "ok  " } else { "FAIL" }
}

/// The report as text, step by step.
pub fn text(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "probe {} (EHLO {}, MPC {})", r.target, r.ehlo, r.mpc);
    if let Some(c) = &r.client_certificate {
        let _ = writeln!(o, "  our certificate: {c}");
    }
    if let Some(name) = &r.srv_name {
        let _ = writeln!(o, "\nSRV {name}");
        if let Some(e) = &r.srv_error {
            let _ = writeln!(o, "  FAIL {e}");
        }
        for (i, s) in r.srv.iter().enumerate() {
            let _ = writeln!(
                o,
                "  {}. priority {} weight {} port {} target {}",
                i + 1,
                s.priority,
                s.weight,
                s.port,
                s.target
            );
        }
    }
    for a in &r.attempts {
        let _ = writeln!(o, "\n== {} ({})", a.host, a.address);
        let _ = writeln!(
            o,
            "  {} TCP connect{}",
            mark(a.connected),
            a.local_address
                .as_ref()
                .map_or(String::new(), |l| format!(" from {l}"))
        );
        if !a.connected {
            let _ = writeln!(o, "       {}", a.detail);
            continue;
        }
        match &a.tls {
            Some(t) => {
                let _ = writeln!(
                    o,
                    "  ok   TLS {} cipher {} key exchange {}",
                    t.version, t.cipher, t.key_exchange
                );
            }
            None => {
                let _ = writeln!(o, "  FAIL TLS handshake");
            }
        }
        if !a.chain.is_empty() {
            let _ = writeln!(o, "  server certificate chain:");
            for (i, c) in a.chain.iter().enumerate() {
                let _ = writeln!(o, "    [{i}] subject {}", c.subject);
                let _ = writeln!(o, "        issuer  {}", c.issuer);
                if !c.names.is_empty() {
                    let _ = writeln!(o, "        names   {}", c.names.join(", "));
                }
                let _ = writeln!(
                    o,
                    "        valid   {} .. {}{}",
                    c.not_before,
                    c.not_after,
                    if c.valid_now { "" } else { "  (NOT valid now)" }
                );
            }
        }
        if let (Some(t), Some(why)) = (a.trusted, &a.trust) {
            let _ = writeln!(o, "  {} {why}", mark(t));
        }
        if let Some(alert) = &a.peer_refused_our_certificate {
            let _ = writeln!(
                o,
                "  FAIL the peer refused our certificate (TLS alert {alert})"
            );
        }
        if let Some(id) = &a.server_identity {
            let _ = writeln!(
                o,
                "  server identity: certificate names {}",
                id.certificate_names.join(", ")
            );
            if let (Some(name), Some(ok)) = (&id.connected_name, id.name_matches) {
                let _ = writeln!(
                    o,
                    "    {} certificate name {} the name we connected to ({name})",
                    mark(ok),
                    if ok { "matches" } else { "does not match" }
                );
            }
            match (&id.ptr_error, id.ptr_matches) {
                (None, Some(ok)) => {
                    let names = &id.ptr;
                    let _ = writeln!(
                        o,
                        "    {} PTR of {}: {} ({})",
                        mark(ok),
                        a.address
                            .rsplit_once(':')
                            .map_or(a.address.as_str(), |x| x.0),
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        },
                        if ok {
                            "a certificate name, as AMTP requires of public hosts"
                        } else {
                            "no certificate name: as a client it would get 504"
                        }
                    );
                }
                (Some(e), _) => {
                    let _ = writeln!(o, "    ?    PTR lookup: {e}");
                }
                _ => {}
            }
        }
        for s in &a.steps {
            let mut lines = s.reply.lines();
            let first = lines.next().unwrap_or("");
            let _ = writeln!(o, "  > {}", s.command);
            let _ = writeln!(o, "  < {} {first}", s.code);
            for l in lines {
                let _ = writeln!(o, "  < {} {l}", s.code);
            }
            if s.command.to_ascii_uppercase().starts_with("EHLO") && s.code == 250 {
                match &a.mpc_policy {
                    None => {
                        let _ = writeln!(o, "  MPC policy: none published (every MPC is allowed)");
                    }
                    Some(p) => policy_table(&mut o, p),
                }
            }
        }
        if let Some(id) = &a.queue_id {
            let _ = writeln!(o, "  queued by the peer as {id}");
        }
    }
    let _ = writeln!(o, "\nresult: {} (exit {})", r.summary, r.exit_code);
    o
}

fn policy_table(o: &mut String, p: &PolicyView) {
    let _ = writeln!(o, "  MPC policy published: {}", p.lines.join(" | "));
    if let Some(e) = &p.error {
        let _ = writeln!(o, "    unparseable: {e}");
        return;
    }
    let _ = writeln!(o, "    #  verdict  role  class");
    let _ = writeln!(
        o,
        "    -  {:<7}  *     *      (implied first rule)",
        p.implied
    );
    for (i, d) in p.declarations.iter().enumerate() {
        let _ = writeln!(
            o,
            "    {}  {:<7}  {:<4}  {}",
            i + 1,
            d.verdict,
            d.role,
            d.class
        );
    }
    let _ = writeln!(
        o,
        "    our MPC {}: {} (the last matching line wins; mpc/individual is always allowed)",
        p.mpc, p.our_mpc
    );
}
