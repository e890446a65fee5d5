//! Storage measurements without the relay around it (used by `loadtest/backlog.sh` and for
//! tuning the store):
//!
//! - `prefill DIR COUNT SIZE DOMAIN [RETRY_SECS]`: fill the queue in `DIR` with `COUNT`
//!   messages of `SIZE` bytes to `r<n>@DOMAIN`, in batches of 1,000, as the relay would
//!   commit them. With `RETRY_SECS`, each message is then recorded as attempted once and
//!   deferred for that long (what a dead next hop leaves behind), so that a relay started on
//!   the queue has a backlog to hold, not to deliver.
//! - `cycle DIR SECONDS BATCH SIZE`: for `SECONDS`, enqueue `BATCH` messages of `SIZE` bytes,
//!   lease them and complete them in one batch, over and over; prints messages/s and the
//!   process's CPU time per message (user + system, all threads, sled's included).
//! - `pinned DIR COUNT SIZE EVERY`: commit `COUNT` messages of `SIZE` bytes in batches of
//!   1,000 and deliver all of them but every `EVERY`-th, which is deferred for 2 h (a healthy
//!   stream with a few dead destinations mixed in: each deferred message pins its segment).
//! - `compact DIR [MIN_AGE_SECS]`: one compaction pass (default policy, minimum age
//!   `MIN_AGE_SECS`, default 0); prints what it did and how long it took.
//!
//! Run: `cargo run --release -p amtp-storage --example queue_tool -- prefill /tmp/q 100000 1024 dead.test 7200`.

use amtp_storage::{
    BodyType, Envelope, Finish, NewMessage, Origin, Queue, RecipientState, RecipientStatus,
};
use std::path::Path;
use std::time::{Duration, Instant};

fn message(n: u64, size: usize, domain: &str) -> NewMessage {
    let head = format!("Subject: backlog {n}\r\nFrom: <s@src.test>\r\n\r\n");
    let mut body = head.into_bytes();
    body.resize(size.max(body.len()), b'x');
    NewMessage {
        id: None,
        envelope: Envelope {
            sender: "s@src.test".into(),
            mpc: None,
            origin: Origin::Smtp,
            listener: "mx".into(),
            client_ip: "127.0.0.1".into(),
            auth_user: None,
            message_id: Some(format!("<{n}@src.test>")),
            body: BodyType::Unspecified,
            smtputf8: false,
        },
        recipients: vec![format!("r{n}@{domain}")],
        body: body.into(),
    }
}

/// CPU time of this process so far (user + system), from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn deferred(rec_recipients: &[RecipientStatus]) -> Vec<RecipientStatus> {
    rec_recipients
        .iter()
        .map(|r| RecipientStatus {
            state: RecipientState::Pending,
            last_reply: Some("connection refused".into()),
            status: Some("4.4.1".into()),
            ..r.clone()
        })
        .collect()
}

fn prefill(dir: &Path, count: u64, size: usize, domain: &str, retry_secs: Option<u64>) {
    let (queue, report) = Queue::open(dir).expect("open the queue");
    let started = Instant::now();
    let mut n = report.messages as u64;
    let target = n + count;
    while n < target {
        let batch: Vec<NewMessage> = (n..target.min(n + 1000))
            .map(|i| message(i, size, domain))
            .collect();
        let ids = queue.enqueue_batch(&batch).expect("enqueue");
        if let Some(secs) = retry_secs {
            let retry_at = amtp_storage::now_ms() + secs * 1000;
            let finish: Vec<Finish> = ids
                .iter()
                .map(|&id| {
                    let rec = queue.get(id).expect("read").expect("just enqueued");
                    Finish {
                        id,
                        outcomes: deferred(&rec.recipients),
                        retry_at: Some(retry_at),
                    }
                })
                .collect();
            for r in queue.complete_batch(&finish).expect("defer") {
                r.expect("defer one");
            }
        }
        n += batch.len() as u64;
    }
    println!(
        "prefill: {count} messages of {size} bytes in {:.1} s; queue holds {}",
        started.elapsed().as_secs_f64(),
        queue.len()
    );
}

