//! The SMTP service end to end: local delivery, relay control, submission with STARTTLS and
//! each AUTH mechanism, implicit TLS, brute-force lock-out, clean shutdown and the queue CLI.

use crate::harness::{Client, Relay};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

fn plain(user: &str, password: &str) -> String {
    B64.encode(format!("\0{user}\0{password}"))
}

#[test]
fn mail_to_a_local_domain_is_queued_durably_and_listed() {
    let relay = Relay::start("");
    let mut c = Client::connect(relay.addr("mx"));
    assert!(
        c.greeting.text().contains("relay.test ESMTP"),
        "{}",
        c.greeting
    );
    let ehlo = c.expect("EHLO client.test", 250);
    assert!(ehlo.lines.contains(&"STARTTLS".to_string()), "{ehlo:?}");
    assert!(
        !ehlo.lines.iter().any(|l| l.starts_with("AUTH")),
        "no AUTH on mx: {ehlo:?}"
    );
    let r = c.send_mail(
        "alice@sender.test",
        &["bob@example.test"],
        "Subject: hello\r\nMessage-ID: <e2e-1@sender.test>\r\n\r\nbody line\r\n",
    );
    assert_eq!(
        (r.code, r.status.unwrap().to_string()),
        (250, "2.0.0".to_string()),
        "{r}"
    );
    let id = r.text().rsplit(' ').next().unwrap().to_string();
    c.expect("QUIT", 221);

    let (ok, list, err) = relay.queue_cli(&["list"]);
    assert!(ok, "{err}");
    assert!(
        list.contains(&id)
            && list.contains("alice@sender.test")
            && list.contains("bob@example.test")
            && list.contains("<e2e-1@sender.test>"),
        "{list}"
    );
    let (ok, show, err) = relay.queue_cli(&["show", &id]);
    assert!(ok, "{err}");
    assert!(
        show.contains("Subject: hello")
            && show.contains("with ESMTP")
            && show.contains("origin:       smtp (listener mx"),
        "{show}"
    );
    assert!(
        relay.logged(&[
            "\"message\":\"session\"",
            "\"listener\":\"mx\"",
            "\"accepted\":1",
            "\"outcome\":\"closed\""
        ]),
        "one log line per session"
    );

    // After a clean stop, the stopped relay's queue is still inspectable offline.
    let dir = relay.stop();
    let (ok, list, err) = crate::harness::queue_cli(&dir.path().join("data"), &["list"]);
    assert!(ok, "{err}");
    assert!(list.contains(&id));
}

