//! Delivery end to end: the relay binary delivering to an SMTP sink on loopback through a
//! configured route — the MPC header added when mail leaves AMTP, retries after the next hop
//! comes back, bounces for permanent failures (with typed DSN fields), 8-bit and SMTPUTF8 mail
//! (RFC 6152, RFC 6531), no loss across kill -9 mid-delivery, and a message whose body was
//! deleted from the spool returned to its sender.

use crate::harness::{Client, Relay, wait_until};
use crate::sink::Sink;
use std::time::Duration;

fn config(sink_port: u16, extra: &str) -> String {
    format!(
        r#"
{server}
[delivery]
server_ca = "{roots}"
poll_interval = "200ms"
first_retry = "1s"
max_backoff = "2s"
connect_timeout = "2s"
command_timeout = "10s"
{extra}

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
        server = crate::harness::SERVER,
        roots = crate::harness::unused_roots().display(),
    )
}

/// Submit one message over the mx listener; returns the queue id.
fn submit(relay: &Relay, from: &str, to: &str, mpc: Option<&str>, subject: &str) -> String {
    let mut c = Client::connect(relay.addr("mx"));
    c.expect("EHLO client.test", 250);
    let mail = match mpc {
        Some(m) => format!("MAIL FROM:<{from}> MPC={m}"),
        None => format!("MAIL FROM:<{from}>"),
    };
    c.expect(&mail, 250);
    c.expect(&format!("RCPT TO:<{to}>"), 250);
    c.expect("DATA", 354);
    c.write(format!("Subject: {subject}\r\nMessage-ID: <{subject}@sender.test>\r\n\r\n..leading dot line\r\nbody\r\n.\r\n").as_bytes());
    let r = c.read_reply().unwrap();
    assert_eq!(r.code, 250, "{r}");
    c.expect("QUIT", 221);
    r.text().rsplit(' ').next().unwrap().to_string()
}

#[test]
fn delivers_to_the_mailbox_store_with_the_mpc_header() {
    let sink = Sink::start("127.0.0.1:0");
    let relay = Relay::start_config(&config(sink.addr.port(), ""));
    submit(
        &relay,
        "alice@sender.test",
        "bob@example.test",
        Some("per/individual"),
        "first",
    );
    let got = sink.wait_for(1, 15);
    assert_eq!(got.len(), 1, "delivered");
    let m = &got[0];
    assert_eq!(
        (m.from.as_str(), m.rcpts.clone()),
        ("alice@sender.test", vec!["bob@example.test".to_string()])
    );
    assert!(
        m.data
            .starts_with("MPC: per/individual\r\nReceived: from client.test"),
        "the MPC header is added when mail leaves AMTP:\n{}",
        m.data
    );
    assert!(
        m.data.contains("\r\n.leading dot line\r\n"),
        "dot-stuffing round trip:\n{}",
        m.data
    );
    assert!(
        wait_until(10, || relay.queued() == 0),
        "removed from the queue after the next hop's 250"
    );
    assert!(relay.logged(&["\"message\":\"delivered\"", "\"rcpt\":\"bob@example.test\""]));
}

#[test]
fn next_hop_down_then_up_delivers_after_retry() {
    // Reserve a port, leave it closed: the next hop is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let relay = Relay::start_config(&config(port, ""));
    let id = submit(
        &relay,
        "alice@sender.test",
        "bob@example.test",
        None,
        "retry",
    );
    assert!(
        wait_until(15, || {
            let (_, show, _) = relay.queue_cli(&["show", &id]);
            show.contains("attempts:     1") || show.contains("attempts:     2")
        }),
        "the first attempt is deferred"
    );
    let (_, show, _) = relay.queue_cli(&["show", &id]);
    assert!(
        show.contains("pending 4.4.1") && show.contains("cannot connect: 127.0.0.1"),
        "the stored status and cause are shown:\n{show}"
    );
    let sink = Sink::start(&format!("127.0.0.1:{port}"));
    assert_eq!(
        sink.wait_for(1, 20).len(),
        1,
        "delivered once the next hop is up"
    );
    assert!(wait_until(10, || relay.queued() == 0));
}