fn cycle(dir: &Path, seconds: u64, batch: u64, size: usize) {
    let (queue, _) = Queue::open(dir).expect("open the queue");
    let cpu0 = cpu_time();
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let msgs: Vec<NewMessage> = (0..batch)
            .map(|i| message(done + i, size, "sink.test"))
            .collect();
        let ids = queue.enqueue_batch(&msgs).expect("enqueue");
        let now = amtp_storage::now_ms();
        let mut finish = Vec::with_capacity(ids.len());
        for id in ids {
            let rec = queue
                .lease(id, now, now + 60_000)
                .expect("lease")
                .expect("free");
            let _body = queue.body(id).expect("body");
            let outcomes = rec
                .recipients
                .iter()
                .map(|r| RecipientStatus {
                    state: RecipientState::Delivered,
                    last_reply: Some("250 2.0.0 ok".into()),
                    status: Some("2.0.0".into()),
                    ..r.clone()
                })
                .collect();
            finish.push(Finish {
                id,
                outcomes,
                retry_at: None,
            });
        }
        for r in queue.complete_batch(&finish).expect("complete") {
            r.expect("complete one");
        }
        done += batch;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_time().saturating_sub(cpu0);
    #[allow(clippy::cast_precision_loss)]
    let (rate, per) = (
        done as f64 / secs,
        cpu.as_micros() as f64 / done.max(1) as f64,
    );
    println!("cycle: {done} messages in {secs:.1} s = {rate:.0}/s; CPU {per:.0} µs/message");
}

fn delivered(recipients: &[RecipientStatus]) -> Vec<RecipientStatus> {
    recipients
        .iter()
        .map(|r| RecipientStatus {
            state: RecipientState::Delivered,
            last_reply: Some("250 2.0.0 ok".into()),
            status: Some("2.0.0".into()),
            ..r.clone()
        })
        .collect()
}

fn pinned(dir: &Path, count: u64, size: usize, every: u64) {
    let (queue, _) = Queue::open(dir).expect("open the queue");
    let started = Instant::now();
    let mut n = 0u64;
    let mut kept = 0u64;
    while n < count {
        let batch: Vec<NewMessage> = (n..count.min(n + 1000))
            .map(|i| message(i, size, "mixed.test"))
            .collect();
        let ids = queue.enqueue_batch(&batch).expect("enqueue");
        let retry_at = amtp_storage::now_ms() + 7_200_000;
        let finish: Vec<Finish> = ids
            .iter()
            .zip(n..)
            .map(|(&id, i)| {
                let rec = queue.get(id).expect("read").expect("just enqueued");
                if i % every == 0 {
                    kept += 1;
                    Finish {
                        id,
                        outcomes: deferred(&rec.recipients),
                        retry_at: Some(retry_at),
                    }
                } else {
                    Finish {
                        id,
                        outcomes: delivered(&rec.recipients),
                        retry_at: None,
                    }
                }
            })
            .collect();
        for r in queue.complete_batch(&finish).expect("complete") {
            r.expect("complete one");
        }
        n += batch.len() as u64;
    }
    let (segments, bytes) = queue.spool_usage().expect("spool usage");
    println!(
        "pinned: {count} messages of {size} bytes in {:.1} s, {kept} deferred; spool: {segments} segments, {bytes} bytes",
        started.elapsed().as_secs_f64()
    );
}

fn compact(dir: &Path, min_age_secs: u64) {
    let (queue, _) = Queue::open(dir).expect("open the queue");
    let (segments, bytes) = queue.spool_usage().expect("spool usage");
    println!(
        "before: {} messages, {segments} segments, {bytes} bytes",
        queue.len()
    );
    let report = queue
        .compact_with(&amtp_storage::CompactionPolicy {
            min_age: Duration::from_secs(min_age_secs),
            ..amtp_storage::CompactionPolicy::default()
        })
        .expect("compact");
    let (segments, bytes) = queue.spool_usage().expect("spool usage");
    println!(
        "pass: {} segments ({} deleted), {} messages, {} bytes copied, {} bytes freed, {:.1} ms",
        report.segments,
        report.segments_deleted,
        report.messages,
        report.bytes_copied,
        report.bytes_freed,
        report.duration.as_secs_f64() * 1000.0
    );
    println!(
        "after: {} messages, {segments} segments, {bytes} bytes",
        queue.len()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str { args.get(i).map_or("", String::as_str) };
    let num = |i: usize| -> u64 {
        arg(i)
            .parse()
            .unwrap_or_else(|_| panic!("argument {i} must be a number"))
    };
    match arg(0) {
        "prefill" => prefill(
            Path::new(arg(1)),
            num(2),
            usize::try_from(num(3)).unwrap_or(usize::MAX),
            arg(4),
            args.get(5).map(|_| num(5)),
        ),
        "cycle" => cycle(
            Path::new(arg(1)),
            num(2),
            num(3),
            usize::try_from(num(4)).unwrap_or(usize::MAX),
        ),
        "pinned" => pinned(
            Path::new(arg(1)),
            num(2),
            usize::try_from(num(3)).unwrap_or(usize::MAX),
            num(4),
        ),
        "compact" => compact(Path::new(arg(1)), args.get(2).map_or(0, |_| num(2))),
        _ => {
            eprintln!(
                "usage: queue_tool prefill DIR COUNT SIZE DOMAIN [RETRY_SECS] | cycle DIR SECONDS BATCH SIZE | pinned DIR COUNT SIZE EVERY | compact DIR [MIN_AGE_SECS]"
            );
            std::process::exit(2);
        }
    }
}
