//! A small SMTP sink on 127.0.0.1 for delivery tests: records each message (with its MAIL
//! command line), and can reject a recipient, stall in DATA, leave 8BITMIME out of its EHLO
//! reply, offer SMTPUTF8, or refuse EHLO altogether. Counts QUITs and the most connections open
//! at once; notes when each MAIL arrived. Runs on threads; stops when dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct SinkMessage {
    /// The MAIL command as received (parameters included).
    #[allow(dead_code)]
    pub mail: String,
    pub from: String,
    pub rcpts: Vec<String>,
    pub data: String,
    /// When its MAIL command arrived (the fleet tests check a message rate).
    #[allow(dead_code)]
    pub mail_at: Instant,
}

#[derive(Default)]
pub struct Behaviour {
    /// RCPT addresses answered 550 5.1.1.
    pub reject: Vec<String>,
    /// Sleep this long before answering the end of DATA.
    pub stall: Option<Duration>,
    /// Do not offer 8BITMIME.
    pub no_8bitmime: bool,
    /// Offer SMTPUTF8.
    pub smtputf8: bool,
    /// Answer EHLO with this reply (e.g. `504 5.7.1 …`) instead of the keyword list.
    pub ehlo_reply: Option<String>,
}

pub struct Sink {
    pub addr: SocketAddr,
    pub messages: Arc<Mutex<Vec<SinkMessage>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// DATA phases begun (to know a delivery is in flight).
    pub data_started: Arc<AtomicUsize>,
    /// Connections accepted (read by benches/delivery.rs for the reuse ratio).
    #[allow(dead_code)]
    pub connections: Arc<AtomicUsize>,
    /// QUIT commands received.
    #[allow(dead_code)]
    pub quits: Arc<AtomicUsize>,
    /// Most connections open at once (the fleet tests check a fleet-wide cap).
    #[allow(dead_code)]
    pub max_open: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    /// Listen on `addr` (127.0.0.1:0 for any port).
    pub fn start(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let messages: Arc<Mutex<Vec<SinkMessage>>> = Arc::default();
        let behaviour: Arc<Mutex<Behaviour>> = Arc::default();
        let data_started = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let quits = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let max_open = Arc::new(AtomicUsize::new(0));
        let (o, mo) = (open.clone(), max_open.clone());
        let (m, b, d, s, c, q) = (
            messages.clone(),
            behaviour.clone(),
            data_started.clone(),
            stop.clone(),
            connections.clone(),
            quits.clone(),
        );
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        c.fetch_add(1, Ordering::SeqCst);
                        let now_open = o.fetch_add(1, Ordering::SeqCst) + 1;
                        mo.fetch_max(now_open, Ordering::SeqCst);
                        let (m, b, d, q, o) =
                            (m.clone(), b.clone(), d.clone(), q.clone(), o.clone());
                        std::thread::spawn(move || {
                            let _ = session(stream, &m, &b, &d, &q);
                            o.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            addr,
            messages,
            behaviour,
            data_started,
            connections,
            quits,
            max_open,
            stop,
        }
    }

    /// Wait until `n` messages arrived (at most `secs`).
    pub fn wait_for(&self, n: usize, secs: u64) -> Vec<SinkMessage> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.messages.lock().unwrap().clone();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn session(
    stream: TcpStream,
    messages: &Mutex<Vec<SinkMessage>>,
    behaviour: &Mutex<Behaviour>,
    data_started: &AtomicUsize,
    quits: &AtomicUsize,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    // Small replies must not wait for delayed ACKs (Nagle), or every message costs ~40 ms.
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    out.write_all(b"220 sink.test ESMTP\r\n")?;
    let (mut mail, mut from, mut rcpts) = (String::new(), String::new(), Vec::new());
    let mut mail_at = Instant::now();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            let b = behaviour.lock().unwrap();
            match &b.ehlo_reply {
                Some(r) => format!("{r}\r\n"),
                None => {
                    let mut keywords = vec!["sink.test", "PIPELINING"];
                    if !b.no_8bitmime {
                        keywords.push("8BITMIME");
                    }
                    if b.smtputf8 {
                        keywords.push("SMTPUTF8");
                    }
                    let last = keywords.len() - 1;
                    keywords
                        .iter()
                        .enumerate()
                        .map(|(i, k)| format!("250{}{k}\r\n", if i == last { ' ' } else { '-' }))
                        .collect()
                }
            }
        } else if upper.starts_with("MAIL FROM:") {
            mail = cmd.clone();
            mail_at = Instant::now();
            from = cmd[10..]
                .trim()
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or("")
                .to_string();
            "250 2.1.0 ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let to = cmd[8..]
                .trim()
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or("")
                .to_string();
            if behaviour.lock().unwrap().reject.contains(&to) {
                "550 5.1.1 no such user here\r\n".into()
            } else {
                rcpts.push(to);
                "250 2.1.5 ok\r\n".into()
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                "554 5.5.1 no valid recipients\r\n".into()
            } else {
                out.write_all(b"354 go ahead\r\n")?;
                data_started.fetch_add(1, Ordering::SeqCst);
                let mut data = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    data.push_str(
                        line.strip_prefix('.')
                            .filter(|_| line.starts_with(".."))
                            .unwrap_or(&line),
                    );
                }
                let stall = behaviour.lock().unwrap().stall;
                if let Some(d) = stall {
                    std::thread::sleep(d);
                }
                messages.lock().unwrap().push(SinkMessage {
                    mail: mail.clone(),
                    from: from.clone(),
                    rcpts: std::mem::take(&mut rcpts),
                    data,
                    mail_at,
                });
                "250 2.0.0 accepted\r\n".into()
            }
        } else if upper == "RSET" {
            rcpts.clear();
            "250 2.0.0 ok\r\n".into()
        } else if upper == "QUIT" {
            quits.fetch_add(1, Ordering::SeqCst);
            out.write_all(b"221 2.0.0 bye\r\n")?;
            return Ok(());
        } else {
            "250 2.0.0 ok\r\n".into()
        };
        out.write_all(reply.as_bytes())?;
    }
}