#[test]
fn permanent_failure_bounces_to_the_sender() {
    let sink = Sink::start("127.0.0.1:0");
    sink.behaviour
        .lock()
        .unwrap()
        .reject
        .push("nobody@example.test".into());
    let relay = Relay::start_config(&config(sink.addr.port(), ""));
    submit(
        &relay,
        "alice@example.test",
        "nobody@example.test",
        Some("per/individual"),
        "doomed",
    );
    // The DSN goes to alice@example.test, which routes to the same sink.
    let got = sink.wait_for(1, 20);
    assert_eq!(got.len(), 1, "{got:?}");
    let dsn = &got[0];
    assert_eq!(
        (dsn.from.as_str(), dsn.rcpts.clone()),
        ("", vec!["alice@example.test".to_string()]),
        "from the null sender"
    );
    for needle in [
        "MPC: net/autoresponse",
        "Subject: Undelivered Mail Returned to Sender",
        "Final-Recipient: rfc822; nobody@example.test",
        "Status: 5.1.1\r\nRemote-MTA: dns; 127.0.0.1\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user here\r\n",
        "Its header section (not the whole message) is attached below.",
        "Message-ID: <doomed@sender.test>",
    ] {
        assert!(dsn.data.contains(needle), "{needle} in\n{}", dsn.data);
    }
    assert!(
        wait_until(10, || relay.queued() == 0),
        "original and DSN both gone"
    );
}

#[test]
fn a_message_that_already_has_an_mpc_header_is_bounced_not_delivered() {
    let sink = Sink::start("127.0.0.1:0");
    let relay = Relay::start_config(&config(sink.addr.port(), ""));
    let mut c = Client::connect(relay.addr("mx"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<alice@example.test> MPC=per/individual", 250);
    c.expect("RCPT TO:<bob@example.test>", 250);
    c.expect("DATA", 354);
    c.write(b"Subject: sneaky\r\nMPC: com/confirmed\r\n\r\nbody\r\n.\r\n");
    assert_eq!(
        c.read_reply().unwrap().code,
        250,
        "SMTP listeners do not check the header; delivery does"
    );
    let got = sink.wait_for(1, 20);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].from, "", "only the DSN arrives, never the message");
    assert!(
        got[0].data.contains("already carries an MPC header")
            && got[0].data.contains("Subject: sneaky"),
        "{}",
        got[0].data
    );
}

#[test]
fn kill_9_mid_delivery_loses_nothing() {
    let sink = Sink::start("127.0.0.1:0");
    sink.behaviour.lock().unwrap().stall = Some(Duration::from_secs(3));
    let text = config(sink.addr.port(), "");
    let relay = Relay::start_config(&text);
    submit(
        &relay,
        "alice@sender.test",
        "bob@example.test",
        None,
        "crash",
    );
    assert!(
        wait_until(15, || sink
            .data_started
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0),
        "delivery in flight"
    );
    let dir = relay.kill9();
    sink.behaviour.lock().unwrap().stall = None;
    // The sink may or may not keep the stalled copy; what matters is that the message arrives.
    let relay = Relay::start_config_in(dir, &text);
    assert!(
        wait_until(20, || sink
            .messages
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.data.contains("Subject: crash"))),
        "delivered after the restart"
    );
    assert!(wait_until(10, || relay.queued() == 0));
    // Leases are not flushed (start-up clears them), so whether the killed relay's lease
    // reached the disk depends on sled's background flush: the reset count is 0 or 1. What
    // matters is above: the message was delivered after the restart and left the queue.
    assert!(
        relay.logged(&["queue opened", "\"leases_reset\":0"])
            || relay.logged(&["queue opened", "\"leases_reset\":1"]),
        "the queue reports its start-up reconciliation"
    );
}

