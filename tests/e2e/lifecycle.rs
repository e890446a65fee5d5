//! Life cycle end to end, on the real binary: reload (SIGHUP, `amtp-relay reload`, watched
//! certificate files) without dropping a session, a broken configuration refused while the
//! old one keeps serving, drain and resume, and SIGTERM's 421s.

use crate::harness::{BIN, Client, Relay, SERVER, wait_until};
use crate::metrics::http_get;
use crate::pki::TestCa;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn base() -> String {
    format!("{SERVER}\n[delivery]\nenabled = false\n")
}

/// Rewrite the relay's configuration file and ask it to reload: (success, stdout, stderr).
fn reload_with(relay: &Relay, text: &str) -> (bool, String, String) {
    std::fs::write(relay.config_path(), text).unwrap();
    relay.admin("reload")
}

/// Send a whole message on a greeted session; the final reply.
fn send_message(c: &mut Client) -> amtp_proto::Reply {
    c.expect("MAIL FROM:<a@client.test>", 250);
    c.expect("RCPT TO:<b@example.test>", 250);
    c.expect("DATA", 354);
    c.write(b"Subject: lifecycle\r\n\r\nhello\r\n.\r\n");
    c.read_reply().unwrap()
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

#[test]
fn sighup_reloads_and_never_ends_the_process() {
    let mut relay = Relay::start("");
    let mut open = Client::connect(relay.addr("mx"));
    open.expect("EHLO client.test", 250);
    open.expect("MAIL FROM:<a@client.test>", 250);
    relay.signal("HUP");
    assert!(
        wait_until(10, || reloads_logged(&relay) >= 1),
        "no reload after SIGHUP (exit status {:?})",
        relay.exited()
    );
    relay.signal("HUP");
    assert!(wait_until(10, || reloads_logged(&relay) >= 2));
    assert_eq!(relay.exited(), None, "SIGHUP ended the relay");
    // The session open across both reloads completes.
    open.expect("RCPT TO:<b@example.test>", 250);
    open.expect("DATA", 354);
    open.write(b"Subject: across a reload\r\n\r\nhello\r\n.\r\n");
    assert_eq!(open.read_reply().unwrap().code, 250);
    open.expect("QUIT", 221);
    relay.assert_serving();
    assert_eq!(relay.queued(), 1);
}

fn amtp_config(mpc: &str) -> String {
    format!(
        r#"{}
[[listener]]
name = "amtp"
role = "amtp"
address = "127.0.0.1:0"

[amtp]
private_ca = ["data/tls/ca.pem"]
auth_bindings = {{ dev = ["dev-client.localhost"] }}
mpc_policy = "{mpc}"
"#,
        base()
    )
}

fn amtp_client(relay: &Relay) -> Client {
    let tls = relay.data_dir().join("tls");
    let cert = std::fs::read_to_string(tls.join("dev-client.pem")).unwrap();
    let key = std::fs::read_to_string(tls.join("dev-client-key.pem")).unwrap();
    Client::amtp(
        relay.addr("amtp"),
        "127.0.0.1",
        &relay.ca(),
        Some((&cert, &key)),
    )
    .expect("AMTP handshake")
}

fn mpc_line(c: &mut Client) -> Option<String> {
    let ehlo = c.expect("EHLO dev-client.localhost", 250);
    ehlo.lines.iter().find(|l| l.starts_with("MPC ")).cloned()
}

#[test]
fn a_changed_mpc_policy_appears_in_the_next_ehlo_and_open_sessions_keep_theirs() {
    let relay = Relay::start_config(&amtp_config("DENY=com/optout"));
    let mut before = amtp_client(&relay);
    assert_eq!(
        mpc_line(&mut before).as_deref(),
        Some("MPC DENY=com/optout")
    );
    let (ok, out, err) = reload_with(
        &relay,
        &amtp_config("DENY=com/optout DENY=com/autoresponse"),
    );
    assert!(ok, "reload refused: {err}");
    assert!(out.contains("configuration reloaded"), "{out}");
    let mut after = amtp_client(&relay);
    assert_eq!(
        mpc_line(&mut after).as_deref(),
        Some("MPC DENY=com/optout DENY=com/autoresponse")
    );
    // The session opened before the reload finishes under the policy it started with.
    assert_eq!(
        mpc_line(&mut before).as_deref(),
        Some("MPC DENY=com/optout")
    );
    before.expect("QUIT", 221);
}

/// The leaf certificate a TLS client gets from `addr`, verified against `ca`.
fn served_certificate(addr: std::net::SocketAddr, ca: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from("relay.test").unwrap(),
    )
    .unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    conn.peer_certificates().unwrap()[0].to_vec()
}

