//! Read-only queue administration: the text of `queue list` / `queue show`, the admin
//! socket that serves it while `serve` runs, and the client the CLI uses.
//!
//! sled holds an exclusive lock on the database, so a second process cannot open the queue
//! while the relay runs. The relay therefore listens on a Unix socket in the data directory
//! (`admin.sock`, mode 0600 via the directory) and answers the same queries; when no relay
//! runs, the CLI opens the queue directly and calls [`answer`] itself. One formatting code
//! path serves both.
//!
//! Protocol: the client sends one query line; the server answers `OK\n` + text, or
//! `ERR message\n`, and closes.
//!
//! The same socket takes the life-cycle commands `reload`, `drain` and `resume`
//! ([`Control`]); they go to the process's control loop (in the binary, which owns the
//! configuration file), which answers with the outcome.

use crate::messages::AdminQuery;
use actix::Recipient;
use amtp_proto::received::rfc5322_date;
use amtp_storage::{MessageRecord, Queue, QueueId};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Most bytes of a message shown by `queue show` when looking for its headers.
const HEADER_LIMIT: usize = 64 * 1024;

/// Answer one query against an open queue. `hostname` names us in DSNs (`bounce`).
///
/// Queries: `list`, `show ID`, `stats`, `retry ID`, `retry --all`, `delete ID`, `bounce ID`,
/// `compact` (one spool compaction pass now, without the pass's usual minimum segment age).
pub fn answer(queue: &Queue, query: &str, hostname: &str) -> Result<String, String> {
    let words: Vec<&str> = query.split_whitespace().collect();
    let id = |w: &str| -> Result<QueueId, String> { w.parse() };
    let record = |id: QueueId| -> Result<MessageRecord, String> {
        queue
            .get(id)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no message {id} in the queue"))
    };
    let now = amtp_storage::now_ms();
    match words.as_slice() {
        ["list"] => queue
            .list()
            .map(|all| format_list(&all))
            .map_err(|e| e.to_string()),
        ["show", i] => {
            let i = id(i)?;
            let rec = record(i)?;
            match queue.body_prefix(i, HEADER_LIMIT) {
                Ok(head) => Ok(format_show(i, &rec, &head)),
                // The record is what is left to see: show it, and say what becomes of it.
                Err(e @ amtp_storage::StorageError::BodyMissing { .. }) => Ok(format!(
                    "{}  (none: {e}; delivery returns the message to its sender with a DSN, 5.3.0)\n",
                    format_show(i, &rec, b"")
                )),
                Err(e) => Err(e.to_string()),
            }
        }
        ["stats"] => queue
            .list()
            .map(|all| format_stats(&all, now))
            .map_err(|e| e.to_string()),
        ["retry", "--all"] => {
            let all = queue.list().map_err(|e| e.to_string())?;
            let mut made_due = 0;
            for (i, _) in &all {
                made_due += usize::from(queue.retry_now(*i, now).map_err(|e| e.to_string())?);
            }
            Ok(format!(
                "{made_due} of {} message(s) made due now ({} in delivery left alone)\n",
                all.len(),
                all.len() - made_due
            ))
        }
        ["retry", i] => {
            let i = id(i)?;
            record(i)?;
            if queue.retry_now(i, now).map_err(|e| e.to_string())? {
                Ok(format!("{i} is due now\n"))
            } else {
                Ok(format!("{i} is being delivered right now; left alone\n"))
            }
        }
        ["delete", i] => {
            let i = id(i)?;
            record(i)?;
            queue.remove(i).map_err(|e| e.to_string())?;
            Ok(format!("{i} deleted (no bounce sent)\n"))
        }
        ["bounce", i] => {
            let i = id(i)?;
            let rec = record(i)?;
            let returned = amtp_proto::client::Cause::LocalPolicy {
                status: amtp_proto::EnhancedStatus::new(5, 0, 0),
                detail: "returned to the sender by the administrator".into(),
            };
            let failed: Vec<(String, amtp_proto::client::Cause)> = rec
                .pending()
                .map(|r| (r.address.clone(), returned.clone()))
                .collect();
            let original = queue.body_prefix(i, HEADER_LIMIT).unwrap_or_default();
            let dsn =
                crate::delivery::bounce::dsn(hostname, i, &rec, &failed, &original, now / 1000);
            let sent = dsn.is_some();
            if let Some(d) = dsn {
                queue
                    .enqueue_batch(&[d])
                    .map_err(|e| format!("cannot queue the DSN: {e}"))?;
            }
            queue.remove(i).map_err(|e| e.to_string())?;
            Ok(format!(
                "{i} removed; {}\n",
                if sent {
                    "a DSN was queued to the sender"
                } else {
                    "no DSN (null sender or a DSN itself)"
                }
            ))
        }
        ["compact"] => queue
            .compact_with(&amtp_storage::CompactionPolicy {
                min_age: Duration::ZERO,
                ..amtp_storage::CompactionPolicy::default()
            })
            .map(|r| format_compaction(&r))
            .map_err(|e| e.to_string()),
        _ => Err(format!(
            "unknown query {query:?} (expected list, show ID, stats, retry ID|--all, delete ID, bounce ID, compact)"
        )),
    }
}

