//! `amtp-loadtest sink`: a fast accept-and-discard SMTP/AMTP server for measuring a relay's
//! delivery side. Plain SMTP with PIPELINING, optional STARTTLS or implicit TLS, optional
//! mandatory client certificates (AMTP) with an advertised MPC line, an optional delay before
//! the end-of-DATA reply, and 4xx/5xx injection on a share of messages. It counts what arrives
//! and stops by itself after N messages or its duration.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, clap::Args)]
pub struct SinkArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:2526")]
    pub listen: SocketAddr,
    /// Server certificate (PEM chain); with --tls-key enables STARTTLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// TLS on connect instead of STARTTLS.
    #[arg(long, requires = "tls_cert")]
    pub tls_on_connect: bool,
    /// Require a client certificate chaining to this CA (with --tls-on-connect: an AMTP peer).
    #[arg(long, requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Advertise this MPC policy in EHLO, e.g. "ALLOW=per/* DENY=com/*".
    #[arg(long)]
    pub mpc_policy: Option<String>,
    /// Wait this long before answering the end of DATA (a slow next hop).
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub delay: Option<Duration>,
    /// Share of messages refused at the end of DATA, in percent.
    #[arg(long, default_value_t = 0.0)]
    pub reject_percent: f64,
    /// Reply code for refused messages (4xx: the relay retries; 5xx: it bounces).
    #[arg(long, default_value_t = 451)]
    pub reject_code: u16,
    /// Stop after accepting this many messages.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Stop after this long.
    #[arg(long, default_value = "1h", value_parser = crate::units::parse_duration)]
    pub duration: Duration,
    /// Print the final counts as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print a progress line on stderr this often, with the rate over that interval (0 = never).
    #[arg(long, default_value = "5s", value_parser = crate::units::parse_duration)]
    pub progress_every: Duration,
    /// Permit listening outside loopback.
    #[arg(long)]
    pub allow_non_loopback: bool,
}

impl SinkArgs {
    /// The command line's defaults, listening on `listen`: for embedding the sink (tests,
    /// scripts in Rust) without restating every default.
    pub fn defaults(listen: SocketAddr) -> Self {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            args: SinkArgs,
        }
        let mut args = <Command as clap::Parser>::parse_from(["sink"]).args;
        args.listen = listen;
        args
    }
}

/// What the sink saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SinkReport {
    pub connections: u64,
    pub messages: u64,
    pub rejected: u64,
    pub recipients: u64,
    pub bytes: u64,
    /// Seconds from the first accepted message to the last.
    pub first_to_last_s: f64,
    /// Accepted messages per second between the first and the last.
    pub messages_per_s: f64,
    pub elapsed_s: f64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    messages: AtomicU64,
    rejected: AtomicU64,
    data_ends: AtomicU64,
    recipients: AtomicU64,
    bytes: AtomicU64,
    first_us: AtomicU64,
    last_us: AtomicU64,
}

struct Sink {
    args: SinkArgs,
    tls: Option<tokio_rustls::TlsAcceptor>,
    counters: Counters,
    started: Instant,
    done: tokio::sync::Notify,
}

/// Live counts of a running sink.
#[derive(Clone)]
pub struct SinkStats(Arc<Sink>);

impl SinkStats {
    pub fn report(&self) -> SinkReport {
        self.0.report()
    }
}

/// A bound sink, ready to run (bind first so callers know the port before load starts).
pub struct BoundSink {
    listener: TcpListener,
    sink: Arc<Sink>,
}

