//! One fuzz target over every public entry point of amtp-proto. The first byte picks how the
//! input is split for the incremental parsers; nothing may panic, loop or grow without bound.
#![no_main]

use amtp_proto::mpc::{Mpc, MpcPolicy};
use amtp_proto::{DataReceiver, Domain, LineBuffer, Mailbox, Progress, command, headers, reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let split = usize::from(split).min(input.len());

    // Line splitting + command parsing, fed in two chunks.
    let mut lines = LineBuffer::new(512);
    for part in [&input[..split], &input[split..]] {
        lines.push(part);
        while let Some(line) = lines.next_line() {
            if let Ok(line) = line {
                if let Err(e) = command::parse(&line) {
                    let _ = e.reply().to_bytes();
                }
            }
        }
    }
    let _ = lines.take_unconsumed();

    // The DATA receiver, split at the same point; bounded body.
    let mut rx = DataReceiver::new(4096);
    let mut done = false;
    for part in [&input[..split], &input[split..]] {
        if let Progress::Done { consumed } = rx.feed(part) {
            assert!(consumed <= part.len());
            done = true;
            break;
        }
    }
    assert!(rx.len() <= 4096);
    if done {
        let _ = rx.finish();
    }

    // The outbound client fed every reply the input parses into; it must never panic.
    let mut client = amtp_proto::client::Client::new(amtp_proto::client::ClientConfig { ehlo_name: "relay.test".into(), tls: amtp_proto::client::TlsPolicy::Opportunistic, amtp: split % 2 == 0, peer: "peer.test".into() });
    let mut rest = input;
    let mut sent_message = false;
    while let Ok(Some((r, used))) = reply::parse_reply(rest, 1024) {
        for out in client.on_reply(r) {
            match out {
                amtp_proto::client::Output::Ready if !sent_message => {
                    sent_message = true;
                    let _ = client.send(amtp_proto::client::Envelope { from: "a@b.test".into(), recipients: vec!["c@d.test".into(), "e@f.test".into()], mpc: "per/individual".parse().ok(), size: 10, body: amtp_proto::client::BodyType::EightBitMime, eight_bit: true, smtputf8: false, utf8_headers: false });
                }
                amtp_proto::client::Output::StartTls => {
                    let _ = client.on_tls();
                }
                _ => {}
            }
        }
        rest = &rest[used..];
    }
    let _ = client.on_connection_lost(&amtp_proto::client::Cause::Connection("end of input".into()));
    let _ = amtp_proto::client::dot_stuff(input);

    // Replies (client side), MPC values and policy lines, headers, addresses.
    let _ = reply::parse_reply(input, 1024);
    if let Ok(text) = std::str::from_utf8(input) {
        let _ = text.parse::<Mpc>();
        let lines: Vec<&str> = text.lines().collect();
        if let Ok(Some(policy)) = MpcPolicy::from_ehlo_lines(&lines) {
            let _ = policy.ehlo_line();
            for m in ["com/optin", "mpc/individual", "per/individual"] {
                let _ = policy.evaluate(&m.parse().unwrap());
            }
        }
        let _ = MpcPolicy::parse_declarations(text);
        let _ = Domain::parse(text);
        let _ = Mailbox::parse(text);
        let _ = headers::find(input, text.split(':').next().unwrap_or(""));
    }
    let _ = amtp_proto::received::rfc5322_date(u64::from_le_bytes(input.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8])) % 253_402_300_800);
});
