//! One client connection as the generator drives it: connect from a chosen source address,
//! TLS as the protocol requires, greeting, EHLO, optional AUTH PLAIN, then sequential
//! transactions — every step bounded by a timeout and timed into a [`Recorder`].
//!
//! Commands are sent one at a time (no pipelining) so each phase's latency is the relay's
//! answer to that command alone.

use crate::stats::{Phase, Recorder};
use amtp_proto::reply::{Reply, parse_reply};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The protocols `blast` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Plain SMTP.
    Smtp,
    /// SMTP, then STARTTLS before anything else.
    Starttls,
    /// Implicit TLS on connect (RFC 8314, port 465 style).
    Tls,
    /// AMTP: mutual TLS on connect with a client certificate, `MPC=` on MAIL.
    Amtp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Starttls => "starttls",
            Protocol::Tls => "tls",
            Protocol::Amtp => "amtp",
        }
    }
}

/// Why a connection ended early; the key it is counted under in the error table.
#[derive(Debug)]
pub enum Failure {
    /// The server answered with an unexpected reply.
    Reply(Reply),
    /// connect, tls, timeout, closed, io, protocol.
    Other(&'static str, String),
}

impl Failure {
    pub fn key(&self) -> String {
        match self {
            Failure::Reply(r) => r.code.to_string(),
            Failure::Other(k, _) => (*k).to_string(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Reply(r) => write!(f, "{} {}", r.code, r.text()),
            Failure::Other(k, detail) => write!(f, "{k}: {detail}"),
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while the plain stream is being wrapped in TLS (or after that failed).
    Detached,
}

/// What a connection needs to know.
pub struct ConnectionPlan {
    pub target: SocketAddr,
    pub source: Option<IpAddr>,
    pub protocol: Protocol,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub server_name: rustls::pki_types::ServerName<'static>,
    pub ehlo: String,
    /// (user, password) for AUTH PLAIN.
    pub auth: Option<(String, String)>,
    pub timeout: Duration,
}

/// One transaction.
pub struct Transaction<'a> {
    pub from: &'a str,
    pub recipients: &'a [String],
    pub mpc: Option<&'a str>,
    pub body: &'a [u8],
}

/// An open, greeted session.
pub struct Connection {
    stream: Stream,
    buf: Vec<u8>,
    timeout: Duration,
}

const MAX_REPLY_LINE: usize = 4096;

impl Connection {
    /// Connects and runs the session start-up (TLS, greeting, EHLO, AUTH), timing each phase.
    pub async fn open(plan: &ConnectionPlan, rec: &mut Recorder) -> Result<Self, Failure> {
        let started = Instant::now();
        let tcp = within(plan.timeout, "connect", connect(plan.target, plan.source)).await?;
        rec.record(Phase::Connect, started.elapsed());
        let _ = tcp.set_nodelay(true);
        let mut conn = Connection {
            stream: Stream::Plain(tcp),
            buf: Vec::with_capacity(4096),
            timeout: plan.timeout,
        };
        if matches!(plan.protocol, Protocol::Tls | Protocol::Amtp) {
            let t = Instant::now();
            let resumed = conn.start_tls(plan).await?;
            rec.record(Phase::Tls, t.elapsed());
            rec.handshake(resumed);
        }
        let t = Instant::now();
        conn.expect(220).await?;
        conn.command(&format!("EHLO {}\r\n", plan.ehlo), 250)
            .await?;
        rec.record(Phase::Ehlo, t.elapsed());
        if plan.protocol == Protocol::Starttls {
            let t = Instant::now();
            conn.command("STARTTLS\r\n", 220).await?;
            let resumed = conn.start_tls(plan).await?;
            rec.record(Phase::Tls, t.elapsed());
            rec.handshake(resumed);
            conn.command(&format!("EHLO {}\r\n", plan.ehlo), 250)
                .await?;
        }
        if let Some((user, password)) = &plan.auth {
            let t = Instant::now();
            let token = base64_plain(user, password);
            conn.command(&format!("AUTH PLAIN {token}\r\n"), 235)
                .await?;
            rec.record(Phase::Auth, t.elapsed());
        }
        Ok(conn)
    }

    /// Wraps the stream in TLS; `Ok(true)` when the session was resumed.
    async fn start_tls(&mut self, plan: &ConnectionPlan) -> Result<bool, Failure> {
        let config = plan
            .tls
            .clone()
            .ok_or(Failure::Other("tls", "no TLS configuration".into()))?;
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Detached) else {
            return Err(Failure::Other("protocol", "TLS started twice".into()));
        };
        let tls = within(
            plan.timeout,
            "tls",
            TlsConnector::from(config).connect(plan.server_name.clone(), tcp),
        )
        .await?;
        let resumed = matches!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        self.stream = Stream::Tls(Box::new(tls));
        Ok(resumed)
    }

    /// One transaction; `Ok(true)` when the message was accepted, `Ok(false)` when the server
    /// refused it (counted by reply code) and the session can go on.
    pub async fn send(
        &mut self,
        tx: &Transaction<'_>,
        rec: &mut Recorder,
    ) -> Result<bool, Failure> {
        let mut mail = format!("MAIL FROM:<{}> SIZE={}", tx.from, tx.body.len());
        if let Some(mpc) = tx.mpc {
            mail.push_str(" MPC=");
            mail.push_str(mpc);
        }
        mail.push_str("\r\n");
        let t = Instant::now();
        let reply = self.roundtrip(&mail).await?;
        rec.record(Phase::Mail, t.elapsed());
        if reply.code != 250 {
            return self.refused(reply, rec).await;
        }
        let mut accepted = 0;
        let mut last_refusal = None;
        let t = Instant::now();
        for rcpt in tx.recipients {
            let reply = self.roundtrip(&format!("RCPT TO:<{rcpt}>\r\n")).await?;
            if reply.code == 250 || reply.code == 251 {
                accepted += 1;
            } else {
                last_refusal = Some(reply);
            }
        }
        rec.record(Phase::Rcpt, t.elapsed());
        if accepted == 0 {
            let reply = last_refusal.unwrap_or_else(|| Reply::new(554, "", "no recipients"));
            return self.refused(reply, rec).await;
        }
        let t = Instant::now();
        let reply = self.roundtrip("DATA\r\n").await?;
        rec.record(Phase::Data, t.elapsed());
        if reply.code != 354 {
            return self.refused(reply, rec).await;
        }
        self.write(tx.body).await?;
        let t = Instant::now();
        let reply = self.roundtrip(".\r\n").await?;
        rec.record(Phase::DataEnd, t.elapsed());
        if reply.code != 250 {
            rec.error(reply.code.to_string());
            if reply.code == 421 {
                return Err(Failure::Reply(reply));
            }
            return Ok(false);
        }
        rec.bytes += tx.body.len() as u64;
        Ok(true)
    }

    async fn refused(&mut self, reply: Reply, rec: &mut Recorder) -> Result<bool, Failure> {
        if reply.code == 421 {
            return Err(Failure::Reply(reply));
        }
        rec.error(reply.code.to_string());
        self.command("RSET\r\n", 250).await?;
        Ok(false)
    }

    /// Ends the session politely (errors ignored: the work is done).
    pub async fn quit(mut self) {
        let _ = self.roundtrip("QUIT\r\n").await;
    }

    async fn command(&mut self, line: &str, expected: u16) -> Result<Reply, Failure> {
        let reply = self.roundtrip(line).await?;
        if reply.code == expected {
            Ok(reply)
        } else {
            Err(Failure::Reply(reply))
        }
    }

    async fn expect(&mut self, expected: u16) -> Result<Reply, Failure> {
        let reply = self.read_reply().await?;
        if reply.code == expected {
            Ok(reply)
        } else {
            Err(Failure::Reply(reply))
        }
    }

    async fn roundtrip(&mut self, line: &str) -> Result<Reply, Failure> {
        self.write(line.as_bytes()).await?;
        self.read_reply().await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let timeout = self.timeout;
        let fut = async {
            match &mut self.stream {
                Stream::Plain(s) => s.write_all(bytes).await,
                Stream::Tls(s) => {
                    s.write_all(bytes).await?;
                    s.flush().await
                }
                Stream::Detached => Err(std::io::ErrorKind::NotConnected.into()),
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r.map_err(|e| Failure::Other("io", e.to_string())),
            Err(_) => Err(Failure::Other("timeout", "writing".into())),
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, Failure> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match parse_reply(&self.buf, MAX_REPLY_LINE) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(Failure::Other("protocol", format!("bad reply: {e:?}"))),
            }
            if self.buf.len() > 64 * MAX_REPLY_LINE {
                return Err(Failure::Other("protocol", "reply too long".into()));
            }
            let mut chunk = [0u8; 4096];
            let read = async {
                match &mut self.stream {
                    Stream::Plain(s) => s.read(&mut chunk).await,
                    Stream::Tls(s) => s.read(&mut chunk).await,
                    Stream::Detached => Err(std::io::ErrorKind::NotConnected.into()),
                }
            };
            let n = match tokio::time::timeout_at(deadline, read).await {
                Ok(Ok(0)) => return Err(Failure::Other("closed", "server closed".into())),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(Failure::Other("io", e.to_string())),
                Err(_) => return Err(Failure::Other("timeout", "waiting for a reply".into())),
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

async fn connect(target: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(target).await
}

async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::Other(what, e.to_string())),
        Err(_) => Err(Failure::Other("timeout", what.to_string())),
    }
}

fn base64_plain(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}