#[test]
fn queue_administration_while_running_and_stopped() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A long first retry keeps the messages queued while we look at them.
    let relay = Relay::start_config(
        &config(port, "").replace("first_retry = \"1s\"", "first_retry = \"1h\""),
    );
    let a = submit(
        &relay,
        "alice@example.test",
        "bob@example.test",
        None,
        "admin-a",
    );
    let b = submit(
        &relay,
        "alice@example.test",
        "carol@example.test",
        None,
        "admin-b",
    );
    let (ok, stats, err) = relay.queue_cli(&["stats"]);
    assert!(ok, "{err}");
    assert!(
        stats.contains("messages:    2")
            && stats.contains("example.test")
            && stats.contains(" 2\n"),
        "{stats}"
    );
    assert!(
        wait_until(10, || relay
            .queue_cli(&["stats"])
            .1
            .contains("deferred:  2")),
        "both attempted once and deferred"
    );
    let (ok, out, _) = relay.queue_cli(&["retry", &a]);
    assert!(ok && out.contains("due now"), "{out}");
    let (ok, out, _) = relay.queue_cli(&["retry", "--all"]);
    assert!(ok && out.contains("message(s) made due now"), "{out}");
    let (ok, out, _) = relay.queue_cli(&["delete", &a]);
    assert!(ok && out.contains("deleted"), "{out}");
    let (ok, out, _) = relay.queue_cli(&["bounce", &b]);
    assert!(
        ok && out.contains("a DSN was queued to the sender"),
        "{out}"
    );
    let (_, list, _) = relay.queue_cli(&["list"]);
    let ids: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        !ids.contains(&a.as_str()) && !ids.contains(&b.as_str()),
        "both gone:\n{list}"
    );
    assert!(
        list.contains("<>") && list.contains("alice@example.test") && list.contains("1 message(s)"),
        "only the DSN is left:\n{list}"
    );
    let (ok, _, err) = relay.queue_cli(&["show", &a]);
    assert!(!ok && err.contains("no message"), "{err}");
    let (ok, out, err) = relay.queue_cli(&["compact"]);
    assert!(ok && out.contains("sparse segment(s)"), "{out}{err}");
    // Stopped: the same commands work on the data directory.
    let dir = relay.stop();
    let cli = |args: &[&str]| {
        let (ok, out, _) = crate::harness::queue_cli(&dir.path().join("data"), args);
        (ok, out)
    };
    let (ok, stats) = cli(&["stats"]);
    assert!(ok && stats.contains("messages:    1"), "{stats}");
    let dsn_id = cli(&["list"])
        .1
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    // A compaction pass on the stopped relay's queue (every segment is closed now): the
    // DSN's body is still there.
    let (ok, out) = cli(&["compact"]);
    assert!(ok && out.contains("sparse segment(s)"), "{out}");
    let (ok, show) = cli(&["show", &dsn_id]);
    assert!(ok && show.contains("Subject:"), "{show}");
    assert!(cli(&["delete", &dsn_id]).0);
    assert_eq!(cli(&["list"]).1, "queue is empty\n");
}

#[test]
fn a_dead_next_hop_defers_every_queued_message_promptly() {
    // A black hole: connections are accepted by the kernel (backlog) but never greeted, so each
    // attempt waits for the command timeout while the rest of the burst queues up behind it.
    // When the destination gives up, more jobs wait than one connection's result channel holds:
    // every one must still be reported and deferred, none left "in delivery" until its lease
    // runs out.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    let text = config(port, "")
        .replace("first_retry = \"1s\"", "first_retry = \"1h\"")
        .replace("command_timeout = \"10s\"", "command_timeout = \"3s\"");
    let relay = Relay::start_config(&text);
    let mut c = Client::connect(relay.addr("mx"));
    c.expect("EHLO client.test", 250);
    for i in 0..60 {
        c.expect("MAIL FROM:<alice@sender.test>", 250);
        c.expect(&format!("RCPT TO:<r{i}@example.test>"), 250);
        c.expect("DATA", 354);
        c.write(b"Subject: burst\r\n\r\nx\r\n.\r\n");
        assert_eq!(c.read_reply().unwrap().code, 250);
    }
    c.expect("QUIT", 221);
    let deferred = wait_until(30, || {
        relay.queue_cli(&["stats"]).1.contains("deferred:  60")
    });
    assert!(
        deferred,
        "all 60 deferred:\n{}",
        relay.queue_cli(&["stats"]).1
    );
    drop(hole);
}

/// Submit `data` (already dot-stuffed, ending in CRLF) with `mail` as the MAIL command.
fn submit_raw(relay: &Relay, mail: &str, to: &str, data: &str) {
    let mut c = Client::connect(relay.addr("mx"));
    c.expect("EHLO client.test", 250);
    c.expect(mail, 250);
    c.expect(&format!("RCPT TO:<{to}>"), 250);
    c.expect("DATA", 354);
    c.write(format!("{data}.\r\n").as_bytes());
    let r = c.read_reply().unwrap();
    assert_eq!(r.code, 250, "{r}");
    c.expect("QUIT", 221);
}

