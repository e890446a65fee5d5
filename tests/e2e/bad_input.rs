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

/// A client that pipelines past the point where the relay gives up must still read the
/// relay's last reply. Closing a socket with unread input makes the kernel send a reset, and a
/// reset throws away replies still waiting in the relay's send buffer: with a small receive
/// buffer on the client (so that replies queue up on the relay's side) and unread junk left
/// behind, the `421` used to vanish and the client saw a reset instead. This is how the silent
/// client's `421` in DATA could go missing on a busy machine.
#[test]
fn last_reply_survives_unread_pipelined_input() {
    let relay = Relay::start("");
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    sock.connect(&relay.addr("mx").into()).unwrap();
    let tcp: std::net::TcpStream = sock.into();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut writer = tcp.try_clone().unwrap();
    // Far more replies than the client's receive buffer holds, then errors up to the limit
    // (10 by default) and junk the relay will never read.
    let mut input = b"EHLO client.test\r\n".to_vec();
    for _ in 0..1500 {
        input.extend_from_slice(b"NOOP\r\n");
    }
    // 64 KiB of them: more than the relay reads at once, so some stay in its socket.
    for _ in 0..8192 {
        input.extend_from_slice(b"BOGUS\r\n");
    }
    let sent = std::thread::spawn(move || {
        // The relay may reset the connection while we write: only the reading side matters.
        let _ = writer.write_all(&input);
    });
    // Read only once the relay has long answered and (in the old code) closed.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut got = Vec::new();
    let mut reader = tcp;
    let mut chunk = [0u8; 4096];
    let ended = loop {
        match reader.read(&mut chunk) {
            Ok(0) => break "end of stream".to_string(),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => break e.to_string(),
        }
    };
    sent.join().unwrap();
    let text = String::from_utf8_lossy(&got);
    assert_eq!(
        text.matches("250 2.0.0 OK").count(),
        1500,
        "ended with: {ended}"
    );
    assert!(
        text.contains("421 4.7.0"),
        "no 421 before the connection ended ({ended}); last bytes: {:?}",
        &text[text.len().saturating_sub(200)..]
    );
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
