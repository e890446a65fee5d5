//! Checks that read the files a configuration names — our certificate and key, the AMTP CA
//! sets, the users file — and the rules that need them, so that `check-config`, `serve` and a
//! reload refuse the same things, with the field and the line, before anything starts.
//!
//! Errors: a certificate or key that does not parse, a key that does not match its
//! certificate, an expired server certificate, one that is not X.509 version 3, a CA in both
//! the public and a private AMTP set, `auth_bindings` without a users file or naming an
//! unknown user, a `[logging] level` word that is not a level. Warnings: the certificate
//! expires within 14 days, `hostname` is not among its names, more connection workers than
//! cores.
//!
//! Every finding is collected (not only the first), in the order of the file.

use crate::config::{Config, line_of};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::Path;

/// How soon before expiry the server certificate is warned about.
const EXPIRY_WARNING_DAYS: i64 = 14;

/// Error or warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// `check-config` exits 64; `serve` and reload refuse.
    Error,
    /// Reported; the configuration is used.
    Warning,
}

/// One problem, naming where.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// The file.
    pub origin: String,
    /// The field, e.g. `tls.certificate`.
    pub field: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong, in the operator's words.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "config {kind} in {}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        write!(f, ": field `{}`: {}", self.field, self.message)
    }
}

/// Everything found, in file order.
#[derive(Debug, Default)]
pub struct Report {
    /// Errors and warnings.
    pub findings: Vec<Finding>,
}

impl Report {
    /// The errors.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
    }

    /// Every error, one per line, as `check-config` prints them.
    pub fn error_text(&self) -> String {
        self.errors()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

struct Checker<'a> {
    config: &'a Config,
    report: Report,
}

impl Checker<'_> {
    fn add(&mut self, severity: Severity, section: &str, key: &str, message: String) {
        let line = line_of(&self.config.text, section, None, Some(key))
            .or_else(|| line_of(&self.config.text, section, None, None));
        self.report.findings.push(Finding {
            severity,
            origin: self.config.origin.clone(),
            field: format!("{section}.{key}"),
            line,
            message,
        });
    }
}

/// Run every check on a parsed configuration. Files that `generate_dev_certificate` or
/// `create_dev_user` will write at first start are checked only once they exist.
pub fn check(config: &Config) -> Report {
    let mut c = Checker {
        config,
        report: Report::default(),
    };
    check_tls(&mut c);
    check_logging(&mut c);
    check_pools(&mut c);
    check_amtp(&mut c);
    let text = &config.text;
    c.report
        .findings
        .sort_by_key(|f| f.line.unwrap_or(text.len()));
    c.report
}

fn check_tls(c: &mut Checker<'_>) {
    let Some((cert_path, key_path)) = c.config.tls_files.clone() else {
        return;
    };
    if !cert_path.exists() && c.config.file.tls.generate_dev_certificate {
        return;
    }
    let certs = read_certificates(&cert_path);
    if let Err(why) = &certs {
        c.add(
            Severity::Error,
            "tls",
            "certificate",
            format!("our server certificate {}: {why}", cert_path.display()),
        );
    }
    let key = match PrivateKeyDer::from_pem_file(&key_path) {
        Ok(k) => Some(k),
        Err(e) => {
            c.add(
                Severity::Error,
                "tls",
                "private_key",
                format!(
                    "our private key {} cannot be read: {}",
                    key_path.display(),
                    pem_problem(&e)
                ),
            );
            None
        }
    };
    let Ok(certs) = certs else {
        return;
    };
    let Ok((_, leaf)) = x509_parser::parse_x509_certificate(&certs[0]) else {
        c.add(
            Severity::Error,
            "tls",
            "certificate",
            format!(
                "our server certificate {} is not a valid X.509 certificate",
                cert_path.display()
            ),
        );
        return;
    };
    if leaf.version() != x509_parser::x509::X509Version::V3 {
        c.add(
            Severity::Error,
            "tls",
            "certificate",
            format!(
                "our server certificate {} is an X.509 version {} certificate; TLS clients accept only version 3 (with subjectAltName names)",
                cert_path.display(),
                leaf.version().0 + 1
            ),
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let not_after = leaf.validity().not_after;
    let left = not_after.timestamp() - now;
    if left <= 0 {
        c.add(
            Severity::Error,
            "tls",
            "certificate",
            format!(
                "our server certificate {} expired on {not_after}",
                cert_path.display()
            ),
        );
    } else if left < EXPIRY_WARNING_DAYS * 86_400 {
        c.add(
            Severity::Warning,
            "tls",
            "certificate",
            format!(
                "our server certificate {} expires on {not_after}, in {} day(s): renew it",
                cert_path.display(),
                left / 86_400
            ),
        );
    }
    let hostname = c.config.file.server.hostname.to_ascii_lowercase();
    let names = certificate_names(&leaf);
    if !names.iter().any(|n| name_matches(n, &hostname)) {
        c.add(
            Severity::Warning,
            "tls",
            "certificate",
            format!(
                "server.hostname {hostname:?} is not among our certificate's names ({}): clients that verify will refuse it",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        );
    }
    if let Some(key) = key {
        match rustls::crypto::aws_lc_rs::sign::any_supported_type(&key) {
            Err(_) => c.add(
                Severity::Error,
                "tls",
                "private_key",
                format!(
                    "our private key {} is of a type TLS cannot use (expected RSA, ECDSA P-256/P-384 or Ed25519)",
                    key_path.display()
                ),
            ),
            Ok(signer) => {
                // Compared with our own parse of the leaf, so that a certificate TLS would
                // refuse for another reason (reported above) is not also called a mismatch.
                let mismatch = signer
                    .public_key()
                    .is_some_and(|spki| spki.as_ref() != leaf.public_key().raw);
                if mismatch {
                    c.add(
                        Severity::Error,
                        "tls",
                        "private_key",
                        format!(
                            "our private key {} does not belong to our server certificate {}",
                            key_path.display(),
                            cert_path.display()
                        ),
                    );
                }
            }
        }
    }
}

/// PEM certificates of a file, or why not (in the operator's words).
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .map_err(|e| format!("cannot be read: {}", pem_problem(&e)))?;
    if certs.is_empty() {
        return Err("contains no PEM certificate (\"-----BEGIN CERTIFICATE-----\")".into());
    }
    Ok(certs)
}

fn pem_problem(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PEM item of the expected kind found".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// DNS names of a certificate (subjectAltName, else the subject CN), lower case.
fn certificate_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    names
}

/// `pattern` (possibly `*.example.com`) covers `host`.
fn name_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        None => pattern.trim_end_matches('.') == host,
    }
}