/// RFC 6152 / RFC 6531: mail received with BODY=8BITMIME and SMTPUTF8 leaves with both for a
/// next hop that offers them, and says `with UTF8SMTP` in our Received header.
#[test]
fn eight_bit_mail_is_relayed_as_8bitmime_and_utf8_mail_is_marked() {
    let sink = Sink::start("127.0.0.1:0");
    sink.behaviour.lock().unwrap().smtputf8 = true;
    let relay = Relay::start_config(&config(sink.addr.port(), ""));
    submit_raw(
        &relay,
        "MAIL FROM:<alice@sender.test> BODY=8BITMIME SMTPUTF8",
        "bob@example.test",
        "Subject: caf\u{e9}\r\n\r\nna\u{ef}ve 8-bit body\r\n",
    );
    let got = sink.wait_for(1, 15);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].mail.contains(" BODY=8BITMIME") && got[0].mail.contains(" SMTPUTF8"),
        "BODY=8BITMIME and SMTPUTF8 on the next hop: {}",
        got[0].mail
    );
    assert!(
        got[0].data.contains("na\u{ef}ve 8-bit body"),
        "{}",
        got[0].data
    );
    assert!(
        got[0].data.contains(") with UTF8SMTP\r\n") || got[0].data.contains(") with UTF8SMTP "),
        "RFC 6531 transmission type:\n{}",
        got[0].data
    );
}

/// RFC 6152: 8-bit data is never sent to a next hop that does not offer 8BITMIME; the
/// message is bounced with 5.6.3 (our documented choice: no downgrade).
#[test]
fn eight_bit_mail_to_a_hop_without_8bitmime_is_bounced_with_5_6_3() {
    let sink = Sink::start("127.0.0.1:0");
    sink.behaviour.lock().unwrap().no_8bitmime = true;
    let relay = Relay::start_config(&config(sink.addr.port(), ""));
    submit_raw(
        &relay,
        "MAIL FROM:<alice@example.test> BODY=8BITMIME MPC=per/individual",
        "bob@example.test",
        "Subject: eight\r\nMessage-ID: <eight@sender.test>\r\n\r\nna\u{ef}ve\r\n",
    );
    let got = sink.wait_for(1, 20);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].from, "", "only the DSN arrives: {:?}", got[0]);
    for needle in [
        "Final-Recipient: rfc822; bob@example.test",
        "Status: 5.6.3\r\nRemote-MTA: dns; 127.0.0.1\r\nDiagnostic-Code: X-AMTP-Relay; ",
        "8BITMIME",
        "Message-ID: <eight@sender.test>",
    ] {
        assert!(got[0].data.contains(needle), "{needle} in\n{}", got[0].data);
    }
    assert!(
        !got[0].data.contains("na\u{ef}ve"),
        "the body is not sent back"
    );
}

/// A next hop that refuses our EHLO (as an AMTP peer that does not trust us does): we say
/// QUIT before closing, and the DSN keeps the peer's status (5.7.1, not 5.0.0) with the peer
/// as Remote-MTA and its reply as an `smtp` diagnostic.
#[test]
fn a_refused_ehlo_gets_quit_and_the_dsn_keeps_the_peer_status() {
    let refusing = Sink::start("127.0.0.1:0");
    refusing.behaviour.lock().unwrap().ehlo_reply =
        Some("504 5.7.1 your certificate is not trusted here".into());
    let home = Sink::start("127.0.0.1:0");
    let extra = format!(
        "\n[[delivery.route]]\ndomains = [\"sender.test\"]\nhost = \"127.0.0.1\"\nport = {}\nprotocol = \"smtp\"\ntls = \"none\"\n",
        home.addr.port()
    );
    let relay = Relay::start_config(&config(refusing.addr.port(), &extra));
    submit(
        &relay,
        "alice@sender.test",
        "bob@example.test",
        Some("per/individual"),
        "refused",
    );
    let got = home.wait_for(1, 20);
    assert_eq!(got.len(), 1, "the DSN reaches the sender's domain");
    let needle = "Action: failed\r\nStatus: 5.7.1\r\nRemote-MTA: dns; 127.0.0.1\r\nDiagnostic-Code: smtp; 504 5.7.1 your certificate is not trusted here\r\n";
    assert!(got[0].data.contains(needle), "{needle} in\n{}", got[0].data);
    assert!(
        refusing.quits.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "QUIT after the refused EHLO"
    );
}