#[test]
fn unauthenticated_relay_is_denied() {
    let relay = Relay::start("");
    let mut c = Client::connect(relay.addr("mx"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<alice@sender.test>", 250);
    let r = c.expect("RCPT TO:<victim@elsewhere.test>", 550);
    assert_eq!(r.status.unwrap().to_string(), "5.7.1");
    // A local recipient in the same transaction is still fine.
    c.expect("RCPT TO:<bob@example.test>", 250);
    c.expect("QUIT", 221);
    assert_eq!(relay.queued(), 0);
}

/// RFC 6531 §3.4: non-ASCII addresses need the SMTPUTF8 parameter (553 5.6.7 otherwise).
#[test]
fn non_ascii_addresses_without_smtputf8_get_553() {
    let relay = Relay::start("");
    let mut c = Client::connect(relay.addr("mx"));
    c.expect("EHLO client.test", 250);
    let r = c.expect("MAIL FROM:<j\u{f6}rg@sender.test>", 553);
    assert_eq!(r.status.unwrap().to_string(), "5.6.7");
    c.expect("MAIL FROM:<alice@sender.test>", 250);
    let r = c.expect("RCPT TO:<j\u{f6}rg@example.test>", 553);
    assert_eq!(r.status.unwrap().to_string(), "5.6.7");
    c.expect("RSET", 250);
    c.expect("MAIL FROM:<j\u{f6}rg@sender.test> SMTPUTF8", 250);
    c.expect("RCPT TO:<j\u{f6}rg@example.test>", 250);
    c.expect("QUIT", 221);
}

#[test]
fn submission_requires_starttls_then_auth_and_each_mechanism_relays() {
    let relay = Relay::start("");
    let pw = relay.dev_password();
    let mut c = Client::connect(relay.addr("submission"));
    let ehlo = c.expect("EHLO client.test", 250);
    assert!(
        !ehlo.lines.iter().any(|l| l.starts_with("AUTH")),
        "AUTH never offered before TLS: {ehlo:?}"
    );
    let r = c.expect(&format!("AUTH PLAIN {}", plain("dev", &pw)), 530);
    assert_eq!(r.text(), "Must issue a STARTTLS command first");
    let r = c.expect("MAIL FROM:<dev@example.test>", 530);
    assert_eq!(r.status.unwrap().to_string(), "5.7.0");

    // PLAIN.
    let mut c = c.starttls(&relay.ca());
    let ehlo = c.expect("EHLO client.test", 250);
    assert!(
        ehlo.lines
            .contains(&"AUTH PLAIN LOGIN CRAM-MD5".to_string()),
        "{ehlo:?}"
    );
    let r = c.expect("MAIL FROM:<dev@example.test>", 530);
    assert_eq!(r.text(), "Authentication required");
    c.expect(&format!("AUTH PLAIN {}", plain("dev", &pw)), 235);
    // Undefined and malformed MPCs are refused as on AMTP listeners.
    let r = c.expect("MAIL FROM:<dev@example.test> MPC=foo/bar", 550);
    assert_eq!(r.status.unwrap().to_string(), "5.7.1");
    c.expect("MAIL FROM:<dev@example.test> MPC=foo", 501);
    let r = c.send_mail(
        "dev@example.test",
        &["someone@remote.test"],
        "Subject: plain\r\n\r\nx\r\n",
    );
    assert_eq!(r.code, 250, "{r}");
    c.expect("QUIT", 221);
    // Without MPC= (as from every mail client) it gets the listener's default MPC.
    let id = r.text().rsplit(' ').next().unwrap().to_string();
    let (ok, show, err) = relay.queue_cli(&["show", &id]);
    assert!(ok, "{err}");
    assert!(show.contains("mpc:          per/individual"), "{show}");

    // LOGIN.
    let mut c = Client::connect(relay.addr("submission")).starttls(&relay.ca());
    c.expect("EHLO client.test", 250);
    assert_eq!(c.expect("AUTH LOGIN", 334).text(), B64.encode("Username:"));
    assert_eq!(
        c.expect(&B64.encode("dev"), 334).text(),
        B64.encode("Password:")
    );
    c.expect(&B64.encode(&pw), 235);
    assert_eq!(
        c.send_mail(
            "dev@example.test",
            &["someone@remote.test"],
            "Subject: login\r\n\r\nx\r\n"
        )
        .code,
        250
    );
    c.expect("QUIT", 221);

    // CRAM-MD5, computed independently of the relay's code with the md5 of the HMAC
    // definition (RFC 2104): MD5((K^opad) || MD5((K^ipad) || challenge)).
    let mut c = Client::connect(relay.addr("submission")).starttls(&relay.ca());
    c.expect("EHLO client.test", 250);
    let challenge =
        String::from_utf8(B64.decode(c.expect("AUTH CRAM-MD5", 334).text()).unwrap()).unwrap();
    assert!(
        challenge.starts_with('<') && challenge.ends_with("@relay.test>"),
        "{challenge}"
    );
    let digest = hmac_md5(pw.as_bytes(), challenge.as_bytes());
    c.expect(&B64.encode(format!("dev {digest}")), 235);
    assert_eq!(
        c.send_mail(
            "dev@example.test",
            &["someone@remote.test"],
            "Subject: cram\r\n\r\nx\r\n"
        )
        .code,
        250
    );
    c.expect("QUIT", 221);

    assert_eq!(relay.queued(), 3);
    let show = relay.show_first();
    assert!(
        show.contains("with ESMTPSA")
            && show.contains("version=TLSv1.3")
            && show.contains("auth user:    dev"),
        "{show}"
    );
    assert!(
        !show.contains("authenticated as"),
        "user not in Received unless configured: {show}"
    );
}

fn hmac_md5(key: &[u8], msg: &[u8]) -> String {
    use md5::Digest;
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let mut inner = md5::Md5::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = md5::Md5::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn implicit_tls_submission() {
    let relay = Relay::start("[session]\nreceived_auth_user = true\n");
    let mut c = Client::connect_tls(relay.addr("submissions"), &relay.ca());
    let ehlo = c.expect("EHLO client.test", 250);
    assert!(!ehlo.lines.contains(&"STARTTLS".to_string()), "{ehlo:?}");
    c.expect("STARTTLS", 503);
    c.expect("MAIL FROM:<dev@example.test>", 530);
    c.expect(
        &format!("AUTH PLAIN {}", plain("dev", &relay.dev_password())),
        235,
    );
    assert_eq!(
        c.send_mail(
            "dev@example.test",
            &["x@remote.test"],
            "Subject: 465\r\n\r\nx\r\n"
        )
        .code,
        250
    );
    c.expect("QUIT", 221);
    let show = relay.show_first();
    assert!(
        show.contains("(authenticated as dev)"),
        "received_auth_user = true reveals the user: {show}"
    );
}

#[test]
fn brute_force_is_locked_out_per_ip() {
    let relay = Relay::start(
        "[auth]\nmax_failures_per_ip = 3\nmax_failures_per_user = 100\nlockout = \"60s\"\n",
    );
    let pw = relay.dev_password();
    let mut c = Client::connect_tls(relay.addr("submissions"), &relay.ca());
    c.expect("EHLO attacker.test", 250);
    let r = c.expect(&format!("AUTH PLAIN {}", plain("admin", "guess1")), 535);
    assert_eq!(r.status.unwrap().to_string(), "5.7.8");
    c.expect(&format!("AUTH PLAIN {}", plain("root", "guess2")), 535);
    let r = c.expect(&format!("AUTH PLAIN {}", plain("dev", "guess3")), 454);
    assert_eq!(r.status.unwrap().to_string(), "4.7.0");
    assert!(c.is_closed(), "disconnected on lock-out");
    // Locked: even the right password is refused from this address.
    let mut c = Client::connect_tls(relay.addr("submissions"), &relay.ca());
    c.expect("EHLO attacker.test", 250);
    c.expect(&format!("AUTH PLAIN {}", plain("dev", &pw)), 454);
    assert!(c.is_closed());
    assert!(
        relay.logged(&["AUTH failed; locking out", "127.0.0.1", "\"user\":\"dev\""]),
        "lock-out logged with IP and user"
    );
    relay.assert_serving();
}

/// Knowing a user name is no lock-out switch: failures lock out the (user, address) pair that
/// made them and slow the name down everywhere, but its owner still logs in from elsewhere.
#[test]
fn a_user_name_is_no_lockout_switch() {
    let relay = Relay::start(
        "[auth]\nmax_failures_per_ip = 100\nmax_failures_per_user = 2\nlockout = \"60s\"\nuser_delay_max = \"1s\"\n",
    );
    let connect = |source: &str| {
        let sock = crate::harness::socket_from(source, relay.addr("submission"));
        let mut c = crate::harness::Client::from_tcp(sock).starttls(&relay.ca());
        c.expect("EHLO client.test", 250);
        c
    };
    // One attacker address guesses until it is locked out for this user.
    let mut c = connect("127.0.0.11");
    c.expect(&format!("AUTH PLAIN {}", plain("dev", "wrong1")), 535);
    let r = c.expect(&format!("AUTH PLAIN {}", plain("dev", "wrong2")), 454);
    assert_eq!(r.status.unwrap().to_string(), "4.7.0");
    assert!(c.is_closed(), "disconnected on lock-out");
    // More addresses keep guessing the same name: slowed down, not locking anybody out.
    for source in ["127.0.0.12", "127.0.0.13"] {
        let mut c = connect(source);
        c.expect(&format!("AUTH PLAIN {}", plain("dev", "wrong")), 535);
    }
    // The owner, from its own address, still gets in (after the delay).
    let pw = relay.dev_password();
    let mut c = connect("127.0.0.20");
    c.expect(&format!("AUTH PLAIN {}", plain("dev", &pw)), 235);
    // The attacker's address stays locked for this name, even with the right password.
    let mut c = connect("127.0.0.11");
    c.expect(&format!("AUTH PLAIN {}", plain("dev", &pw)), 454);
    assert!(relay.logged(&["AUTH slowed down for this user", "\"user\":\"dev\""]));
    relay.assert_serving();
}
