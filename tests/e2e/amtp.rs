//! AMTP end to end: the relay binary with an `amtp` listener, a real DNS server in the test
//! process (PTR/A records for many 127.0.0.x hosts), public/private/untrusted CAs made with
//! rcgen, and clients that each bind their own loopback address and present their own
//! certificate.

use crate::dns::{self, TestDns};
use crate::harness::{Client, Relay};
use crate::pki::{ClientCert, TestCa, self_signed};
use base64::Engine;

/// Hosts 127.0.0.{10..10+HOSTS} are hostN.amtp.test; 127.0.0.1 is interop.amtp.test.
const HOSTS: u8 = 16;

struct Env {
    public: TestCa,
    private: TestCa,
    _dns: Option<TestDns>,
    relay: Relay,
}

fn host_ip(i: u8) -> String {
    format!("127.0.0.{}", 10 + i)
}

fn host_name(i: u8) -> String {
    format!("host{i}.amtp.test")
}

/// Start DNS (unless `dns_override` names a server to use instead), write the CAs, start the
/// relay with an AMTP listener and `amtp_extra` lines appended to its `[amtp]` section.
fn env(mpc_policy: &str, amtp_extra: &str, dns_override: Option<std::net::SocketAddr>) -> Env {
    let public = TestCa::new("Test Public AMTP CA");
    let private = TestCa::new("Test ISP Customer CA");
    let mut ptr: Vec<(u8, String)> = (0..HOSTS).map(|i| (10 + i, host_name(i))).collect();
    ptr.push((1, "interop.amtp.test".into()));
    let ptr_refs: Vec<(u8, &str)> = ptr.iter().map(|(o, n)| (*o, n.as_str())).collect();
    let dns = dns_override.is_none().then(|| dns::start(&ptr_refs));
    let dns_addr = dns_override.unwrap_or_else(|| dns.as_ref().unwrap().addr);
    let scratch = tempfile::tempdir().unwrap().keep();
    let public_path = public.write(&scratch.join("public-ca.pem"));
    let private_path = private.write(&scratch.join("private-ca.pem"));
    let config = format!(
        r#"
{server}
[delivery]
enabled = false

[[listener]]
name = "amtp"
role = "amtp"
address = "127.0.0.1:0"

[amtp]
public_ca = "{}"
private_ca = ["{}"]
mpc_policy = "{mpc_policy}"
relay_domains = ["customer.test", "kids.test"]
auth_bindings = {{ dev = ["laptop.customer.test"] }}
{amtp_extra}

[[amtp.rule]]
recipient_domain = "kids.test"
deny = ["com/*"]

[resolver]
servers = ["{dns_addr}"]
timeout = "1s"
attempts = 1
"#,
        public_path.display(),
        private_path.display(),
        server = crate::harness::SERVER,
    );
    let relay = Relay::start_config(&config);
    Env {
        public,
        private,
        _dns: dns,
        relay,
    }
}

impl Env {
    fn connect(&self, source: &str, cert: Option<&ClientCert>) -> Option<Client> {
        Client::amtp(
            self.relay.addr("amtp"),
            source,
            &self.relay.ca(),
            cert.map(|c| (c.cert_pem.as_str(), c.key_pem.as_str())),
        )
    }

    /// Host i, its own certificate, greeted with EHLO.
    fn host(&self, i: u8) -> Client {
        let cert = self.public.client(&host_name(i), 2020, 2099);
        let mut c = self.connect(&host_ip(i), Some(&cert)).expect("handshake");
        c.expect(&format!("EHLO {}", host_name(i)), 250);
        c
    }
}

fn send(c: &mut Client, mail: &str, rcpt: &str, body: &str) -> amtp_proto::Reply {
    c.expect(mail, 250);
    c.expect(rcpt, 250);
    c.expect("DATA", 354);
    c.write(body.as_bytes());
    c.write(b"\r\n.\r\n");
    c.read_reply().unwrap()
}

