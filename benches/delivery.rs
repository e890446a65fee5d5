//! Delivery throughput, measured end to end with the release relay binary (not criterion: each
//! run is one timed pipeline). The queue is filled on disk first, then the relay is started and
//! the SMTP sinks on loopback count arrivals, so the figure is outbound delivery alone:
//! lease, route, connect, SMTP dialogue (pipelined), 250, queue completion (fsync).
//!
//! - `1 destination`: every message to one route.
//! - `100 destinations`: messages spread over 100 domains, each routed to its own sink port.
//! - the connection reuse ratio: messages per connection at the sinks.
//! - `100,000 deferred`: messages to a closed port; after every one was tried once, the relay's
//!   resident memory and the queue's size on disk.
//!
//! Run: `cargo bench --bench delivery` (environment: `AMTP_BENCH_MESSAGES`, default 2000;
//! `AMTP_BENCH_DEFERRED`, default 100000).

#[path = "../tests/e2e/sink.rs"]
#[allow(dead_code)]
mod sink;

use amtp_storage::{BodyType, Envelope, NewMessage, Origin, Queue};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_amtp-relay");

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fill(dir: &std::path::Path, n: usize, domains: usize) {
    let (queue, _) = Queue::open(&dir.join("data/queue")).unwrap();
    let body: Vec<u8> = format!(
        "Subject: bench\r\nFrom: a@src.test\r\n\r\n{}\r\n",
        "x".repeat(4000)
    )
    .into_bytes();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let batch: Vec<NewMessage> = chunk
            .iter()
            .map(|i| NewMessage {
                id: None,
                envelope: Envelope {
                    sender: "a@src.test".into(),
                    mpc: Some("per/individual".into()),
                    origin: Origin::Submission,
                    listener: "bench".into(),
                    client_ip: "127.0.0.1".into(),
                    auth_user: None,
                    message_id: None,
                    body: BodyType::Unspecified,
                    smtputf8: false,
                },
                recipients: vec![format!("r{i}@d{}.test", i % domains)],
                body: body.clone().into(),
            })
            .collect();
        queue.enqueue_batch(&batch).unwrap();
    }
}

fn config(routes: &str, local: &str) -> String {
    format!(
        "[server]\nhostname = \"bench.test\"\ndata_dir = \"data\"\nlocal_domains = [{local}]\n\n[logging]\nlevel = \"warn\"\n\n[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:0\"\n\n[delivery]\npoll_interval = \"100ms\"\nconcurrency_per_destination = 4\nmax_messages_per_connection = 50\nfirst_retry = \"1h\"\n\n{routes}\n[resolver]\nservers = [\"127.0.0.1:9\"]\n"
    )
}

fn start(dir: &std::path::Path, text: &str) -> Child {
    std::fs::write(dir.join("relay.toml"), text).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--log-format", "json", "--config"])
        .arg(dir.join("relay.toml"))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
    child
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p).map_or(0, |rd| {
        rd.flatten()
            .map(|e| {
                if e.path().is_dir() {
                    dir_size(&e.path())
                } else {
                    e.metadata().map_or(0, |m| m.len())
                }
            })
            .sum()
    })
}

fn throughput(n: usize, destinations: usize) {
    let dir = tempfile::tempdir().unwrap();
    let sinks: Vec<sink::Sink> = (0..destinations)
        .map(|_| sink::Sink::start("127.0.0.1:0"))
        .collect();
    let mut routes = String::new();
    let mut local = Vec::new();
    for (i, s) in sinks.iter().enumerate() {
        routes.push_str(&format!("[[delivery.route]]\ndomains = [\"d{i}.test\"]\nhost = \"127.0.0.1\"\nport = {}\nprotocol = \"smtp\"\ntls = \"none\"\n\n", s.addr.port()));
        local.push(format!("\"d{i}.test\""));
    }
    fill(dir.path(), n, destinations);
    let started = Instant::now();
    let mut relay = start(dir.path(), &config(&routes, &local.join(", ")));
    let total = || {
        sinks
            .iter()
            .map(|s| s.messages.lock().unwrap().len())
            .sum::<usize>()
    };
    while total() < n && started.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    let delivered = total();
    let connections: usize = sinks
        .iter()
        .map(|s| s.connections.load(Ordering::SeqCst))
        .sum();
    let _ = relay.kill();
    let _ = relay.wait();
    println!(
        "delivery/{destinations}_destinations: {delivered} messages (4 KiB) in {secs:.2} s = {:.0} deliveries/s (incl. start-up); {connections} connections, reuse {:.1} messages/connection",
        delivered as f64 / secs,
        delivered as f64 / connections.max(1) as f64
    );
}

fn deferred(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Instant::now();
    fill(dir.path(), n, 1);
    println!(
        "delivery/deferred: enqueued {n} messages in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let routes = format!(
        "[[delivery.route]]\ndomains = [\"d0.test\"]\nhost = \"127.0.0.1\"\nport = {closed}\nprotocol = \"smtp\"\ntls = \"none\"\n"
    );
    let mut relay = start(dir.path(), &config(&routes, "\"d0.test\""));
    let idle_rss = rss_kib(relay.id());
    // Wait until `settle` messages have been attempted once (all of them would take the
    // attempt rate into n; the rate is reported), then measure.
    let settle = env_or("AMTP_BENCH_SETTLE", 10_000).min(n);
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let out = Command::new(BIN)
            .args(["queue", "stats", "--data-dir"])
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let deferred: usize = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("deferred:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if deferred >= settle || started.elapsed() > Duration::from_secs(900) {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "delivery/deferred: {deferred} of {n} attempted once and deferred after {secs:.1} s ({:.0} first attempts/s)",
                deferred as f64 / secs
            );
            break;
        }
    }
    let rss = rss_kib(relay.id());
    let disk = dir_size(&dir.path().join("data/queue"));
    let db = dir_size(&dir.path().join("data/queue/db"));
    println!(
        "delivery/deferred: relay RSS {} MiB (at start {} MiB); queue on disk {} MiB (sled {} MiB, spool {} MiB)",
        rss / 1024,
        idle_rss / 1024,
        disk >> 20,
        db >> 20,
        (disk - db) >> 20
    );
    let _ = relay.kill();
    let _ = relay.wait();
}

fn main() {
    // cargo bench passes --bench; `cargo test --benches` passes nothing useful: run only on --bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env_or("AMTP_BENCH_MESSAGES", 2000);
    throughput(n, 1);
    throughput(n, 100);
    deferred(env_or("AMTP_BENCH_DEFERRED", 100_000));
}
