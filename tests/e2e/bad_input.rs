//! The bad-input catalogue: each input gets its exact reply, and the relay keeps serving
//! other clients afterwards.

use crate::harness::{Client, Relay};
use std::io::{Read, Write};

/// A client on `mx`, greeted with EHLO.
fn greeted(relay: &Relay) -> Client {
    let mut c = Client::connect(relay.addr("mx"));
    c.expect("EHLO client.test", 250);
    c
}

/// Open a transaction and start DATA.
fn in_data(relay: &Relay) -> Client {
    let mut c = greeted(relay);
    c.expect("MAIL FROM:<a@sender.test>", 250);
    c.expect("RCPT TO:<b@example.test>", 250);
    c.expect("DATA", 354);
    c
}

fn expect_reply(c: &mut Client, code: u16, status: &str, text: &str) {
    let r = c.read_reply().expect("a reply");
    assert_eq!(
        (r.code, r.status.map(|s| s.to_string()).unwrap_or_default()),
        (code, status.to_string()),
        "{r}"
    );
    assert!(r.text().contains(text), "{r}");
}

#[test]
fn command_line_errors() {
    let relay = Relay::start("[session]\nmax_message_size = \"10KB\"\n");
    let mut c = greeted(&relay);
    // Over-long command line (RFC 5321: 512 octets).
    let r = c.expect(&format!("NOOP {}", "x".repeat(600)), 500);
    assert_eq!(r.to_string(), "500 5.5.2 Line too long (limit 512 octets)");
    // NUL byte.
    c.write(b"NO\0OP\r\n");
    expect_reply(&mut c, 500, "5.5.2", "NUL character not allowed");
    // SIZE over the limit.
    let r = c.expect("MAIL FROM:<a@sender.test> SIZE=20000", 552);
    assert_eq!(r.status.unwrap().to_string(), "5.3.4");
    // RCPT before MAIL; DATA with no RCPT; MAIL twice.
    assert_eq!(
        c.expect("RCPT TO:<b@example.test>", 503).to_string(),
        "503 5.5.1 Need MAIL command first"
    );
    c.expect("MAIL FROM:<a@sender.test>", 250);
    assert_eq!(
        c.expect("MAIL FROM:<a@sender.test>", 503).to_string(),
        "503 5.5.1 Sender already specified"
    );
    assert_eq!(
        c.expect("DATA", 554).to_string(),
        "554 5.5.1 No valid recipients"
    );
    // Unknown parameter.
    c.expect("RSET", 250);
    assert_eq!(
        c.expect("MAIL FROM:<a@sender.test> FOO=BAR", 555)
            .to_string(),
        "555 5.5.4 Unsupported parameter FOO"
    );
    c.expect("QUIT", 221);
    relay.assert_serving();
}

#[test]
fn data_errors_and_smuggling() {
    let relay = Relay::start("");
    // Over-long text line (RFC 5321: 1000 octets including CRLF).
    let mut c = in_data(&relay);
    c.write(format!("Subject: long\r\n\r\n{}\r\n.\r\n", "y".repeat(1200)).as_bytes());
    expect_reply(&mut c, 554, "5.6.0", "line longer than 1000 octets");
    // The session continues.
    c.expect("NOOP", 250);
    c.expect("QUIT", 221);

    let mut c = in_data(&relay);
    c.write(b"Subject: lf\r\n\r\nbare\nlf\r\n.\r\n");
    expect_reply(&mut c, 554, "5.6.0", "bare <LF>");
    c.expect("QUIT", 221);

    let mut c = in_data(&relay);
    c.write(b"Subject: cr\r\n\r\nbare\rcr\r\n.\r\n");
    expect_reply(&mut c, 554, "5.6.0", "bare <CR>");
    c.expect("QUIT", 221);

    // SMTP smuggling: `\n.\n` must not end the message, and the "smuggled" transaction after it
    // must never be executed.
    let mut c = in_data(&relay);
    c.write(b"Subject: smuggle\r\n\r\nhello\n.\nMAIL FROM:<evil@sender.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nforged\r\n.\r\n");
    expect_reply(&mut c, 554, "5.6.0", "bare <LF>");
    c.expect("QUIT", 221);
    assert_eq!(
        relay.queued(),
        0,
        "nothing accepted, smuggled message included"
    );
    relay.assert_serving();
}