#[test]
fn valid_sessions_from_many_hosts_are_queued() {
    let e = env("DENY=com/optout", "", None);
    for i in 0..HOSTS {
        let cert = e.public.client(&host_name(i), 2020, 2099);
        let mut c = e.connect(&host_ip(i), Some(&cert)).expect("handshake");
        assert!(c.greeting.text().contains("relay.test"), "{}", c.greeting);
        let ehlo = c.expect(&format!("EHLO {}", host_name(i).to_uppercase()), 250);
        assert!(
            ehlo.lines.contains(&"MPC DENY=com/optout".to_string()),
            "{ehlo:?}"
        );
        assert!(
            !ehlo
                .lines
                .iter()
                .any(|l| l.starts_with("AUTH") || l == "STARTTLS"),
            "public: no AUTH, no STARTTLS: {ehlo:?}"
        );
        let r = send(
            &mut c,
            "MAIL FROM:<sender@amtp.test> MPC=per/individual",
            "RCPT TO:<bob@example.test>",
            &format!("Subject: from host {i}\r\nMessage-ID: <{i}@amtp.test>\r\n\r\nhello\r\n"),
        );
        assert_eq!(r.code, 250, "{r}");
        c.expect("QUIT", 221);
    }
    assert_eq!(e.relay.queued(), usize::from(HOSTS));
    let show = e.relay.show_first();
    assert!(
        show.contains("origin:       amtp-public") && show.contains("mpc:          per/individual"),
        "{show}"
    );
    assert!(
        show.contains("amtp public identity=host0.amtp.test mpc=per/individual"),
        "Received records identity and MPC: {show}"
    );
}

fn reloads_logged(relay: &Relay) -> usize {
    relay
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("configuration reloaded"))
        .count()
}

fn revocations_logged(relay: &Relay) -> usize {
    relay
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("tls-handshake-failed") && l.contains("Revoked"))
        .count()
}

