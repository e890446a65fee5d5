//! Two relays and DNS: a client submits to relay A; A finds relay B by `_amtp._tcp` SRV and
//! delivers over AMTP (mutual TLS: A's certificate name = the PTR of A's source address = its
//! EHLO); B delivers to its mailbox store (an SMTP sink) with the `MPC:` header added. Also:
//! a peer whose published MPC policy denies the message (no retry, DSN), a domain without an
//! SRV record (DSN, or the SMTP fallback via MX when enabled), and public mail that B must never
//! relay to a public hop.

use crate::dns;
use crate::harness::{Client, Relay, wait_until};
use crate::pki::TestCa;
use crate::sink::Sink;
use base64::Engine;
use std::net::TcpListener;
use std::path::Path;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn listeners(amtp_port: Option<u16>) -> String {
    let mut l = String::from(
        "[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"submission\"\nrole = \"submission\"\naddress = \"127.0.0.1:0\"\nallow_insecure_auth = true\n\n[[listener]]\nname = \"submissions\"\nrole = \"submissions\"\naddress = \"127.0.0.1:0\"\n",
    );
    if let Some(p) = amtp_port {
        l.push_str(&format!(
            "\n[[listener]]\nname = \"amtp\"\nrole = \"amtp\"\naddress = \"127.0.0.1:{p}\"\n"
        ));
    }
    l
}

/// Submit as `dev`; an empty `mpc` sends MAIL without `MPC=`, like every ordinary mail client.
fn submit(relay: &Relay, mpc: &str, to: &str, subject: &str) {
    let mut c = Client::connect(relay.addr("submission"));
    c.expect("EHLO client.test", 250);
    let plain = base64::engine::general_purpose::STANDARD
        .encode(format!("\0dev\0{}", relay.dev_password()));
    c.expect(&format!("AUTH PLAIN {plain}"), 235);
    let param = if mpc.is_empty() {
        String::new()
    } else {
        format!(" MPC={mpc}")
    };
    c.expect(&format!("MAIL FROM:<alice@a.amtp.test>{param}"), 250);
    c.expect(&format!("RCPT TO:<{to}>"), 250);
    c.expect("DATA", 354);
    c.write(
        format!("Subject: {subject}\r\nMessage-ID: <{subject}@a.amtp.test>\r\n\r\nhello\r\n.\r\n")
            .as_bytes(),
    );
    assert_eq!(c.read_reply().unwrap().code, 250);
    c.expect("QUIT", 221);
}

