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

/// Answer one query against an open queue.
pub fn answer(queue: &Queue, query: &str) -> Result<String, String> {
    let mut words = query.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("list"), None, _) => queue
            .list()
            .map(|all| format_list(&all))
            .map_err(|e| e.to_string()),
        (Some("show"), Some(id), None) => {
            let id: QueueId = id.parse()?;
            let rec = queue
                .get(id)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no message {id} in the queue"))?;
            let head = queue
                .body_prefix(id, HEADER_LIMIT)
                .map_err(|e| e.to_string())?;
            Ok(format_show(id, &rec, &head))
        }
        _ => Err(format!(
            "unknown query {query:?} (expected `list` or `show ID`)"
        )),
    }
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
            "  {:<40} {state}{}\n",
            r.address,
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

/// Serve queries on a Unix socket until the task is dropped.
pub async fn serve(path: &Path, queue: Recipient<AdminQuery>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let queue = queue.clone();
        actix::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stream);
            let mut line = String::new();
            let read = tokio::time::timeout(
                Duration::from_secs(5),
                (&mut reader).take(1024).read_line(&mut line),
            )
            .await;
            let reply = match read {
                Ok(Ok(_)) => match queue.send(AdminQuery(line.trim().to_string())).await {
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
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
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
