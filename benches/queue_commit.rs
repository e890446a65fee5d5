//! Queue commit bench: the cost of making messages durable (the batch's bodies appended to the
//! open spool segment with one fdatasync, one sled batch, flush + fsync of sled's log) at batch
//! sizes 1, 16 and 128 of 4 KiB messages — the trade-off `[queue] batch_max` / `batch_wait`
//! tune — and of completing delivered messages in batches of the same sizes
//! (`Queue::complete_batch`: one sled batch, one fsync, the bodies released). Reported in
//! messages/s. Runs on the real filesystem under the target directory (not tmpfs), because
//! fsync cost is the point.

use amtp_storage::{
    BodyType, Envelope, Finish, NewMessage, Origin, Queue, RecipientState, RecipientStatus,
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::time::Duration;

fn message(i: usize) -> NewMessage {
    NewMessage {
        id: None,
        envelope: Envelope {
            sender: format!("s{i}@sender.test"),
            mpc: None,
            origin: Origin::Smtp,
            listener: "mx".into(),
            client_ip: "127.0.0.1".into(),
            auth_user: None,
            message_id: Some(format!("<{i}@sender.test>")),
            body: BodyType::Unspecified,
            smtputf8: false,
        },
        recipients: vec![format!("r{i}@example.test")],
        body: vec![b'x'; 4096].into(),
    }
}

fn queue_commit(c: &mut Criterion) {
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(base).unwrap();
    let (queue, _) = Queue::open(dir.path()).unwrap();
    let mut g = c.benchmark_group("queue_commit");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    for batch in [1usize, 16, 128] {
        g.throughput(Throughput::Elements(u64::try_from(batch).unwrap()));
        g.bench_function(format!("batch_{batch}_4KiB"), |b| {
            b.iter_batched(
                || (0..batch).map(message).collect::<Vec<_>>(),
                |msgs| queue.enqueue_batch(&msgs).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn queue_complete(c: &mut Criterion) {
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(base).unwrap();
    let (queue, _) = Queue::open(dir.path()).unwrap();
    let mut g = c.benchmark_group("queue_complete");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    for batch in [1usize, 16, 128] {
        g.throughput(Throughput::Elements(u64::try_from(batch).unwrap()));
        g.bench_function(format!("batch_{batch}_4KiB"), |b| {
            b.iter_batched(
                || {
                    let msgs: Vec<NewMessage> = (0..batch).map(message).collect();
                    queue
                        .enqueue_batch(&msgs)
                        .unwrap()
                        .into_iter()
                        .zip(msgs)
                        .map(|(id, m)| Finish {
                            id,
                            outcomes: m
                                .recipients
                                .into_iter()
                                .map(|address| RecipientStatus {
                                    address,
                                    state: RecipientState::Delivered,
                                    last_reply: Some("250 2.0.0 ok".into()),
                                    status: Some("2.0.0".into()),
                                })
                                .collect(),
                            retry_at: None,
                        })
                        .collect::<Vec<_>>()
                },
                |finish| queue.complete_batch(&finish).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, queue_commit, queue_complete);
criterion_main!(benches);