fn leaf_of(pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn write_certificate(dir: &Path, cert: &crate::pki::ClientCert) {
    std::fs::write(dir.join("server.pem"), &cert.cert_pem).unwrap();
    std::fs::write(dir.join("server-key.pem"), &cert.key_pem).unwrap();
}

#[test]
fn a_renewed_certificate_is_served_to_the_next_connection() {
    let ca = TestCa::new("Lifecycle Test CA");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.host(&["relay.test"], 2020, 2090);
    write_certificate(dir.path(), &first);
    let own_tls = "[tls]\ncertificate = \"server.pem\"\nprivate_key = \"server-key.pem\"\n";
    let config = base().replace("[tls]\ngenerate_dev_certificate = true\n", own_tls);
    let relay = Relay::start_config_in(dir, &config);
    let addr = relay.addr("submissions");
    assert_eq!(served_certificate(addr, &ca.pem), leaf_of(&first.cert_pem));

    // Renewed on disk: served only after the reload, and from then on.
    let second = ca.host(&["relay.test"], 2021, 2091);
    write_certificate(relay.dir.path(), &second);
    assert_eq!(served_certificate(addr, &ca.pem), leaf_of(&first.cert_pem));
    let (ok, _, err) = relay.admin("reload");
    assert!(ok, "reload refused: {err}");
    assert_eq!(served_certificate(addr, &ca.pem), leaf_of(&second.cert_pem));

    // With `[tls] watch`, a renewal is picked up without a signal.
    let watching = config.replace(own_tls, &format!("{own_tls}watch = \"1s\"\n"));
    let (ok, _, err) = reload_with(&relay, &watching);
    assert!(ok, "reload refused: {err}");
    let third = ca.host(&["relay.test"], 2022, 2092);
    // A different modification time than the file it replaces, also on coarse clocks.
    std::thread::sleep(Duration::from_millis(1100));
    write_certificate(relay.dir.path(), &third);
    assert!(
        wait_until(20, || served_certificate(addr, &ca.pem)
            == leaf_of(&third.cert_pem)),
        "the watched certificate was not picked up"
    );
    relay.assert_serving();
}

/// The JSON log messages of the relay that contain `needle`.
fn log_messages(relay: &Relay, needle: &str) -> Vec<String> {
    relay
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["message"].as_str().map(str::to_string))
        .filter(|m| m.contains(needle))
        .collect()
}

#[test]
fn a_broken_configuration_is_refused_by_reload_and_the_old_one_keeps_serving() {
    let relay = Relay::start_config(&amtp_config("DENY=com/optout"));
    let good = std::fs::read_to_string(relay.config_path()).unwrap();
    let broken = format!(
        "{}\n[logging]\nlevel = \"verbose\"\n",
        good.replace("DENY=com/optout", "DENY=com/autoresponse")
    );
    let (ok, out, err) = reload_with(&relay, &broken);
    assert!(!ok, "a broken configuration was accepted: {out}");
    assert!(
        err.contains("logging.level") && err.contains("verbose"),
        "{err}"
    );
    // The relay logs exactly what check-config prints.
    let check = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(relay.config_path())
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(64));
    let printed = String::from_utf8_lossy(&check.stderr)
        .trim_end()
        .trim_start_matches("amtp-relay: ")
        .to_string();
    assert!(printed.contains("field `logging.level`"), "{printed}");
    assert!(
        log_messages(&relay, "reload refused")
            .iter()
            .any(|m| m.ends_with(&printed)),
        "log lacks {printed:?}: {:?}",
        log_messages(&relay, "reload refused")
    );
    // Still serving, under the old configuration (the MPC change was not applied).
    relay.assert_serving();
    let mut c = amtp_client(&relay);
    assert_eq!(mpc_line(&mut c).as_deref(), Some("MPC DENY=com/optout"));
    // A listener moved onto a port that is taken: refused too, nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let moved = good.replacen(
        "name = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:0\"",
        &format!(
            "name = \"mx\"\nrole = \"mx\"\naddress = \"{}\"",
            taken.local_addr().unwrap()
        ),
        1,
    );
    let (ok, _, err) = reload_with(&relay, &moved);
    assert!(!ok && err.contains("cannot bind listener `mx`"), "{err}");
    relay.assert_serving();
}