#[test]
fn returning_peers_resume_and_a_crl_added_by_reload_refuses_them() {
    let crl = tempfile::tempdir().unwrap().keep().join("peers.crl.pem");
    // A CRL file exists from the start (from another CA: it revokes nobody here);
    // `ticket_lifetime` is the default.
    std::fs::write(&crl, TestCa::new("Another CA").crl(&[])).unwrap();
    let e = env("", &format!("crl = [\"{}\"]", crl.display()), None);
    let (revoked, kept) = (
        e.public.client(&host_name(1), 2020, 2099),
        e.public.client(&host_name(2), 2020, 2099),
    );
    let ca_path = e.relay.ca();
    let revoked_tls = Client::amtp_config(&ca_path, (&revoked.cert_pem, &revoked.key_pem));
    let kept_tls = Client::amtp_config(&ca_path, (&kept.cert_pem, &kept.key_pem));
    let session = |source: &str, tls: &std::sync::Arc<rustls::ClientConfig>| {
        Client::amtp_with(e.relay.addr("amtp"), source, tls.clone())
    };

    for (i, tls) in [(1, &revoked_tls), (2, &kept_tls)] {
        let mut first = session(&host_ip(i), tls).expect("full handshake");
        assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
        // A full handshake keeps the post-quantum hybrid; a resumed one (`resumption_kx`
        // default) uses x25519, its keys still descending from the hybrid through the ticket.
        assert_eq!(first.kx_group(), Some(rustls::NamedGroup::X25519MLKEM768));
        first.expect(&format!("EHLO {}", host_name(i)), 250);
        first.expect("QUIT", 221);
        let mut again = session(&host_ip(i), tls).expect("resumed handshake");
        assert_eq!(again.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        assert_eq!(again.kx_group(), Some(rustls::NamedGroup::X25519));
        // The identity check still runs on a resumed session: EHLO must name the certificate.
        again.expect(&format!("EHLO {}", host_name(i + 1)), 504);
        again.expect(&format!("EHLO {}", host_name(i)), 250);
        again.expect("QUIT", 221);
    }
    // From another address (whose PTR names another host), the resumed certificate is refused.
    let mut elsewhere = session(&host_ip(5), &kept_tls).expect("resumed handshake");
    assert_eq!(
        elsewhere.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    elsewhere.expect(&format!("EHLO {}", host_name(2)), 504);

    // Reload with a CRL that revokes host1.
    std::fs::write(&crl, e.public.crl(&[&revoked])).unwrap();
    e.relay.signal("HUP");
    assert!(
        crate::harness::wait_until(10, || reloads_logged(&e.relay) >= 1),
        "no reload"
    );
    // host1 still holds a valid ticket; resuming is refused exactly as a full handshake is.
    assert!(
        session(&host_ip(1), &revoked_tls).is_none(),
        "a revoked peer must not resume"
    );
    let fresh = Client::amtp_config(&ca_path, (&revoked.cert_pem, &revoked.key_pem));
    assert!(session(&host_ip(1), &fresh).is_none());
    assert!(
        crate::harness::wait_until(5, || revocations_logged(&e.relay) >= 2),
        "both refusals are certificate revocations"
    );
    // host2 resumes across the reload (its ticket's chain passes the new CRL).
    let mut c = session(&host_ip(2), &kept_tls).expect("resumed after reload");
    assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    c.expect(&format!("EHLO {}", host_name(2)), 250);
    c.expect("QUIT", 221);
}

#[test]
fn handshakes_without_an_acceptable_certificate_fail() {
    let e = env("", "", None);
    let untrusted = TestCa::new("Untrusted CA");
    let cases: Vec<(&str, Option<ClientCert>)> = vec![
        ("no certificate", None),
        ("expired", Some(e.public.client(&host_name(0), 2020, 2021))),
        (
            "not yet valid",
            Some(e.public.client(&host_name(0), 2090, 2099)),
        ),
        (
            "untrusted CA",
            Some(untrusted.client(&host_name(0), 2020, 2099)),
        ),
        ("self-signed", Some(self_signed(&host_name(0)))),
    ];
    for (what, cert) in cases {
        assert!(
            e.connect(&host_ip(0), cert.as_ref()).is_none(),
            "{what}: the handshake must fail"
        );
    }
    assert!(e.relay.logged(&["tls-handshake-failed"]));
    // The relay still serves a good host.
    let mut c = e.host(0);
    c.expect("QUIT", 221);
}

#[test]
fn identity_mismatches_get_504_and_three_strikes_close() {
    let e = env("", "", None);
    // Certificate of host1 from host0's address: certificate name != PTR.
    let cert1 = e.public.client(&host_name(1), 2020, 2099);
    let mut c = e.connect(&host_ip(0), Some(&cert1)).unwrap();
    assert_eq!(
        c.expect(&format!("EHLO {}", host_name(1)), 504).to_string(),
        "504 5.7.1 Authentication failed"
    );
    // EHLO != certificate (from the right address).
    let cert0 = e.public.client(&host_name(0), 2020, 2099);
    let mut c2 = e.connect(&host_ip(0), Some(&cert0)).unwrap();
    c2.expect(&format!("EHLO {}", host_name(5)), 504);
    c2.expect(&format!("EHLO {}", host_name(0)), 250);
    // No PTR record for the address.
    let nohost = e.public.client("nohost.amtp.test", 2020, 2099);
    let mut c3 = e.connect("127.0.0.200", Some(&nohost)).unwrap();
    c3.expect("EHLO nohost.amtp.test", 504);
    // HELO is never accepted, and never suggested.
    c3.expect("HELO nohost.amtp.test", 504);
    assert_eq!(
        c3.expect("MAIL FROM:<a@nohost.amtp.test> MPC=per/individual", 503)
            .to_string(),
        "503 5.5.1 Send EHLO first"
    );
    // Third failed EHLO on the first connection closes it.
    c.expect(&format!("EHLO {}", host_name(1)), 504);
    c.expect(&format!("EHLO {}", host_name(1)), 504);
    assert!(c.read_reply().is_none(), "closed after three failed EHLOs");
    assert!(e.relay.logged(&["AMTP identity refused", "127.0.0.10"]));
}

#[test]
fn dns_failure_is_temporary_454_never_5xx() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let e = env("", "", Some(silent.local_addr().unwrap()));
    let cert = e.public.client(&host_name(0), 2020, 2099);
    let mut c = e.connect(&host_ip(0), Some(&cert)).unwrap();
    let r = c.expect(&format!("EHLO {}", host_name(0)), 454);
    assert_eq!(r.status.unwrap().to_string(), "4.7.0");
}

#[test]
fn mail_policy_codes_and_relay_rules() {
    let e = env("DENY=com/optout", "rate_limit_per_minute = 5", None);
    let mut c = e.host(2);
    let refuse = |c: &mut Client, line: &str, code: u16, text: &str| {
        let r = c.expect(line, code);
        assert!(r.to_string().contains(text), "{line} -> {r}");
    };
    refuse(
        &mut c,
        "MAIL FROM:<a@amtp.test>",
        550,
        "5.7.1 MPC parameter required",
    );
    refuse(
        &mut c,
        "MAIL FROM:<a@amtp.test> MPC=com/optin MPC=com/optin",
        501,
        "5.5.4",
    );
    refuse(&mut c, "MAIL FROM:<a@amtp.test> MPC=comoptin", 501, "5.5.4");
    refuse(
        &mut c,
        "MAIL FROM:<a@amtp.test> MPC=foo/bar",
        550,
        "5.7.1 MPC policy violation",
    );
    refuse(
        &mut c,
        "MAIL FROM:<a@amtp.test> MPC=mpc/optin",
        550,
        "5.7.1 MPC policy violation",
    );
    refuse(
        &mut c,
        "MAIL FROM:<a@amtp.test> MPC=com/optout",
        550,
        "5.7.1 MPC policy violation",
    );
    // Unadvertised per-recipient rule, and public -> public relay.
    c.expect("MAIL FROM:<a@amtp.test> MPC=com/optin", 250);
    refuse(
        &mut c,
        "RCPT TO:<child@kids.test>",
        550,
        "5.7.1 MPC policy violation",
    );
    refuse(
        &mut c,
        "RCPT TO:<someone@remote.test>",
        550,
        "5.7.1 Relaying denied",
    );
    c.expect("RCPT TO:<customer@customer.test>", 250);
    c.expect("RSET", 250);
    c.expect("MAIL FROM:<a@amtp.test> MPC=per/individual", 250);
    c.expect("RCPT TO:<child@kids.test>", 250);
    // A message that already carries an MPC header is refused after DATA.
    c.expect("DATA", 354);
    c.write(b"Subject: x\r\nmpc: com/optin\r\n\r\nbody\r\n.\r\n");
    let r = c.read_reply().unwrap();
    assert_eq!(
        (r.code, r.text()),
        (550, "Message already carries an MPC header".to_string()),
        "{r}"
    );
    // Rate limit: accepted MAILs count (2 so far); 5 per minute per identity, then 451 4.7.1.
    c.expect("RSET", 250);
    for _ in 0..3 {
        c.expect("MAIL FROM:<a@amtp.test> MPC=per/individual", 250);
        c.expect("RSET", 250);
    }
    let r = c.expect("MAIL FROM:<a@amtp.test> MPC=per/individual", 451);
    assert_eq!(r.status.unwrap().to_string(), "4.7.1");
    // Another identity is not limited.
    let mut other = e.host(3);
    other.expect("MAIL FROM:<a@amtp.test> MPC=per/individual", 250);
    assert_eq!(e.relay.queued(), 0);
}

#[test]
fn mpc_individual_is_accepted_under_deny_all() {
    let e = env("DENY=*/*", "", None);
    let mut c = e.host(4);
    let ehlo = c.expect("NOOP", 250);
    assert_eq!(ehlo.code, 250);
    c.expect("MAIL FROM:<a@amtp.test> MPC=com/optin", 550);
    let r = send(
        &mut c,
        "MAIL FROM:<a@amtp.test> MPC=mpc/individual",
        "RCPT TO:<bob@example.test>",
        "Subject: about your MPC\r\n\r\nx\r\n",
    );
    assert_eq!(r.code, 250, "{r}");
}

#[test]
fn private_clients_must_authenticate_as_their_bound_user() {
    let e = env("", "", None);
    let plain =
        |u: &str, p: &str| base64::engine::general_purpose::STANDARD.encode(format!("\0{u}\0{p}"));
    let pw = e.relay.dev_password();
    // Private CA certificate, no PTR needed: certificate name = EHLO.
    let laptop = e.private.client("laptop.customer.test", 2020, 2099);
    let mut c = e.connect("127.0.0.150", Some(&laptop)).unwrap();
    c.expect("EHLO other.customer.test", 504);
    let ehlo = c.expect("EHLO laptop.customer.test", 250);
    assert!(
        ehlo.lines.iter().any(|l| l.starts_with("AUTH PLAIN")),
        "{ehlo:?}"
    );
    c.expect("MAIL FROM:<dev@customer.test> MPC=per/individual", 530);
    c.expect(&format!("AUTH PLAIN {}", plain("dev", &pw)), 235);
    // Private connections may relay outward.
    let r = send(
        &mut c,
        "MAIL FROM:<dev@customer.test> MPC=per/individual",
        "RCPT TO:<friend@remote.test>",
        "Subject: from the road\r\n\r\nhi\r\n",
    );
    assert_eq!(r.code, 250, "{r}");
    c.expect("QUIT", 221);
    let show = e.relay.show_first();
    assert!(show.contains("origin:       amtp-private"), "{show}");
    // A private certificate whose user binding does not include it.
    let desktop = e.private.client("desktop.customer.test", 2020, 2099);
    let mut d = e.connect("127.0.0.151", Some(&desktop)).unwrap();
    d.expect("EHLO desktop.customer.test", 250);
    d.expect(&format!("AUTH PLAIN {}", plain("dev", &pw)), 535);
    d.expect("MAIL FROM:<dev@customer.test> MPC=per/individual", 530);
}

#[test]
fn interop_with_openssl_s_client_and_swaks() {
    let e = env("", "", None);
    let dir = tempfile::tempdir().unwrap();
    let cert = e.public.client("interop.amtp.test", 2020, 2099);
    let (cert_path, key_path) = cert.write(dir.path(), "interop");
    let addr = e.relay.addr("amtp");
    // openssl s_client from 127.0.0.1 (PTR interop.amtp.test): a full session.
    let script = "EHLO interop.amtp.test\nMAIL FROM:<a@amtp.test> MPC=per/individual\nRCPT TO:<bob@example.test>\nDATA\nSubject: openssl\n\nsent by openssl s_client\n.\nQUIT\n";
    let out = run_with_stdin(
        std::process::Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-crlf",
                "-connect",
                &addr.to_string(),
                "-CAfile",
            ])
            .arg(e.relay.ca())
            .arg("-cert")
            .arg(&cert_path)
            .arg("-key")
            .arg(&key_path),
        script,
    );
    assert!(
        out.contains("250 2.0.0 Ok: queued"),
        "openssl s_client session:\n{out}"
    );
    // swaks: mutual TLS and the identity check pass; swaks cannot add MPC= to MAIL, so the
    // relay answers 550 5.7.1 MPC parameter required — proof that it got that far.
    let out = run_with_stdin(
        std::process::Command::new("swaks")
            .args([
                "--server",
                &addr.ip().to_string(),
                "--port",
                &addr.port().to_string(),
                "--tls-on-connect",
                "--tls-verify",
                "--tls-ca-path",
            ])
            .arg(e.relay.ca())
            .arg("--tls-cert")
            .arg(&cert_path)
            .arg("--tls-key")
            .arg(&key_path)
            .args([
                "--ehlo",
                "interop.amtp.test",
                "--from",
                "a@amtp.test",
                "--to",
                "bob@example.test",
            ]),
        "",
    );
    assert!(out.contains("MPC DENY") || out.contains("250 "), "{out}");
    assert!(
        out.contains("550 5.7.1 MPC parameter required"),
        "swaks session:\n{out}"
    );
    assert_eq!(e.relay.queued(), 1);
}

fn run_with_stdin(cmd: &mut std::process::Command, input: &str) -> String {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tool installed (.ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