/// `[logging] level`: tracing accepts any word as a target name, so `level = "verbose"`
/// parses, enables nothing we log, and the relay goes silent. A bare word must be a level;
/// a module filter is written `target=level`.
fn check_logging(c: &mut Checker<'_>) {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let level = c.config.file.logging.level.clone();
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (target, lvl) = match directive.rsplit_once('=') {
            Some((t, l)) => (Some(t), l),
            None => (None, directive),
        };
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(lvl.trim())) {
            let message = match target {
                None => format!(
                    "{directive:?} is not a log level: use one of trace, debug, info, warn, error, off (or target=level, e.g. \"amtp_actors=debug,info\")"
                ),
                Some(t) => format!(
                    "{lvl:?} (for {t:?}) is not a log level: use one of trace, debug, info, warn, error, off"
                ),
            };
            c.add(Severity::Error, "logging", "level", message);
        }
    }
}

fn check_pools(c: &mut Checker<'_>) {
    let workers = c.config.file.pools.connection_workers;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if workers > cores {
        c.add(
            Severity::Warning,
            "pools",
            "connection_workers",
            format!(
                "{workers} connection workers on {cores} core(s): workers are threads, more than the cores only adds switching (0 = one per core)"
            ),
        );
    }
}

fn check_amtp(c: &mut Checker<'_>) {
    let (Some(amtp), Some(files)) = (&c.config.file.amtp, &c.config.amtp_files) else {
        return;
    };
    // A CA in both the public and a private set.
    if let Some(public) = files.public_ca.as_ref().filter(|p| p.is_file()) {
        let public_set = read_certificates(public).unwrap_or_default();
        for private in files.private_ca.iter().filter(|p| p.is_file()) {
            for cert in read_certificates(private).unwrap_or_default() {
                if public_set.contains(&cert) {
                    let subject = x509_parser::parse_x509_certificate(&cert)
                        .map_or_else(|_| "?".to_string(), |(_, x)| x.subject().to_string());
                    c.add(
                        Severity::Error,
                        "amtp",
                        "private_ca",
                        format!(
                            "CA {subject} is in both the public set ({}) and a private set ({}); a public CA must not also be private",
                            public.display(),
                            private.display()
                        ),
                    );
                }
            }
        }
    }
    // auth_bindings need the users they name.
    if amtp.auth_bindings.is_empty() {
        return;
    }
    let mut bound: Vec<&String> = amtp.auth_bindings.keys().collect();
    bound.sort();
    match &c.config.users_file {
        None => c.add(
            Severity::Error,
            "amtp",
            "auth_bindings",
            "auth_bindings name users, but there is no users file: set [auth] users_file (private clients would get 535 for every AUTH)".into(),
        ),
        Some(p) if !p.exists() && c.config.file.server.create_dev_user => {
            // Written at first start with user `dev`.
            for user in bound.into_iter().filter(|u| *u != "dev") {
                c.add(
                    Severity::Error,
                    "amtp",
                    "auth_bindings",
                    format!("user {user:?} is not in the users file (only `dev` is created at first start)"),
                );
            }
        }
        Some(p) => {
            if let Ok(users) = amtp_actors::auth::users::UserDb::load(p) {
                for user in bound.into_iter().filter(|u| !users.contains(u)) {
                    c.add(
                        Severity::Error,
                        "amtp",
                        "auth_bindings",
                        format!(
                            "user {user:?} is not in the users file {}: its private clients could never authenticate",
                            p.display()
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("relay.test", "relay.test"));
        assert!(name_matches("*.example.com", "mx1.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("other.test", "relay.test"));
    }
}