#[test]
fn relay_a_to_relay_b_over_amtp_by_srv() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let public = TestCa::new("Chain Public CA");
    let ca = write(dir, "public-ca.pem", &public.pem);
    // A's names include relay.test only so the test harness can talk TLS to it if needed.
    let a_cert = public.host(&["relay-a.amtp.test", "relay.test"], 2020, 2099);
    let b_cert = public.host(&["relay-b.amtp.test", "relay.test"], 2020, 2099);
    let (a_pem, a_key) = (
        write(dir, "a.pem", &a_cert.cert_pem),
        write(dir, "a-key.pem", &a_cert.key_pem),
    );
    let (b_pem, b_key) = (
        write(dir, "b.pem", &b_cert.cert_pem),
        write(dir, "b-key.pem", &b_cert.key_pem),
    );
    let b_port = free_port();
    let sink_a = Sink::start("127.0.0.1:0");
    let sink_b = Sink::start("127.0.0.1:0");
    let sink_mx = Sink::start("127.0.0.1:0");
    let zone = format!(
        "relay-b IN A 127.0.0.1\n_amtp._tcp.b IN SRV 10 10 {b_port} relay-b.amtp.test.\n_amtp._tcp.elsewhere IN SRV 10 10 {b_port} relay-b.amtp.test.\nlegacy IN MX 10 mx.legacy.amtp.test.\nmx.legacy IN A 127.0.0.1\n"
    );
    let dns = dns::start_with(&[(30, "relay-a.amtp.test")], &zone);
    let common = |fallback: &str| {
        format!(
            "[delivery]\npoll_interval = \"200ms\"\nfirst_retry = \"1s\"\nmax_backoff = \"2s\"\nconnect_timeout = \"2s\"\ncommand_timeout = \"10s\"\nserver_ca = \"{ca}\"\n{fallback}\n"
        )
    };
    let a_config = format!(
        "[server]\nhostname = \"relay-a.amtp.test\"\ndata_dir = \"data\"\nlocal_domains = [\"a.amtp.test\"]\ncreate_dev_user = true\nshutdown_grace = \"2s\"\n\n[tls]\ncertificate = \"{a_pem}\"\nprivate_key = \"{a_key}\"\n\n{}\n{}source_address = \"127.0.0.30\"\nehlo_name = \"relay-a.amtp.test\"\n\n[[delivery.route]]\ndomains = [\"a.amtp.test\"]\nhost = \"127.0.0.1\"\nport = {}\nprotocol = \"smtp\"\ntls = \"none\"\n\n[resolver]\nservers = [\"{}\"]\ntimeout = \"1s\"\nattempts = 1\n",
        listeners(None),
        common(&format!(
            "smtp_fallback = true\nsmtp_fallback_tls = \"opportunistic\"\nsmtp_fallback_port = {}\n",
            sink_mx.addr.port()
        )),
        sink_a.addr.port(),
        dns.addr
    );
    let b_config = format!(
        "[server]\nhostname = \"relay-b.amtp.test\"\ndata_dir = \"data\"\nlocal_domains = [\"b.amtp.test\"]\ncreate_dev_user = true\nshutdown_grace = \"2s\"\n\n[tls]\ncertificate = \"{b_pem}\"\nprivate_key = \"{b_key}\"\n\n{}\n[amtp]\npublic_ca = \"{ca}\"\nmpc_policy = \"DENY=com/*\"\nrelay_domains = [\"elsewhere.amtp.test\"]\n\n{}\n[[delivery.route]]\ndomains = [\"b.amtp.test\"]\nhost = \"127.0.0.1\"\nport = {}\nprotocol = \"smtp\"\ntls = \"none\"\n\n[resolver]\nservers = [\"{}\"]\ntimeout = \"1s\"\nattempts = 1\n",
        listeners(Some(b_port)),
        common(""),
        sink_b.addr.port(),
        dns.addr
    );
    let b = Relay::start_config(&b_config);
    let a = Relay::start_config(&a_config);

    // 1. A -> (SRV) -> B over AMTP -> B's mailbox store over SMTP, with the MPC header. The
    //    client sends no MPC=: A's submission listener gives it per/individual.
    submit(&a, "", "bob@b.amtp.test", "chain");
    let got = sink_b.wait_for(1, 20);
    assert_eq!(
        got.len(),
        1,
        "B delivered to its store; A log:\n{}",
        a.logs.lock().unwrap().join("\n")
    );
    let m = &got[0];
    assert!(m.data.starts_with("MPC: per/individual\r\n"), "{}", m.data);
    assert!(
        m.data
            .contains("amtp public identity=relay-a.amtp.test mpc=per/individual"),
        "B verified A's identity:\n{}",
        m.data
    );
    assert_eq!(
        m.data.matches("MPC:").count(),
        1,
        "no MPC header on the AMTP hop, one when leaving AMTP"
    );

    // 2. B's published policy denies com/*: A does not send it, does not retry, bounces.
    submit(&a, "com/optin", "bob@b.amtp.test", "denied");
    let dsn = sink_a.wait_for(1, 20);
    assert_eq!(dsn.len(), 1, "a DSN came back to the sender's domain");
    // The relay decided this itself from B's published policy: the DSN names B as the remote
    // MTA but does not pretend B answered `550`.
    assert!(
        dsn[0].data.contains("Status: 5.7.1\r\nRemote-MTA: dns; ")
            && dsn[0].data.contains(
                "Diagnostic-Code: X-AMTP-Relay; MPC com/optin is denied by the published policy of "
            )
            && !dsn[0].data.contains("smtp; 550")
            && dsn[0].rcpts == vec!["alice@a.amtp.test".to_string()],
        "{}",
        dsn[0].data
    );
    assert_eq!(
        sink_b.messages.lock().unwrap().len(),
        1,
        "nothing more reached B's store"
    );

    // 3. No SRV record: the SMTP fallback via MX (enabled on A) delivers with the MPC header.
    submit(&a, "per/individual", "carol@legacy.amtp.test", "fallback");
    let via_mx = sink_mx.wait_for(1, 20);
    assert_eq!(via_mx.len(), 1);
    assert!(via_mx[0].data.starts_with("MPC: per/individual\r\n"));

    // 4. Public mail to a domain B accepts but has no private route for: never to a public hop
    //    (the router refuses before any SRV lookup; the reason names the rule).
    submit(&a, "per/individual", "dave@elsewhere.amtp.test", "public");
    assert!(
        wait_until(20, || b.logged(&[
            "not relayed to a public next hop",
            "dave@elsewhere.amtp.test"
        ])),
        "B refused to relay public mail to a public hop"
    );
    assert!(wait_until(10, || a.queued() == 0), "A's queue drained");
}

#[test]
fn no_srv_record_without_fallback_bounces() {
    let sink = Sink::start("127.0.0.1:0");
    let dns = dns::start_with(&[], "");
    let config = format!(
        "[server]\nhostname = \"relay.test\"\ndata_dir = \"data\"\nlocal_domains = [\"a.amtp.test\"]\ncreate_dev_user = true\n\n[tls]\ngenerate_dev_certificate = true\n\n{}\n[delivery]\nserver_ca = \"{}\"\npoll_interval = \"200ms\"\n\n[[delivery.route]]\ndomains = [\"a.amtp.test\"]\nhost = \"127.0.0.1\"\nport = {}\nprotocol = \"smtp\"\ntls = \"none\"\n\n[resolver]\nservers = [\"{}\"]\ntimeout = \"1s\"\nattempts = 1\n",
        listeners(None),
        crate::harness::unused_roots().display(),
        sink.addr.port(),
        dns.addr
    );
    let relay = Relay::start_config(&config);
    submit(&relay, "per/individual", "erin@nosrv.amtp.test", "nosrv");
    let got = sink.wait_for(1, 20);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].data.contains("Status: 5.4.4\r\nDiagnostic-Code: X-AMTP-Relay; nosrv.amtp.test has no _amtp._tcp SRV record")
            && !got[0].data.contains("smtp; 550"),
        "{}",
        got[0].data
    );
}
