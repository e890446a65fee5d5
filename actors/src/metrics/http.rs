//! The operations HTTP endpoint (`[metrics] listen`): `GET /metrics` (Prometheus text
//! format), `GET /healthz/live` (200 while the process runs) and `GET /healthz/ready` (200, or
//! 503 with a one-line reason).
//!
//! Deliberately small: HTTP/1.1 with `Connection: close`, one request per connection, the
//! request head read with a deadline into a bounded buffer and parsed by `httparse`. A full
//! web framework would add minutes to every build for three fixed routes. Runs on its own
//! arbiter, so a slow scraper never shares a thread with the listeners or sessions.

use crate::health::Health;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Largest request head we read; scrapers send a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// Time allowed to send the request head, and to take the response.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests served at once; more wait in the kernel's accept queue.
const MAX_CONCURRENT: usize = 32;

/// A response: status line, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// e.g. 200.
    pub status: u16,
    /// The body's media type.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
    /// Whether the body is sent (false for HEAD).
    pub send_body: bool,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn text(status: u16, body: impl Into<String>) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.into(),
        send_body: true,
    }
}

/// Decide the response for a request head (pure: tested without sockets).
pub fn respond(head: &[u8], health: &Health) -> Response {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let (method, path) = match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {
            (req.method.unwrap_or_default(), req.path.unwrap_or_default())
        }
        Ok(httparse::Status::Partial) | Err(_) => return text(400, "bad request\n"),
    };
    let path = path.split('?').next().unwrap_or_default();
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return text(405, "only GET and HEAD\n");
    }
    let mut r = match path {
        "/metrics" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: super::render().unwrap_or_default(),
            send_body: true,
        },
        "/healthz/live" => text(200, "live\n"),
        "/healthz/ready" => {
            let ready = health.ready();
            if let Some(m) = super::get() {
                m.ready.set(i64::from(ready.is_ok()));
            }
            match ready {
                Ok(()) => text(200, "ready\n"),
                Err(why) => text(503, format!("{why}\n")),
            }
        }
        "/" => text(200, "amtp-relay: /metrics /healthz/live /healthz/ready\n"),
        _ => text(404, "not found\n"),
    };
    r.send_body = !head_only;
    r
}

fn encode(r: &Response) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if r.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if r.send_body {
        bytes.extend_from_slice(r.body.as_bytes());
    }
    bytes
}

/// Read one request head (bounded, with a deadline) and answer it.
async fn handle(mut stream: TcpStream, health: Arc<Health>) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let complete = tokio::time::timeout(IO_TIMEOUT, async {
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                return Some(true);
            }
            if buf.len() > MAX_HEAD {
                return Some(false);
            }
        }
    })
    .await;
    let response = match complete {
        Ok(Some(true)) => respond(&buf, &health),
        Ok(Some(false)) => text(431, "request head too large\n"),
        // Timed out or went away before a complete head: nothing to answer.
        Ok(None) | Err(_) => return,
    };
    let _ = tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(&encode(&response)).await?;
        stream.shutdown().await
    })
    .await;
}

/// Serve the endpoint on an already-bound listener until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let health = health.clone();
                tokio::spawn(async move {
                    handle(stream, health).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(ready: bool) -> Health {
        let h = Health::new(
            1,
            Box::new(move || (!ready).then(|| "No space left on device".to_string())),
        );
        h.listener_up();
        h
    }

    #[test]
    fn routes() {
        let h = health(true);
        let get = |path: &str| {
            respond(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
                &h,
            )
        };
        assert_eq!(get("/healthz/live").status, 200);
        assert_eq!(get("/healthz/ready").status, 200);
        assert_eq!(get("/healthz/ready?verbose=1").body, "ready\n");
        assert_eq!(get("/metrics").status, 200);
        assert_eq!(
            get("/metrics").content_type,
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(get("/nope").status, 404);
        let post = respond(b"POST /metrics HTTP/1.1\r\n\r\n", &h);
        assert_eq!(post.status, 405);
        assert!(
            String::from_utf8(encode(&post))
                .unwrap()
                .contains("Allow: GET, HEAD\r\n")
        );
        let head = respond(b"HEAD /healthz/live HTTP/1.1\r\n\r\n", &h);
        assert_eq!(head.status, 200);
        let wire = String::from_utf8(encode(&head)).unwrap();
        assert!(wire.ends_with("\r\n\r\n"), "{wire}");
        assert!(wire.contains("Content-Length: 5\r\n"));
        assert_eq!(respond(b"\x00\x01garbage\r\n\r\n", &h).status, 400);
    }

    #[test]
    fn unhealthy_storage_is_503_with_the_reason() {
        let h = health(false);
        let r = respond(b"GET /healthz/ready HTTP/1.0\r\n\r\n", &h);
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "storage unhealthy: No space left on device\n");
        assert_eq!(
            respond(b"GET /healthz/live HTTP/1.0\r\n\r\n", &h).status,
            200
        );
    }
}
