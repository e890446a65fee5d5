//! `amtp-relay probe` against the real relay: real DNS (SRV, A and PTR records in the
//! in-process server), real mutual TLS with rcgen certificates, the probe binding its own
//! 127.0.0.x source address. The relay resolves with one DNS server; the probe with a second
//! one started after the relay, which publishes the SRV records naming the relay's real port.

use crate::dns::{self, TestDns};
use crate::harness::{BIN, Relay};
use crate::pki::{ClientCert, TestCa};
use std::path::PathBuf;
use std::process::Command;

/// PTR/A records: 127.0.0.1 is the relay, .13 and .14 are two client hosts.
const PTR: &[(u8, &str)] = &[
    (1, "relay.amtp.test"),
    (13, "host3.amtp.test"),
    (14, "host4.amtp.test"),
];

struct Env {
    public: TestCa,
    dir: PathBuf,
    _relay_dns: TestDns,
    probe_dns: TestDns,
    relay: Relay,
}

/// A relay whose AMTP listener serves a certificate for relay.amtp.test from the public CA,
/// publishes `DENY=com/optout`, and refuses com/* for kids.test (unadvertised).
fn env() -> Env {
    let public = TestCa::new("Probe Test Public CA");
    let relay_dns = dns::start(PTR);
    let dir = tempfile::tempdir().unwrap().keep();
    let ca = public.write(&dir.join("public-ca.pem"));
    let (cert, key) = public
        .host(&["relay.amtp.test"], 2020, 2099)
        .write(&dir, "relay");
    let config = format!(
        r#"
[server]
hostname = "relay.amtp.test"
data_dir = "data"
local_domains = ["example.test", "kids.test"]
create_dev_user = true
shutdown_grace = "2s"

[tls]
certificate = "{cert}"
private_key = "{key}"

[delivery]
enabled = false

[[listener]]
name = "mx"
role = "mx"
address = "127.0.0.1:0"

[[listener]]
name = "submission"
role = "submission"
address = "127.0.0.1:0"

[[listener]]
name = "submissions"
role = "submissions"
address = "127.0.0.1:0"

[[listener]]
name = "amtp"
role = "amtp"
address = "127.0.0.1:0"

[amtp]
public_ca = "{ca}"
mpc_policy = "DENY=com/optout"

[[amtp.rule]]
recipient_domain = "kids.test"
deny = ["com/*"]

[resolver]
servers = ["{dns}"]
timeout = "1s"
attempts = 1
"#,
        cert = cert.display(),
        key = key.display(),
        ca = ca.display(),
        dns = relay_dns.addr,
    );
    let relay = Relay::start_config(&config);
    let port = relay.addr("amtp").port();
    // A port nothing listens on: the first SRV target of `two.amtp.test`.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let probe_dns = dns::start_with(
        PTR,
        &format!(
            "_amtp._tcp.peer IN SRV 10 0 {port} relay.amtp.test.\n\
             down IN A 127.0.0.1\n\
             _amtp._tcp.two IN SRV 10 0 {closed} down.amtp.test.\n\
             _amtp._tcp.two IN SRV 20 0 {port} relay.amtp.test.\n"
        ),
    );
    Env {
        public,
        dir,
        _relay_dns: relay_dns,
        probe_dns,
        relay,
    }
}

struct Probe {
    code: i32,
    out: String,
}

impl Env {
    /// A client identity from `ca` for `name`, written to disk.
    fn identity(&self, ca: &TestCa, name: &str) -> (PathBuf, PathBuf) {
        let c: ClientCert = ca.client(name, 2020, 2099);
        c.write(&self.dir, name)
    }