/// What a compaction pass did, for `queue compact`.
pub fn format_compaction(r: &amtp_storage::CompactionReport) -> String {
    format!(
        "{} sparse segment(s): {} message(s) moved ({} bytes copied), {} segment(s) deleted ({} bytes freed), {} left in place while being delivered, {} ms\n",
        r.segments,
        r.messages,
        r.bytes_copied,
        r.segments_deleted,
        r.bytes_freed,
        r.leased_skipped,
        r.duration.as_millis()
    )
}

/// Counts by state and by destination domain, and the oldest message's age.
pub fn format_stats(all: &[(QueueId, MessageRecord)], now: u64) -> String {
    use std::collections::BTreeMap;
    let leased = all.iter().filter(|(_, r)| r.lease_until > now).count();
    let deferred = all
        .iter()
        .filter(|(_, r)| r.lease_until <= now && r.attempts > 0)
        .count();
    let fresh = all.len() - leased - deferred;
    let mut by_domain: BTreeMap<String, usize> = BTreeMap::new();
    for (_, r) in all {
        for p in r.pending() {
            *by_domain
                .entry(
                    p.address
                        .rsplit_once('@')
                        .map_or("-", |(_, d)| d)
                        .to_ascii_lowercase(),
                )
                .or_default() += 1;
        }
    }
    let oldest = all.iter().map(|(_, r)| r.received_at).min().map_or_else(
        || "-".to_string(),
        |t| format!("{}s", now.saturating_sub(t) / 1000),
    );
    let held = crate::delivery::destination::held_now();
    let held = if held > 0 {
        format!("\n    of which waiting for a destination's message rate: {held}")
    } else {
        String::new()
    };
    let mut out = format!(
        "messages:    {}\n  new:       {fresh}\n  deferred:  {deferred}\n  in delivery: {leased}{held}\noldest:      {oldest}\npending recipients by destination:\n",
        all.len()
    );
    for (d, n) in by_domain {
        out.push_str(&format!("  {d:<40} {n}\n"));
    }
    out
}

fn sender(rec: &MessageRecord) -> String {
    if rec.envelope.sender.is_empty() {
        "<>".to_string()
    } else {
        rec.envelope.sender.clone()
    }
}

/// One line per message: id, size, sender, recipients, Message-ID.
pub fn format_list(all: &[(QueueId, MessageRecord)]) -> String {
    if all.is_empty() {
        return "queue is empty\n".to_string();
    }
    let mut out = format!(
        "{:<16}  {:>10}  {:<30}  {:<30}  {}\n",
        "QUEUE-ID", "SIZE", "SENDER", "RECIPIENTS", "MESSAGE-ID"
    );
    for (id, rec) in all {
        let rcpts: Vec<&str> = rec.recipients.iter().map(|r| r.address.as_str()).collect();
        out.push_str(&format!(
            "{id}  {:>10}  {:<30}  {:<30}  {}\n",
            rec.size,
            sender(rec),
            rcpts.join(","),
            rec.envelope.message_id.as_deref().unwrap_or("-")
        ));
    }
    out.push_str(&format!("{} message(s)\n", all.len()));
    out
}

/// Envelope, status and headers of one message.
pub fn format_show(id: QueueId, rec: &MessageRecord, head: &[u8]) -> String {
    let mut out = format!("queue id:     {id}\n");
    out.push_str(&format!(
        "received:     {}\n",
        rfc5322_date(rec.received_at / 1000)
    ));
    out.push_str(&format!(
        "origin:       {} (listener {}, client {})\n",
        rec.envelope.origin.as_str(),
        rec.envelope.listener,
        rec.envelope.client_ip
    ));
    if let Some(u) = &rec.envelope.auth_user {
        out.push_str(&format!("auth user:    {u}\n"));
    }
    out.push_str(&format!("sender:       {}\n", sender(rec)));
    out.push_str(&format!(
        "mpc:          {}\n",
        rec.envelope.mpc.as_deref().unwrap_or("-")
    ));
    out.push_str(&format!("size:         {}\n", rec.size));
    out.push_str(&format!(
        "body:         {}{}\n",
        rec.envelope.body.as_str(),
        if rec.envelope.smtputf8 {
            ", SMTPUTF8"
        } else {
            ""
        }
    ));
    let lease = if rec.lease_until != 0 {
        format!(" (leased until {})", rfc5322_date(rec.lease_until / 1000))
    } else {
        String::new()
    };
    out.push_str(&format!(
        "attempts:     {}, next attempt {}{lease}\n",
        rec.attempts,
        rfc5322_date(rec.next_attempt / 1000)
    ));
    out.push_str("recipients:\n");
    for r in &rec.recipients {
        let state = format!("{:?}", r.state).to_lowercase();
        out.push_str(&format!(
            "  {:<40} {state}{}{}\n",
            r.address,
            r.status
                .as_deref()
                .map(|x| format!(" {x}"))
                .unwrap_or_default(),
            r.last_reply
                .as_deref()
                .map(|x| format!("  ({x})"))
                .unwrap_or_default()
        ));
    }
    out.push_str("headers:\n");
    let headers = amtp_proto::headers::header_section(head);
    for line in String::from_utf8_lossy(headers).lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

/// A life-cycle command from the admin socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Re-read the configuration file and apply it.
    Reload,
    /// Stop taking new connections (readiness 503); sessions and delivery carry on.
    Drain,
    /// Undo `drain`.
    Resume,
}