/// Connection reuse when mail trickles in: each message is submitted only after the previous
/// one was delivered, so the destination's queue is empty between them. A connection that
/// quit as soon as its queue ran dry carried one message each (six connections); lingering
/// for the next job, one connection carries them all (a slow moment may cost a second one).
#[test]
fn a_trickle_of_mail_reuses_one_connection() {
    let sink = Sink::start("127.0.0.1:0");
    let relay = Relay::start_config(&config(sink.addr.port(), ""));
    for i in 0..6 {
        submit(
            &relay,
            "alice@sender.test",
            "bob@example.test",
            None,
            &format!("trickle-{i}"),
        );
        assert_eq!(
            sink.wait_for(i + 1, 15).len(),
            i + 1,
            "message {i} delivered"
        );
    }
    let connections = sink.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(connections <= 2, "{connections} connections for 6 messages");
}

/// A local configuration error met at delivery time (here a `source_address` this host does
/// not have) defers the mail with 4.3.5 and logs at error level; it never bounces.
#[test]
fn a_local_configuration_error_defers_and_logs_an_error() {
    let sink = Sink::start("127.0.0.1:0");
    let text = config(sink.addr.port(), "source_address = \"192.0.2.1\"")
        .replace("first_retry = \"1s\"", "first_retry = \"1h\"");
    let relay = Relay::start_config(&text);
    let id = submit(
        &relay,
        "alice@example.test",
        "bob@example.test",
        Some("per/individual"),
        "misconfigured",
    );
    assert!(
        wait_until(15, || relay
            .queue_cli(&["show", &id])
            .1
            .contains("attempts:     1")),
        "attempted once"
    );
    let (_, show, _) = relay.queue_cli(&["show", &id]);
    assert!(
        show.contains("pending 4.3.5")
            && show.contains("local configuration error: cannot bind source address 192.0.2.1"),
        "{show}"
    );
    assert!(
        relay.logged(&["ERROR", "local configuration error", "bob@example.test"]),
        "logged at error level"
    );
    assert!(
        sink.messages.lock().unwrap().is_empty(),
        "no DSN, nothing sent"
    );
}

/// RFC 6531: a message received with SMTPUTF8 whose header fields are UTF-8 needs a next hop
/// with SMTPUTF8; without it the message is bounced with 5.6.7, not sent raw.
#[test]
fn utf8_headers_to_a_hop_without_smtputf8_are_bounced_with_5_6_7() {
    let sink = Sink::start("127.0.0.1:0");
    let relay = Relay::start_config(&config(sink.addr.port(), ""));
    submit_raw(
        &relay,
        "MAIL FROM:<alice@example.test> BODY=8BITMIME SMTPUTF8",
        "bob@example.test",
        "Subject: caf\u{e9}\r\n\r\nbody\r\n",
    );
    let got = sink.wait_for(1, 20);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].from, "", "only the DSN arrives: {:?}", got[0]);
    assert!(
        got[0]
            .data
            .contains("Status: 5.6.7\r\nRemote-MTA: dns; 127.0.0.1\r\n"),
        "{}",
        got[0].data
    );
}

/// Every spool segment file under `dir` (`s` + 16 hex digits), oldest (lowest number) first.
fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if path.is_dir() {
                dirs.push(path);
            } else if name.len() == 17
                && name.starts_with('s')
                && name[1..].bytes().all(|b| b.is_ascii_hexdigit())
            {
                found.push(path);
            }
        }
    }
    found.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    found
}