    /// Run the probe from `source` with `cert` (files), trusting `ca_file`.
    fn probe(
        &self,
        target: &str,
        source: &str,
        cert: &(PathBuf, PathBuf),
        ca_file: &PathBuf,
        extra: &[&str],
    ) -> Probe {
        let out = Command::new(BIN)
            .arg("probe")
            .arg(target)
            .arg("--cert")
            .arg(&cert.0)
            .arg("--key")
            .arg(&cert.1)
            .arg("--ca")
            .arg(ca_file)
            .args(["--source", source, "--timeout", "10s", "--resolver"])
            .arg(self.probe_dns.addr.to_string())
            .args(extra)
            .output()
            .unwrap();
        Probe {
            code: out.status.code().unwrap_or(-1),
            out: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("public-ca.pem")
    }
}

#[test]
fn good_peer_by_srv_shows_the_policy_and_send_is_queued() {
    let e = env();
    let me = e.identity(&e.public, "host3.amtp.test");
    let p = e.probe(
        "peer.amtp.test",
        "127.0.0.13",
        &me,
        &e.ca(),
        &[
            "--send",
            "--from",
            "a@amtp.test",
            "--to",
            "bob@example.test",
        ],
    );
    assert_eq!(p.code, 0, "{}", p.out);
    for needle in [
        "SRV _amtp._tcp.peer.amtp.test",
        "priority 10 weight 0 port",
        "ok   TCP connect from 127.0.0.13",
        "ok   TLS TLSv1_3",
        "[0] subject CN=relay.amtp.test",
        "issuer  CN=Probe Test Public CA",
        "ok   trusted: chains to our trust anchors",
        "ok   certificate name matches the name we connected to (relay.amtp.test)",
        "ok   PTR of 127.0.0.1: relay.amtp.test",
        "> EHLO host3.amtp.test",
        "MPC policy published: MPC DENY=com/optout",
        "-  ALLOW    *     *      (implied first rule)",
        "1  DENY     com   optout",
        "our MPC per/individual: allow",
        "MPC=per/individual",
        "< 250 2.1.5",
        "result: relay.amtp.test: message accepted (exit 0)",
    ] {
        assert!(p.out.contains(needle), "missing {needle:?}:\n{}", p.out);
    }
    let id = p
        .out
        .lines()
        .find_map(|l| l.trim().strip_prefix("queued by the peer as "))
        .unwrap_or_else(|| panic!("no queue id:\n{}", p.out))
        .to_string();
    let (ok, list, err) = e.relay.queue_cli(&["list"]);
    assert!(ok, "{err}");
    assert!(
        list.lines()
            .any(|l| l.starts_with(&id) && l.contains("bob@example.test")),
        "{id} in the queue:\n{list}"
    );
    let (_, show, _) = e.relay.queue_cli(&["show", &id]);
    assert!(show.contains("mpc:          per/individual"), "{show}");
    assert!(
        show.contains("Message-ID: <probe."),
        "the generated test message: {show}"
    );

    // Without --send: MAIL and RCPT answered, RSET, nothing queued. And --json parses.
    let p = e.probe(
        "peer.amtp.test",
        "127.0.0.13",
        &me,
        &e.ca(),
        &["--json", "--to", "bob@example.test"],
    );
    assert_eq!(p.code, 0, "{}", p.out);
    let j: serde_json::Value = serde_json::from_str(&p.out).expect("--json is JSON");
    assert_eq!(j["outcome"], "accepted");
    assert_eq!(j["exit_code"], 0);
    assert_eq!(j["srv"][0]["target"], "relay.amtp.test");
    let a = &j["attempts"][0];
    assert_eq!(a["tls"]["version"], "TLSv1_3");
    assert_eq!(a["trusted"], true);
    assert_eq!(a["server_identity"]["ptr_matches"], true);
    assert_eq!(a["mpc_policy"]["declarations"][0]["verdict"], "DENY");
    assert_eq!(a["mpc_policy"]["declarations"][0]["role"], "com");
    assert_eq!(a["mpc_policy"]["declarations"][0]["class"], "optout");
    let commands: Vec<&str> = a["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["command"].as_str().unwrap())
        .collect();
    assert!(
        commands.contains(&"RCPT TO:<bob@example.test>"),
        "{commands:?}"
    );
    assert!(commands.contains(&"RSET"), "{commands:?}");
    assert!(!commands.contains(&"DATA"), "{commands:?}");
    assert_eq!(e.relay.queued(), 1, "nothing sent without --send");
}

#[test]
fn untrusted_certificates_either_way_are_tls_refusals() {
    let e = env();
    let me = e.identity(&e.public, "host3.amtp.test");
    // We do not trust the relay: the probe trusts another CA only.
    let other = TestCa::new("Some Other CA");
    let other_file = other.write(&e.dir.join("other-ca.pem"));
    let p = e.probe("peer.amtp.test", "127.0.0.13", &me, &other_file, &[]);
    assert_eq!(p.code, 4, "{}", p.out);
    assert!(
        p.out
            .contains("FAIL not trusted: it does not chain to any CA in our trust anchors")
            && p.out.contains("[0] subject CN=relay.amtp.test"),
        "the untrusted chain is shown with the reason:\n{}",
        p.out
    );
    // The relay does not trust us: our certificate is from a CA it does not know.
    let stranger = e.identity(&other, "host3.amtp.test");
    let p = e.probe("peer.amtp.test", "127.0.0.13", &stranger, &e.ca(), &[]);
    assert_eq!(p.code, 4, "{}", p.out);
    assert!(
        p.out
            .contains("the peer refused our certificate (TLS alert"),
        "{}",
        p.out
    );
}

#[test]
fn ptr_mismatch_is_an_identity_refusal() {
    let e = env();
    // host4's certificate from host3's address: certificate name != PTR name.
    let wrong = e.identity(&e.public, "host4.amtp.test");
    let p = e.probe("peer.amtp.test", "127.0.0.13", &wrong, &e.ca(), &[]);
    assert_eq!(p.code, 5, "{}", p.out);
    assert!(
        p.out.contains("< 504 5.7.1 Authentication failed")
            && p.out.contains("the server refused our identity"),
        "{}",
        p.out
    );
    let p = e.probe("peer.amtp.test", "127.0.0.13", &wrong, &e.ca(), &["--json"]);
    let j: serde_json::Value = serde_json::from_str(&p.out).expect("--json is JSON");
    assert_eq!(j["outcome"], "identity-refused");
}

#[test]
fn policy_refusals_exit_6() {
    let e = env();
    let me = e.identity(&e.public, "host3.amtp.test");
    // The relay's unadvertised rule: 550 at RCPT for kids.test.
    let p = e.probe(
        "peer.amtp.test",
        "127.0.0.13",
        &me,
        &e.ca(),
        &["--mpc", "com/optin", "--to", "child@kids.test", "--send"],
    );
    assert_eq!(p.code, 6, "{}", p.out);
    assert!(
        p.out.contains("< 550 5.7.1 MPC policy violation"),
        "{}",
        p.out
    );
    // The published policy denies com/optout: refused without sending MAIL.
    let p = e.probe(
        "peer.amtp.test",
        "127.0.0.13",
        &me,
        &e.ca(),
        &["--mpc", "com/optout", "--to", "bob@example.test", "--send"],
    );
    assert_eq!(p.code, 6, "{}", p.out);
    assert!(
        p.out.contains("our MPC com/optout: deny")
            && p.out.contains("published MPC policy denies com/optout")
            && !p.out.contains("> MAIL"),
        "{}",
        p.out
    );
    assert_eq!(e.relay.queued(), 0);
}

#[test]
fn srv_first_target_down_second_is_tried() {
    let e = env();
    let me = e.identity(&e.public, "host3.amtp.test");
    let p = e.probe(
        "two.amtp.test",
        "127.0.0.13",
        &me,
        &e.ca(),
        &["--to", "bob@example.test"],
    );
    assert_eq!(p.code, 0, "{}", p.out);
    let down = p.out.find("== down.amtp.test").expect(&p.out);
    let up = p.out.find("== relay.amtp.test").expect(&p.out);
    assert!(down < up, "tried in SRV order:\n{}", p.out);
    assert!(p.out[down..up].contains("FAIL TCP connect"), "{}", p.out);
    assert!(p.out.contains("MAIL and RCPT accepted"), "{}", p.out);
    // A target that does not exist at all: connect failed.
    let p = e.probe("127.0.0.1:1", "127.0.0.13", &me, &e.ca(), &[]);
    assert_eq!(p.code, 3, "{}", p.out);
}

#[test]
fn dev_style_private_listener_needs_the_bound_auth_user() {
    // What the embedded default does: the generated dev CA as the only (private) CA, the
    // generated dev client identity, user `dev` bound to it. No DNS involved.
    let relay = Relay::start_config(&format!(
        "{}\n[delivery]\nenabled = false\n\n[[listener]]\nname = \"amtp\"\nrole = \"amtp\"\naddress = \"127.0.0.1:0\"\n\n[amtp]\nprivate_ca = [\"data/tls/ca.pem\"]\nauth_bindings = {{ dev = [\"dev-client.localhost\"] }}\n",
        crate::harness::SERVER
    ));
    let dns = dns::start(&[]);
    let resolver = dns.addr.to_string();
    let tls = relay.data_dir().join("tls");
    let password = relay.data_dir().join("dev-password");
    let run = |extra: &[&str]| {
        let out = Command::new(BIN)
            .arg("probe")
            .arg(relay.addr("amtp").to_string())
            .arg("--cert")
            .arg(tls.join("dev-client.pem"))
            .arg("--key")
            .arg(tls.join("dev-client-key.pem"))
            .arg("--ca")
            .arg(tls.join("ca.pem"))
            .args([
                "--to",
                "bob@example.test",
                "--timeout",
                "10s",
                "--resolver",
                &resolver,
            ])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("> EHLO dev-client.localhost")
            && out.contains("530 5.7.0 Authentication required")
            && out.contains("give --auth-user and --password-file"),
        "{out}"
    );
    let (code, out) = run(&[
        "--auth-user",
        "dev",
        "--password-file",
        password.to_str().unwrap(),
        "--send",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("> AUTH PLAIN ********") && !out.contains(&relay.dev_password()),
        "the password is never printed: {out}"
    );
    assert!(out.contains("queued by the peer as"), "{out}");
    let show = relay.show_first();
    assert!(
        show.contains("origin:       amtp-private")
            && show.contains("amtp private identity=dev-client.localhost"),
        "{show}"
    );
}