impl BoundSink {
    pub async fn bind(args: SinkArgs) -> anyhow::Result<Self> {
        crate::safety::check("listen address", args.listen, args.allow_non_loopback)?;
        anyhow::ensure!(
            (0.0..=100.0).contains(&args.reject_percent),
            "--reject-percent must be between 0 and 100"
        );
        anyhow::ensure!(
            (400..600).contains(&args.reject_code),
            "--reject-code must be a 4xx or 5xx code"
        );
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(
                crate::tls::server_config(cert, key, args.client_ca.as_deref())?,
            )),
            _ => None,
        };
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        Ok(Self {
            listener,
            sink: Arc::new(Sink {
                args,
                tls,
                counters: Counters::default(),
                started: Instant::now(),
                done: tokio::sync::Notify::new(),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound")
    }

    /// A handle that reads the counts while the sink runs.
    pub fn stats(&self) -> SinkStats {
        SinkStats(self.sink.clone())
    }

    /// Serves until the message count, the duration, or `stop` resolves; returns the counts.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) -> SinkReport {
        let sink = self.sink;
        let listener = self.listener;
        let accept = {
            let sink = sink.clone();
            async move {
                loop {
                    match listener.accept().await {
                        Ok((tcp, _)) => {
                            sink.counters.connections.fetch_add(1, Ordering::Relaxed);
                            tokio::spawn(handle(sink.clone(), tcp));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
        };
        let progress = {
            let sink = sink.clone();
            async move {
                let every = sink.args.progress_every;
                if every.is_zero() {
                    return std::future::pending().await;
                }
                let mut last = (Instant::now(), 0u64);
                loop {
                    tokio::time::sleep(every).await;
                    let r = sink.report();
                    let now = Instant::now();
                    eprintln!(
                        "sink: {}",
                        interval_line(&r, r.messages - last.1, now - last.0)
                    );
                    last = (now, r.messages);
                }
            }
        };
        tokio::select! {
            () = accept => {}
            () = progress => {}
            () = sink.done.notified() => {}
            () = tokio::time::sleep(sink.args.duration) => {}
            () = stop => {}
        }
        sink.report()
    }
}

impl Sink {
    fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn report(&self) -> SinkReport {
        let c = &self.counters;
        let messages = c.messages.load(Ordering::Relaxed);
        let span = c
            .last_us
            .load(Ordering::Relaxed)
            .saturating_sub(c.first_us.load(Ordering::Relaxed)) as f64
            / 1e6;
        SinkReport {
            connections: c.connections.load(Ordering::Relaxed),
            messages,
            rejected: c.rejected.load(Ordering::Relaxed),
            recipients: c.recipients.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            first_to_last_s: span,
            messages_per_s: if span > 0.0 {
                messages.saturating_sub(1) as f64 / span
            } else {
                0.0
            },
            elapsed_s: self.started.elapsed().as_secs_f64(),
        }
    }

    /// Decides the end-of-DATA reply for the n-th message (spread evenly, not random).
    fn refuse(&self, n: u64) -> bool {
        let share = self.args.reject_percent / 100.0;
        share > 0.0 && ((n + 1) as f64 * share).floor() > (n as f64 * share).floor()
    }

    fn accepted(&self) {
        let now = self.now_us();
        let n = self.counters.messages.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 {
            self.counters.first_us.store(now, Ordering::Relaxed);
        }
        self.counters.last_us.fetch_max(now, Ordering::Relaxed);
        if self.args.messages.is_some_and(|limit| n >= limit) {
            self.done.notify_one();
            self.done.notify_waiters();
        }
    }
}

async fn handle(sink: Arc<Sink>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    match (&sink.tls, sink.args.tls_on_connect) {
        (Some(tls), true) => {
            if let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(30), tls.accept(tcp)).await
            {
                let _ = session(&sink, stream, true).await;
            }
        }
        _ => {
            let mut tcp = tcp;
            if let Ok(End::StartTls) = session(&sink, &mut tcp, false).await
                && let Some(tls) = &sink.tls
                && let Ok(Ok(stream)) =
                    tokio::time::timeout(Duration::from_secs(30), tls.accept(tcp)).await
            {
                let _ = session(&sink, stream, true).await;
            }
        }
    }
}

enum End {
    Quit,
    StartTls,
}

const MAX_LINE: usize = 4096;
const IDLE: Duration = Duration::from_secs(300);

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    sink: &Sink,
    mut io: S,
    tls_active: bool,
) -> std::io::Result<End> {
    let mut out = Vec::with_capacity(512);
    if !tls_active || sink.args.tls_on_connect {
        io.write_all(b"220 sink.load.test ESMTP amtp-loadtest sink\r\n")
            .await?;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut data: Option<DataEnd> = None;
    let mut recipients = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match tokio::time::timeout(IDLE, io.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => return Ok(End::Quit),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e),
        };
        let mut input = &chunk[..n];
        while !input.is_empty() {
            if let Some(scanner) = &mut data {
                match scanner.feed(input) {
                    Some(used) => {
                        sink.counters
                            .bytes
                            .fetch_add((scanner.bytes + used) as u64, Ordering::Relaxed);
                        input = &input[used..];
                        data = None;
                        if let Some(delay) = sink.args.delay {
                            io.write_all(&out).await?;
                            out.clear();
                            tokio::time::sleep(delay).await;
                        }
                        let n = sink.counters.data_ends.fetch_add(1, Ordering::Relaxed);
                        if sink.refuse(n) {
                            sink.counters.rejected.fetch_add(1, Ordering::Relaxed);
                            let class = sink.args.reject_code / 100;
                            out.extend_from_slice(
                                format!(
                                    "{} {class}.3.0 refused by amtp-loadtest sink (injected)\r\n",
                                    sink.args.reject_code
                                )
                                .as_bytes(),
                            );
                        } else {
                            sink.counters
                                .recipients
                                .fetch_add(recipients, Ordering::Relaxed);
                            sink.accepted();
                            out.extend_from_slice(b"250 2.0.0 discarded\r\n");
                        }
                        recipients = 0;
                    }
                    None => {
                        scanner.bytes += input.len();
                        input = &[];
                    }
                }
                continue;
            }
            // Command mode: take one line.
            let Some(eol) = input.iter().position(|&b| b == b'\n') else {
                buf.extend_from_slice(input);
                if buf.len() > MAX_LINE {
                    io.write_all(b"500 5.5.6 line too long\r\n").await?;
                    return Ok(End::Quit);
                }
                break;
            };
            buf.extend_from_slice(&input[..=eol]);
            input = &input[eol + 1..];
            let line = std::mem::take(&mut buf);
            if line.len() > MAX_LINE {
                io.write_all(b"500 5.5.6 line too long\r\n").await?;
                return Ok(End::Quit);
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let verb = text
                .split([' ', ':'])
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            match verb.as_str() {
                "EHLO" => {
                    out.extend_from_slice(
                        b"250-sink.load.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n",
                    );
                    if sink.tls.is_some() && !tls_active {
                        out.extend_from_slice(b"250-STARTTLS\r\n");
                    }
                    if let Some(policy) = &sink.args.mpc_policy {
                        out.extend_from_slice(format!("250-MPC {policy}\r\n").as_bytes());
                    }
                    out.extend_from_slice(b"250 SIZE 104857600\r\n");
                }
                "HELO" => out.extend_from_slice(b"250 sink.load.test\r\n"),
                "MAIL" => {
                    recipients = 0;
                    out.extend_from_slice(b"250 2.1.0 ok\r\n");
                }
                "RCPT" => {
                    recipients += 1;
                    out.extend_from_slice(b"250 2.1.5 ok\r\n");
                }
                "DATA" if recipients == 0 => {
                    out.extend_from_slice(b"503 5.5.1 no valid recipients\r\n");
                }
                "DATA" => {
                    out.extend_from_slice(b"354 end with <CRLF>.<CRLF>\r\n");
                    data = Some(DataEnd::default());
                }
                "RSET" => {
                    recipients = 0;
                    out.extend_from_slice(b"250 2.0.0 ok\r\n");
                }
                "NOOP" => out.extend_from_slice(b"250 2.0.0 ok\r\n"),
                "QUIT" => {
                    out.extend_from_slice(b"221 2.0.0 bye\r\n");
                    io.write_all(&out).await?;
                    return Ok(End::Quit);
                }
                "STARTTLS" if sink.tls.is_some() && !tls_active => {
                    out.extend_from_slice(b"220 2.0.0 go ahead\r\n");
                    io.write_all(&out).await?;
                    io.flush().await?;
                    return Ok(End::StartTls);
                }
                _ => out.extend_from_slice(b"502 5.5.2 command not recognised\r\n"),
            }
        }
        if !out.is_empty() {
            io.write_all(&out).await?;
            io.flush().await?;
            out.clear();
        }
    }
}

/// Finds `CRLF . CRLF` (the end of DATA) across reads; DATA begins at a line start.
#[derive(Default)]
struct DataEnd {
    state: u8,
    /// Bytes of this message seen before the current chunk.
    bytes: usize,
}

impl DataEnd {
    const LINE_START: u8 = 0;
    const MID: u8 = 1;
    const CR: u8 = 2;
    const DOT: u8 = 3;
    const DOT_CR: u8 = 4;

    /// Feeds a chunk; returns the number of bytes up to and including the terminator if it
    /// ends in this chunk.
    fn feed(&mut self, chunk: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < chunk.len() {
            if self.state == Self::MID {
                match chunk[i..].iter().position(|&b| b == b'\r') {
                    Some(p) => i += p,
                    None => return None,
                }
            }
            let b = chunk[i];
            self.state = match (self.state, b) {
                (Self::DOT_CR, b'\n') => {
                    self.state = Self::LINE_START;
                    return Some(i + 1);
                }
                (Self::LINE_START, b'.') => Self::DOT,
                (Self::DOT, b'\r') => Self::DOT_CR,
                (Self::CR, b'\n') => Self::LINE_START,
                (_, b'\r') => Self::CR,
                _ => Self::MID,
            };
            i += 1;
        }
        None
    }
}

/// A progress line: totals so far and the rate over the last interval (not since the start,
/// which hides a stall behind the average).
fn interval_line(r: &SinkReport, interval_messages: u64, interval: Duration) -> String {
    format!(
        "{} messages, {} rejected, {} connections; {:.1} messages/s over the last {}",
        r.messages,
        r.rejected,
        r.connections,
        interval_messages as f64 / interval.as_secs_f64().max(1e-3),
        crate::progress::short(interval)
    )
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM: how scripts and service managers stop
/// the sink, which then still prints its totals.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// `amtp-loadtest sink` from the command line: runs until done, Ctrl-C or SIGTERM, then prints
/// the counts.
pub fn main(args: SinkArgs) -> anyhow::Result<()> {
    let json = args.json;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the sink runtime")?;
    let report = runtime.block_on(async move {
        let bound = BoundSink::bind(args).await?;
        eprintln!("sink: listening on {}", bound.local_addr());
        anyhow::Ok(bound.run(stop_signal()).await)
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "sink: {} messages accepted ({} rejected), {} recipients, {:.1} MB, {} connections; \
             {:.1} messages/s between the first and the last",
            report.messages,
            report.rejected,
            report.recipients,
            report.bytes as f64 / 1e6,
            report.connections,
            report.messages_per_s
        );
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_everywhere(msg: &[u8]) -> Vec<Option<usize>> {
        (0..=msg.len())
            .map(|cut| {
                let mut d = DataEnd::default();
                match d.feed(&msg[..cut]) {
                    Some(used) => Some(used),
                    None => d.feed(&msg[cut..]).map(|u| u + cut),
                }
            })
            .collect()
    }

    #[test]
    fn the_end_of_data_is_found_at_every_split_and_nowhere_else() {
        let msg = b"Subject: x\r\n\r\n..stuffed\r\n.x\r\nline\r\n.\r\nMAIL FROM:<>\r\n";
        let end = msg.windows(5).position(|w| w == b"\r\n.\r\n").unwrap() + 5;
        assert!(split_everywhere(msg).iter().all(|r| *r == Some(end)));
        // An empty message: the terminator right at the start.
        assert_eq!(DataEnd::default().feed(b".\r\nQUIT\r\n"), Some(3));
        // A bare LF before the dot does not end DATA.
        assert_eq!(DataEnd::default().feed(b"a\n.\r\nb"), None);
    }

    #[test]
    fn progress_gives_the_rate_of_the_last_interval_not_the_average() {
        let report = SinkReport {
            messages: 10_000,
            messages_per_s: 1000.0,
            ..Default::default()
        };
        // A stalled next hop: nothing arrived in the last 5 s, though the average is 1000/s.
        let line = interval_line(&report, 0, Duration::from_secs(5));
        assert!(line.ends_with("0.0 messages/s over the last 5s"), "{line}");
        let line = interval_line(&report, 2500, Duration::from_secs(5));
        assert!(line.contains("500.0 messages/s"), "{line}");
    }

    #[test]
    fn injected_refusals_are_spread_evenly() {
        let mut args = SinkArgs::defaults("127.0.0.1:0".parse().unwrap());
        args.reject_percent = 10.0;
        let sink = Sink {
            args,
            tls: None,
            counters: Counters::default(),
            started: Instant::now(),
            done: tokio::sync::Notify::new(),
        };
        let refused = (0..1000).filter(|&n| sink.refuse(n)).count();
        assert_eq!(refused, 100);
        assert!((0..10).filter(|&n| sink.refuse(n)).count() == 1);
    }
}