/// A queued message whose body was deleted from the spool while the relay was stopped: the
/// start-up log names it, its sender gets one DSN saying the body was lost, and it leaves the
/// queue; the message next to it is delivered. (It used to be retried every lease period for
/// ever, never attempted, never bounced.)
#[test]
fn a_message_whose_body_was_deleted_is_returned_to_its_sender() {
    let sink = Sink::start("127.0.0.1:0");
    let held = config(sink.addr.port(), "enabled = false");
    // Two runs with delivery off, one message each: each run appends to a new segment.
    let relay = Relay::start_config(&held);
    let lost = submit(
        &relay,
        "alice@example.test",
        "bob@example.test",
        Some("per/individual"),
        "lost",
    );
    let relay = Relay::start_config_in(relay.stop(), &held);
    let kept = submit(
        &relay,
        "carol@example.test",
        "dave@example.test",
        Some("per/individual"),
        "kept",
    );
    let dir = relay.stop();
    let segments = segment_files(&dir.path().join("data"));
    assert_eq!(segments.len(), 2, "{segments:?}");
    std::fs::remove_file(&segments[0]).unwrap();
    let (ok, show, err) = crate::harness::queue_cli(&dir.path().join("data"), &["show", &lost]);
    assert!(
        ok && show.contains("bob@example.test") && show.contains("is missing from the spool"),
        "the record is still shown, with what is missing: {show}{err}"
    );

    let relay = Relay::start_config_in(dir, &config(sink.addr.port(), ""));
    assert!(
        relay.logged(&["queue records without their body", &lost]),
        "the start-up log names the message"
    );
    let got = sink.wait_for(2, 20);
    assert_eq!(got.len(), 2, "{got:?}");
    let delivered: Vec<_> = got
        .iter()
        .filter(|m| m.from == "carol@example.test")
        .collect();
    assert_eq!(delivered.len(), 1, "{got:?}");
    assert!(delivered[0].data.contains("Subject: kept"));
    let dsn = got.iter().find(|m| m.from.is_empty()).unwrap();
    assert_eq!(dsn.rcpts, ["alice@example.test"]);
    for needle in [
        "Final-Recipient: rfc822; bob@example.test",
        "Status: 5.3.0",
        "Diagnostic-Code: X-AMTP-Relay; message body lost in the relay's queue; please send it again",
        "Message-ID: <lost@sender.test>",
    ] {
        assert!(dsn.data.contains(needle), "{needle} in\n{}", dsn.data);
    }
    assert!(
        wait_until(10, || relay.queued() == 0),
        "neither the lost message nor the DSN stays: {}",
        relay.queue_cli(&["list"]).1
    );
    assert!(relay.logged(&[
        "message body missing from the spool",
        &lost,
        "\"recipients\":1",
        "<alice@example.test>"
    ]));
    assert!(!relay.logged(&[&kept, "message body missing"]));
    // The queue is empty: nothing more can arrive (one DSN, no retries).
    assert_eq!(sink.messages.lock().unwrap().len(), 2);
}

/// Spool compaction on a real relay's queue: one deferred message keeps the segment its
/// delivered neighbours shared; `queue compact` on the stopped relay's queue moves it to a
/// segment of its own and deletes the old one, and the message keeps its exact body.
#[test]
fn compaction_frees_a_segment_held_by_one_deferred_message() {
    let sink = Sink::start("127.0.0.1:0");
    // A next hop that refuses connections: its mail is deferred for an hour.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = config(sink.addr.port(), "")
        .replace("first_retry = \"1s\"", "first_retry = \"1h\"")
        .replace(
            "local_domains = [\"example.test\"]",
            "local_domains = [\"example.test\", \"dead.test\"]",
        )
        + &format!(
            "\n[[delivery.route]]\ndomains = [\"dead.test\"]\nhost = \"127.0.0.1\"\nport = {dead_port}\nprotocol = \"smtp\"\ntls = \"none\"\n"
        );
    let relay = Relay::start_config(&config);
    let kept = submit(
        &relay,
        "alice@sender.test",
        "nobody@dead.test",
        None,
        "pinned",
    );
    for n in 0..20 {
        submit(
            &relay,
            "alice@sender.test",
            "bob@example.test",
            None,
            &format!("gone-{n}"),
        );
    }
    assert_eq!(sink.wait_for(20, 20).len(), 20, "the 20 were delivered");
    assert!(
        wait_until(10, || relay.queued() == 1),
        "only the deferred message is left"
    );
    let dir = relay.stop();
    let data = dir.path().join("data");
    let segments = || {
        std::fs::read_dir(data.join("queue/spool"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('s'))
            .collect::<Vec<_>>()
    };
    let before = segments();
    assert_eq!(before.len(), 1, "all 21 bodies in one segment: {before:?}");
    let (ok, shown_before, err) = crate::harness::queue_cli(&data, &["show", &kept]);
    assert!(
        ok && shown_before.contains("Subject: pinned"),
        "{shown_before}{err}"
    );
    let (ok, out, err) = crate::harness::queue_cli(&data, &["compact"]);
    assert!(
        ok && out.starts_with("1 sparse segment(s): 1 message(s) moved")
            && out.contains("1 segment(s) deleted"),
        "{out}{err}"
    );
    let after = segments();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(
        after, before,
        "the old segment is gone, the message has a new one"
    );
    let (ok, shown_after, err) = crate::harness::queue_cli(&data, &["show", &kept]);
    assert!(ok, "{err}");
    assert_eq!(
        shown_after, shown_before,
        "the message is unchanged, body included"
    );
}