#[test]
fn drain_refuses_new_connections_with_421_and_resume_undoes_it() {
    let relay = Relay::start("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let metrics = relay.addr("metrics");
    assert!(wait_until(10, || http_get(metrics, "/healthz/ready").0 == 200));
    let mut open = Client::connect(relay.addr("mx"));
    open.expect("EHLO client.test", 250);

    let (ok, out, err) = relay.admin("drain");
    assert!(ok && out.contains("draining"), "{out}{err}");
    let (status, body) = http_get(metrics, "/healthz/ready");
    assert_eq!((status, body.trim()), (503, "draining"));
    let refused = Client::connect(relay.addr("mx"));
    assert_eq!(refused.greeting.code, 421, "{}", refused.greeting);
    assert!(
        refused.greeting.to_string().contains("4.3.2"),
        "{}",
        refused.greeting
    );
    // The open session carries on.
    assert_eq!(send_message(&mut open).code, 250);

    let (ok, out, _) = relay.admin("resume");
    assert!(ok && out.contains("resumed"), "{out}");
    assert_eq!(http_get(metrics, "/healthz/ready").0, 200);
    relay.assert_serving();
    assert_eq!(relay.queued(), 1);
}

#[test]
fn sigterm_refuses_new_transactions_lets_data_finish_and_says_421_after_the_grace() {
    // shutdown_grace is 2s (harness SERVER).
    let mut relay = Relay::start("");
    let mx = relay.addr("mx");
    let mut idle = Client::connect(mx);
    idle.expect("EHLO idle.test", 250);
    let mut in_data = Client::connect(mx);
    in_data.expect("EHLO data.test", 250);
    in_data.expect("MAIL FROM:<a@client.test>", 250);
    in_data.expect("RCPT TO:<b@example.test>", 250);
    in_data.expect("DATA", 354);
    in_data.write(b"Subject: in flight\r\n\r\nfirst half\r\n");
    let mut late = Client::connect(mx);
    late.expect("EHLO late.test", 250);

    relay.signal("TERM");
    assert!(wait_until(10, || relay.logged(&["shutting down"])));
    // No new transaction starts.
    let r = late.send("MAIL FROM:<a@client.test>");
    assert_eq!(r.code, 421, "{r}");
    assert!(r.to_string().contains("4.3.2"), "{r}");
    // The message whose DATA was in progress finishes.
    in_data.write(b"second half\r\n.\r\n");
    assert_eq!(in_data.read_reply().unwrap().code, 250);
    // A session still open when the grace ends is told so before the close.
    let r = idle
        .read_reply()
        .expect("a reply before the close, not a bare close");
    assert_eq!(r.code, 421, "{r}");
    assert!(r.to_string().contains("4.3.2"), "{r}");
    assert!(idle.read_reply().is_none(), "closed after the 421");
    let status = relay.wait_exit(20).expect("relay did not exit");
    assert!(status.success(), "{status}");
    let (ok, list, _) = crate::harness::queue_cli(&relay.data_dir(), &["list"]);
    assert!(ok && list.contains("1 message(s)"), "{list}");
}

fn delivery_config(sink_port: u16) -> String {
    format!(
        r#"{SERVER}
[delivery]
poll_interval = "200ms"
connect_timeout = "2s"
server_ca = "{roots}"

[[delivery.route]]
domains = ["example.test"]
host = "127.0.0.1"
port = {sink_port}
protocol = "smtp"
tls = "none"

[resolver]
servers = ["127.0.0.1:9"]
timeout = "1s"
attempts = 1
"#,
        roots = crate::harness::unused_roots().display(),
    )
}

#[test]
fn a_changed_delivery_route_is_used_for_the_next_message() {
    let first = crate::sink::Sink::start("127.0.0.1:0");
    let second = crate::sink::Sink::start("127.0.0.1:0");
    let relay = Relay::start_config(&delivery_config(first.addr.port()));
    let mut c = Client::connect(relay.addr("mx"));
    c.expect("EHLO client.test", 250);
    assert_eq!(send_message(&mut c).code, 250);
    assert_eq!(
        first.wait_for(1, 15).len(),
        1,
        "delivered to the first route"
    );

    let (ok, _, err) = reload_with(&relay, &delivery_config(second.addr.port()));
    assert!(ok, "reload refused: {err}");
    // The same session, open across the reload, sends again: the new route carries it.
    assert_eq!(send_message(&mut c).code, 250);
    assert_eq!(
        second.wait_for(1, 15).len(),
        1,
        "delivered to the new route"
    );
    assert_eq!(
        first.wait_for(2, 1).len(),
        1,
        "nothing more to the old route"
    );
}

fn plain(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

/// AUTH PLAIN on the submission listener (after STARTTLS): the reply code.
fn auth_code(relay: &Relay, user: &str, password: &str) -> u16 {
    let mut c = Client::connect(relay.addr("submission"));
    c.expect("EHLO client.test", 250);
    let mut c = c.starttls(&relay.ca());
    c.expect("EHLO client.test", 250);
    c.send(&format!("AUTH PLAIN {}", plain(user, password)))
        .code
}

#[test]
fn a_new_users_file_applies_to_the_next_auth() {
    let relay = Relay::start("");
    assert_eq!(auth_code(&relay, "dev", &relay.dev_password()), 235);
    assert_eq!(auth_code(&relay, "carol", "new secret"), 535);
    let mut hash = std::process::Command::new(BIN)
        .args(["hash-password", "--user", "carol"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    hash.stdin
        .take()
        .unwrap()
        .write_all(b"new secret\n")
        .unwrap();
    let entry = String::from_utf8(hash.wait_with_output().unwrap().stdout).unwrap();
    std::fs::write(relay.dir.path().join("users2.toml"), entry).unwrap();
    let text = std::fs::read_to_string(relay.config_path()).unwrap();
    let (ok, _, err) = reload_with(
        &relay,
        &format!("{text}\n[auth]\nusers_file = \"users2.toml\"\n"),
    );
    assert!(ok, "reload refused: {err}");
    assert_eq!(auth_code(&relay, "carol", "new secret"), 235);
    assert_eq!(auth_code(&relay, "dev", &relay.dev_password()), 535);
}

/// The bound address of listener `name` from the relay's "listening" log lines (the last).
fn listening(relay: &Relay, name: &str) -> Option<std::net::SocketAddr> {
    relay
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "listening" && v["listener"] == name)
        .filter_map(|v| v["address"].as_str().and_then(|a| a.parse().ok()))
        .next_back()
}

#[test]
fn listeners_are_added_removed_and_their_limits_changed_by_reload() {
    let relay = Relay::start("");
    let text = std::fs::read_to_string(relay.config_path()).unwrap();
    let mut open = Client::connect(relay.addr("mx"));
    open.expect("EHLO client.test", 250);

    // Add a listener.
    let added =
        format!("{text}\n[[listener]]\nname = \"mx2\"\nrole = \"mx\"\naddress = \"127.0.0.1:0\"\n");
    let (ok, out, err) = reload_with(&relay, &added);
    assert!(ok && out.contains("listener `mx2` added"), "{out}{err}");
    let mx2 = listening(&relay, "mx2").expect("mx2 listening");
    Client::connect(mx2).expect("EHLO client.test", 250);

    // One connection per address on mx from now on: the open one keeps its slot.
    let limited = added.replacen(
        "role = \"mx\"\n",
        "role = \"mx\"\nmax_connections_per_ip = 1\n",
        1,
    );
    let (ok, _, err) = reload_with(&relay, &limited);
    assert!(ok, "reload refused: {err}");
    let refused = Client::connect(relay.addr("mx"));
    assert_eq!(refused.greeting.code, 421, "{}", refused.greeting);
    assert_eq!(send_message(&mut open).code, 250);

    // Remove mx2: it stops accepting.
    let (ok, out, err) = reload_with(
        &relay,
        &limited.replace(
            "\n[[listener]]\nname = \"mx2\"\nrole = \"mx\"\naddress = \"127.0.0.1:0\"\n",
            "\n",
        ),
    );
    assert!(
        ok && out.contains("listener `mx2` on 127.0.0.1:0 removed"),
        "{out}{err}"
    );
    assert!(
        wait_until(10, || std::net::TcpStream::connect(mx2).is_err()),
        "mx2 still accepts"
    );
}

#[test]
fn a_start_up_error_is_printed_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        base().replacen(
            "address = \"127.0.0.1:0\"",
            &format!("address = \"{}\"", taken.local_addr().unwrap()),
            1,
        ),
    )
    .unwrap();
    // Logged when the filter lets errors through, printed plainly when it does not: never
    // both, never neither.
    for filter in ["info", "off"] {
        let out = std::process::Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", filter)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            text.matches("cannot bind listener `mx`").count(),
            1,
            "RUST_LOG={filter}: {text}"
        );
    }
}
