//! Parser benches: how fast the pure protocol layer turns bytes into commands and messages.
//!
//! - `command_parser`: a captured submission session (EHLO, MAIL with parameters, 10 RCPTs,
//!   DATA, RSET, NOOP, QUIT; 40 transactions) split into lines by the bounded `LineBuffer`
//!   and parsed — models the per-command CPU cost on the hot path. Reported in bytes/s.
//! - `data_receiver`: a 1 MB message with dot-stuffed lines fed in 16 KiB reads (the driver's
//!   read size) — models the DATA phase. Reported in bytes/s.
//! - `session_step`: one full transaction through the session state machine (no I/O) — the
//!   decision cost per message, excluding parsing and storage.

use amtp_actors::config::{ListenerConfig, ListenerRole, SessionConfig};
use amtp_actors::session::{Action, Session, SessionContext};
use amtp_proto::{DataReceiver, LineBuffer, Progress, command};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;

fn captured_session() -> Vec<u8> {
    let mut s = String::from("EHLO client.example.test\r\n");
    for t in 0..40 {
        s.push_str(&format!(
            "MAIL FROM:<sender{t}@example.test> SIZE=20480 BODY=8BITMIME MPC=com/optin\r\n"
        ));
        for r in 0..10 {
            s.push_str(&format!(
                "RCPT TO:<recipient{r}.{t}@destination.example.test>\r\n"
            ));
        }
        s.push_str("DATA\r\nRSET\r\nNOOP\r\n");
    }
    s.push_str("QUIT\r\n");
    s.into_bytes()
}

fn command_parser(c: &mut Criterion) {
    let input = captured_session();
    let mut g = c.benchmark_group("command_parser");
    g.throughput(Throughput::Bytes(u64::try_from(input.len()).unwrap()));
    g.bench_function("captured_session", |b| {
        b.iter(|| {
            let mut lines = LineBuffer::new(amtp_proto::limits::AUTH_LINE);
            let mut n = 0usize;
            for chunk in input.chunks(4096) {
                lines.push(chunk);
                while let Some(Ok(line)) = lines.next_line() {
                    n += usize::from(command::parse(black_box(&line)).is_ok());
                }
            }
            n
        })
    });
    g.finish();
}

fn data_receiver(c: &mut Criterion) {
    let mut body = Vec::with_capacity(1_100_000);
    body.extend_from_slice(b"From: a@example.test\r\nTo: b@example.test\r\nSubject: bench\r\n\r\n");
    let mut i = 0u32;
    while body.len() < 1_000_000 {
        if i.is_multiple_of(20) {
            body.extend_from_slice(b"..a line that starts with a dot and is stuffed\r\n");
        }
        body.extend_from_slice(
            format!("line {i} of the message body, ordinary text of a typical length for mail\r\n")
                .as_bytes(),
        );
        i += 1;
    }
    body.extend_from_slice(b".\r\n");
    let mut g = c.benchmark_group("data_receiver");
    g.throughput(Throughput::Bytes(u64::try_from(body.len()).unwrap()));
    g.bench_function("1MB_16KiB_reads", |b| {
        b.iter(|| {
            let mut rx = DataReceiver::new(25_000_000);
            for chunk in body.chunks(16 * 1024) {
                if let Progress::Done { .. } = rx.feed(black_box(chunk)) {
                    break;
                }
            }
            rx.finish().map(|m| m.len())
        })
    });
    g.finish();
}

fn session_step(c: &mut Criterion) {
    let listener = Arc::new(ListenerConfig {
        name: "mx".into(),
        role: ListenerRole::Mx,
        address: "127.0.0.1:25".parse().unwrap(),
        max_connections: 10,
        max_connections_per_ip: 10,
        auth: None,
        cram_md5: false,
        allow_insecure_auth: false,
        default_mpc: None,
        proxy_protocol: false,
        proxy_trusted: Vec::new(),
        proxy_header_timeout: amtp_actors::units::HumanDuration(std::time::Duration::from_secs(5)),
    });
    let ctx = SessionContext {
        hostname: Arc::from("relay.example.test"),
        listener,
        limits: Arc::new(SessionConfig::default()),
        local_domains: Arc::new(["example.test".to_string()].into_iter().collect()),
        peer: "127.0.0.1:40000".parse().unwrap(),
        tls_available: true,
        cram_md5: false,
        nonce: "bench".into(),
        amtp: None,
        user_mpcs: Arc::default(),
    };
    let lines: Vec<Result<command::Command, amtp_proto::CommandError>> = [
        "EHLO client.test",
        "MAIL FROM:<a@sender.test> SIZE=1000",
        "RCPT TO:<b@example.test>",
        "RCPT TO:<c@example.test>",
        "DATA",
    ]
    .iter()
    .map(|l| command::parse(l.as_bytes()))
    .collect();
    let body = b"Subject: bench\r\nMessage-ID: <1@sender.test>\r\n\r\nhello\r\n".to_vec();
    c.bench_function("session_step/transaction", |b| {
        b.iter(|| {
            let mut s = Session::new(ctx.clone(), None);
            let mut n = 0;
            for cmd in &lines {
                n += s.on_command(cmd.clone()).len();
            }
            for a in s.on_data(
                Ok(body.clone()),
                1_795_339_800,
                Some(amtp_storage::QueueId(1)),
            ) {
                if let Action::Enqueue(m) = a {
                    n += m.body.len();
                }
            }
            n += s.on_enqueued(Ok(amtp_storage::QueueId(1))).len();
            black_box(n)
        })
    });
}

criterion_group!(benches, command_parser, data_receiver, session_step);
criterion_main!(benches);