impl Control {
    /// The command word, if `query` is one.
    pub fn parse(query: &str) -> Option<Self> {
        match query.trim() {
            "reload" => Some(Self::Reload),
            "drain" => Some(Self::Drain),
            "resume" => Some(Self::Resume),
            _ => None,
        }
    }
}

/// A [`Control`] command and where to send its outcome (text for the operator, or why it was
/// refused).
pub type ControlRequest = (
    Control,
    tokio::sync::oneshot::Sender<Result<String, String>>,
);

/// How long a reload may take before the client is told it is still running (validation
/// reads certificate and users files; argon2 is not involved).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

async fn control(
    to: Option<&tokio::sync::mpsc::Sender<ControlRequest>>,
    command: Control,
) -> Result<String, String> {
    let Some(to) = to else {
        return Err("this relay does not take life-cycle commands".into());
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    to.send((command, tx))
        .await
        .map_err(|_| "the relay is shutting down".to_string())?;
    match tokio::time::timeout(CONTROL_TIMEOUT, rx).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => Err("the relay is shutting down".into()),
        Err(_) => Err("no answer within 60s; see the relay's log".into()),
    }
}

/// Bind the admin socket at `path` (replacing a stale one). Done before the relay says it
/// has started, so that `amtp-relay reload` or `queue` right after start-up (or after
/// systemd's READY=1) finds the socket.
pub fn bind(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serve queries on the socket [`bind`] made until the task is dropped.
pub async fn serve(
    listener: std::os::unix::net::UnixListener,
    queue: Recipient<AdminQuery>,
    controls: Option<tokio::sync::mpsc::Sender<ControlRequest>>,
) -> std::io::Result<()> {
    let listener = tokio::net::UnixListener::from_std(listener)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let queue = queue.clone();
        let controls = controls.clone();
        actix::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stream);
            let mut line = String::new();
            let read = tokio::time::timeout(
                Duration::from_secs(5),
                (&mut reader).take(1024).read_line(&mut line),
            )
            .await;
            let reply = match (read, Control::parse(&line)) {
                (Ok(Ok(_)), Some(command)) => match control(controls.as_ref(), command).await {
                    Ok(text) => format!("OK\n{text}"),
                    Err(e) => format!("ERR {e}\n"),
                },
                (Ok(Ok(_)), None) if line.trim() == "cluster status" => {
                    match crate::cluster::get() {
                        Some(c) => match c.status().await {
                            Ok(text) => format!("OK\n{text}"),
                            Err(e) => format!("ERR {e}\n"),
                        },
                        None => "ERR this relay has no [cluster] section\n".to_string(),
                    }
                }
                (Ok(Ok(_)), None) => match queue.send(AdminQuery(line.trim().to_string())).await {
                    Ok(Ok(text)) => format!("OK\n{text}"),
                    Ok(Err(e)) => format!("ERR {e}\n"),
                    Err(e) => format!("ERR relay busy: {e}\n"),
                },
                _ => "ERR no query received\n".to_string(),
            };
            let mut stream = reader.into_inner();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stream.write_all(reply.as_bytes()))
                    .await;
        });
    }
}

/// Ask a running relay. `Ok(None)` when no relay answers on `path` (no socket, or refused).
pub fn query(path: &Path, query: &str) -> std::io::Result<Option<Result<String, String>>> {
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(CONTROL_TIMEOUT + Duration::from_secs(15)))?;
    stream.write_all(format!("{query}\n").as_bytes())?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(Some(match text.strip_prefix("OK\n") {
        Some(body) => Ok(body.to_string()),
        None => Err(text
            .strip_prefix("ERR ")
            .unwrap_or(&text)
            .trim_end()
            .to_string()),
    }))
}