#[test]
fn auth_with_invalid_base64() {
    let relay = Relay::start("");
    let mut c = Client::connect_tls(relay.addr("submissions"), &relay.ca());
    c.expect("EHLO client.test", 250);
    assert_eq!(
        c.expect("AUTH PLAIN !!!not-base64!!!", 501).to_string(),
        "501 5.5.2 Invalid base64 data"
    );
    c.expect("AUTH LOGIN", 334);
    assert_eq!(
        c.expect("%%%", 501).to_string(),
        "501 5.5.2 Invalid base64 data"
    );
    c.expect("AUTH PLAIN", 334);
    assert_eq!(
        c.expect("*", 501).to_string(),
        "501 5.7.0 Authentication cancelled"
    );
    c.expect("QUIT", 221);
    relay.assert_serving();
}

#[test]
fn pipelined_junk_flood_is_cut_off() {
    let relay = Relay::start("[session]\nmax_errors = 10\n");
    let mut c = Client::connect(relay.addr("mx"));
    c.write(&b"XJUNK\r\n".repeat(1000));
    for _ in 0..10 {
        expect_reply(&mut c, 500, "5.5.1", "Command unrecognized");
    }
    expect_reply(&mut c, 421, "4.7.0", "Too many errors");
    assert!(c.read_reply().is_none(), "closed after 421");
    relay.assert_serving();
}

#[test]
fn disconnect_mid_data_leaves_nothing_queued() {
    let relay = Relay::start("");
    let mut c = in_data(&relay);
    c.write(b"Subject: half\r\n\r\nthe first half of a message\r\n");
    drop(c);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(relay.queued(), 0);
    let spool = std::fs::read_dir(relay.data_dir().join("queue/spool"))
        .unwrap()
        .count();
    assert_eq!(spool, 0, "no half-written body in the spool");
    assert!(relay.logged(&["\"outcome\":\"disconnected-in-data\""]));
    relay.assert_serving();
}

#[test]
fn silent_client_gets_421_after_the_timeout() {
    let relay = Relay::start("[session]\ncommand_timeout = \"1s\"\ndata_timeout = \"1s\"\n");
    let mut c = greeted(&relay);
    let started = std::time::Instant::now();
    expect_reply(&mut c, 421, "4.4.2", "Timeout");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    assert!(c.read_reply().is_none());
    // Also in the middle of DATA.
    let mut c = in_data(&relay);
    c.write(b"Subject: stalled\r\n");
    expect_reply(&mut c, 421, "4.4.2", "Timeout");
    assert_eq!(relay.queued(), 0);
    relay.assert_serving();
}

#[test]
fn tls_handshake_garbage_is_dropped() {
    let relay = Relay::start("[session]\ntls_handshake_timeout = \"2s\"\n");
    // Garbage instead of a ClientHello on the implicit-TLS port.
    let mut s = Client::raw(relay.addr("submissions"));
    s.write_all(&[
        0x16, 0x03, 0x01, 0xff, 0xff, b'G', b'A', b'R', b'B', b'A', b'G', b'E',
    ])
    .unwrap();
    s.write_all(&[0u8; 512]).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(!buf.starts_with(b"220"), "no SMTP greeting before TLS");
    // Plain SMTP spoken to the TLS port.
    let mut s = Client::raw(relay.addr("submissions"));
    s.write_all(b"EHLO client.test\r\n").unwrap();
    let _ = s.read_to_end(&mut buf);
    // Garbage after STARTTLS.
    let mut c = Client::connect(relay.addr("submission"));
    c.expect("EHLO client.test", 250);
    c.expect("STARTTLS", 220);
    c.write(b"this is not a TLS record\r\n\r\n");
    let (bytes, closed) = c.read_until_closed();
    assert!(closed, "the server closes (after at most a TLS alert)");
    assert!(
        !bytes.starts_with(b"2") && !bytes.starts_with(b"5"),
        "no SMTP reply in clear: {bytes:?}"
    );
    assert!(
        relay.logged(&["\"outcome\":\"tls-failed\""]) || relay.logged(&["tls-handshake-failed"])
    );
    relay.assert_serving();
    // The TLS listener still works too.
    let mut c = Client::connect_tls(relay.addr("submissions"), &relay.ca());
    c.expect("EHLO client.test", 250);
    c.expect("QUIT", 221);
}

#[test]
fn connection_limit_per_ip_answers_421() {
    let relay = Relay::start_with_listener_limit(2);
    let _a = Client::connect(relay.addr("mx"));
    let _b = Client::connect(relay.addr("mx"));
    let mut s = Client::raw(relay.addr("mx"));
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    assert!(buf.starts_with("421 4.7.0"), "{buf:?}");
    drop(_a);
    std::thread::sleep(std::time::Duration::from_millis(200));
    relay.assert_serving();
}
