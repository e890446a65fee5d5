//! Starting the relay binary and talking SMTP to it.

use amtp_proto::Reply;
use amtp_proto::reply::parse_reply;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_amtp-relay");

/// A running relay.
pub struct Relay {
    child: Child,
    pub dir: tempfile::TempDir,
    pub addrs: HashMap<String, SocketAddr>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// Server, dev TLS and the three SMTP listeners on free loopback ports: the start of every
/// test relay's config (tests append their own sections).
pub const SERVER: &str = r#"
[server]
hostname = "relay.test"
data_dir = "data"
local_domains = ["example.test"]
create_dev_user = true
shutdown_grace = "2s"

[tls]
generate_dev_certificate = true

[[listener]]
name = "mx"
role = "mx"
address = "127.0.0.1:0"

[[listener]]
name = "submission"
role = "submission"
address = "127.0.0.1:0"
cram_md5 = true

[[listener]]
name = "submissions"
role = "submissions"
address = "127.0.0.1:0"
cram_md5 = true
"#;

/// A CA bundle file for `[delivery] server_ca` in relays whose tests never verify a next hop
/// (check-config refuses delivery without trust anchors). One per test process.
pub fn unused_roots() -> &'static Path {
    static ROOTS: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    let (_, path) = ROOTS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path =
            crate::pki::TestCa::new("unused test roots").write(&dir.path().join("roots.pem"));
        (dir, path)
    });
    path
}

/// The default test relay: accept and queue only.
fn base() -> String {
    format!("{SERVER}\n[delivery]\nenabled = false\n")
}

impl Relay {
    /// Start with the base config plus `extra` TOML sections.
    pub fn start(extra: &str) -> Self {
        Self::start_config(&format!("{}\n{extra}", base()))
    }

    /// Start with `max_connections_per_ip` set on the mx listener.
    pub fn start_with_listener_limit(per_ip: usize) -> Self {
        let config = base().replacen(
            "role = \"mx\"\n",
            &format!("role = \"mx\"\nmax_connections_per_ip = {per_ip}\n"),
            1,
        );
        Self::start_config(&config)
    }

    pub fn start_config(text: &str) -> Self {
        Self::start_config_in(tempfile::tempdir().unwrap(), text)
    }

    /// Start in an existing directory (e.g. to restart on the same data after `kill9`).
    pub fn start_config_in(dir: tempfile::TempDir, text: &str) -> Self {
        let config = dir.path().join("relay.toml");
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--log-format", "json", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "listening" {
                        let _ = tx.send((
                            v["listener"].as_str().unwrap_or("").to_string(),
                            v["address"]
                                .as_str()
                                .unwrap_or("")
                                .parse::<SocketAddr>()
                                .ok(),
                        ));
                    } else if v["message"] == "relay started" {
                        let _ = tx.send(("started".into(), None));
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut addrs = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((name, Some(addr))) => {
                    addrs.insert(name, addr);
                }
                Ok((_, None)) => break,
                Err(_) => panic!(
                    "relay did not start; log:\n{}",
                    logs.lock().unwrap().join("\n")
                ),
            }
        }
        assert!(addrs.len() >= 3, "listeners: {addrs:?}");
        Self {
            child,
            dir,
            addrs,
            logs,
        }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.addrs[listener]
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn ca(&self) -> PathBuf {
        self.data_dir().join("tls/ca.pem")
    }

    pub fn dev_password(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("dev-password"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// `amtp-relay queue <args> --data-dir <ours>`: (exit success, stdout, stderr).
    pub fn queue_cli(&self, args: &[&str]) -> (bool, String, String) {
        queue_cli(&self.data_dir(), args)
    }

    /// `queue show` of the first message in `queue list`.
    pub fn show_first(&self) -> String {
        let (ok, list, err) = self.queue_cli(&["list"]);
        assert!(ok, "queue list failed: {err}");
        let id = list
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("empty queue: {list}"))
            .to_string();
        let (ok, show, err) = self.queue_cli(&["show", &id]);
        assert!(ok, "queue show failed: {err}");
        show
    }

    /// Number of queued messages, via the CLI (admin socket while running).
    pub fn queued(&self) -> usize {
        let (ok, out, err) = self.queue_cli(&["list"]);
        assert!(ok, "queue list failed: {err}");
        out.lines()
            .filter(|l| l.len() > 16 && l[..16].bytes().all(|b| b.is_ascii_hexdigit()))
            .count()
    }

    /// Whether any log line contains every needle.
    pub fn logged(&self, needles: &[&str]) -> bool {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    }

    /// A fresh client on the mx listener still gets a full dialogue.
    pub fn assert_serving(&self) {
        let mut c = Client::connect(self.addr("mx"));
        c.expect("EHLO other.test", 250);
        c.expect("NOOP", 250);
        c.expect("QUIT", 221);
    }

    /// The relay's configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("relay.toml")
    }

    /// Send a signal (`HUP`, `TERM`, …) to the relay process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// The exit status, if the relay has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Wait up to `secs` for the relay to exit.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// `amtp-relay <command> --data-dir <ours>` (reload, drain, resume): (exit success,
    /// stdout, stderr).
    pub fn admin(&self, command: &str) -> (bool, String, String) {
        let out = Command::new(BIN)
            .arg(command)
            .arg("--data-dir")
            .arg(self.data_dir())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// kill -9, and hand back the directory (data and config) for a restart.
    pub fn kill9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "relay exited with {status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "relay did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Plain TCP until STARTTLS, then TLS over the same socket.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// A blocking SMTP client.
pub struct Client {
    stream: Conn,
    buf: Vec<u8>,
    pub greeting: Reply,
}

fn tls_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    tls_config_with(ca, None)
}

/// A client config trusting `ca`, presenting `client` (PEM cert, PEM key) if given.
fn tls_config_with(ca: &Path, client: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(Result::unwrap)
                    .collect();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    })
}

fn tls_stream(tcp: TcpStream, ca: &Path) -> Conn {
    let conn =
        rustls::ClientConnection::new(tls_config(ca), ServerName::try_from("relay.test").unwrap())
            .unwrap();
    Conn::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

impl Client {
    fn from_stream(stream: Conn) -> Self {
        Self::try_from_stream(stream).expect("greeting")
    }

    /// `None` when no greeting arrives (e.g. the TLS handshake was refused).
    fn try_from_stream(stream: Conn) -> Option<Self> {
        let mut c = Self {
            stream,
            buf: Vec::new(),
            greeting: Reply::new(0, "", ""),
        };
        c.greeting = c.read_reply()?;
        Some(c)
    }

    /// AMTP: TLS on connect from `source` (a 127.0.0.x address), trusting `ca`, presenting
    /// `client` (PEM cert and key) if given. `None` when the server refuses the handshake.
    pub fn amtp(
        addr: SocketAddr,
        source: &str,
        ca: &Path,
        client: Option<(&str, &str)>,
    ) -> Option<Self> {
        let tcp = socket_from(source, addr);
        let conn = rustls::ClientConnection::new(
            tls_config_with(ca, client),
            ServerName::try_from("relay.test").unwrap(),
        )
        .unwrap();
        Self::try_from_stream(Conn::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
    }

    /// A client TLS configuration for AMTP (PEM cert and key) that keeps the session tickets
    /// the relay sends, so the next connection made with it resumes.
    pub fn amtp_config(ca: &Path, client: (&str, &str)) -> Arc<rustls::ClientConfig> {
        tls_config_with(ca, Some(client))
    }

    /// [`Client::amtp`] with a given client configuration (see [`Client::amtp_config`]).
    pub fn amtp_with(
        addr: SocketAddr,
        source: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Option<Self> {
        let tcp = socket_from(source, addr);
        let conn =
            rustls::ClientConnection::new(config, ServerName::try_from("relay.test").unwrap())
                .unwrap();
        Self::try_from_stream(Conn::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
    }

    /// Full or resumed, for a TLS connection.
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        match &self.stream {
            Conn::Tls(s) => s.conn.handshake_kind(),
            Conn::Plain(_) => None,
        }
    }

    /// The key-exchange group the TLS handshake used.
    pub fn kx_group(&self) -> Option<rustls::NamedGroup> {
        match &self.stream {
            Conn::Tls(s) => s.conn.negotiated_key_exchange_group().map(|g| g.name()),
            Conn::Plain(_) => None,
        }
    }

    /// Over an already-connected socket (e.g. bound to a chosen loopback source address).
    pub fn from_tcp(tcp: TcpStream) -> Self {
        Self::from_stream(Conn::Plain(tcp))
    }

    pub fn connect(addr: SocketAddr) -> Self {
        Self::from_stream(Conn::Plain(tcp(addr)))
    }

    /// Implicit TLS (the submissions port).
    pub fn connect_tls(addr: SocketAddr, ca: &Path) -> Self {
        Self::from_stream(tls_stream(tcp(addr), ca))
    }

    /// Raw TCP, for sending garbage.
    pub fn raw(addr: SocketAddr) -> TcpStream {
        tcp(addr)
    }

    /// STARTTLS, then continue over TLS (caller sends EHLO again).
    pub fn starttls(mut self, ca: &Path) -> Self {
        self.expect("STARTTLS", 220);
        let Conn::Plain(tcp) = self.stream else {
            panic!("STARTTLS on a TLS connection")
        };
        Self {
            stream: tls_stream(tcp, ca),
            buf: Vec::new(),
            greeting: Reply::new(220, "", ""),
        }
    }

    /// Read one reply; `None` on EOF.
    pub fn read_reply(&mut self) -> Option<Reply> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf, 4096).unwrap() {
                self.buf.drain(..used);
                return Some(reply);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
        self.stream.flush().unwrap();
    }

    /// Send a command line and read the reply.
    pub fn send(&mut self, line: &str) -> Reply {
        self.write(format!("{line}\r\n").as_bytes());
        self.read_reply()
            .unwrap_or_else(|| panic!("connection closed after {line:?}"))
    }

    /// Send and assert the code; returns the reply.
    pub fn expect(&mut self, line: &str, code: u16) -> Reply {
        let r = self.send(line);
        assert_eq!(r.code, code, "{line:?} -> {r}");
        r
    }

    /// Whether the server closed the connection.
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }

    /// Read until the server closes; true if it closed (EOF or reset), false on a read timeout.
    pub fn read_until_closed(&mut self) -> (Vec<u8>, bool) {
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return (all, true),
                Ok(n) => all.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return (all, false);
                }
                Err(_) => return (all, true),
            }
        }
    }

    /// A full transaction; returns the final reply after the end of DATA.
    pub fn send_mail(&mut self, from: &str, to: &[&str], body: &str) -> Reply {
        self.expect(&format!("MAIL FROM:<{from}>"), 250);
        for t in to {
            self.expect(&format!("RCPT TO:<{t}>"), 250);
        }
        self.expect("DATA", 354);
        self.write(body.as_bytes());
        self.write(b"\r\n.\r\n");
        self.read_reply().unwrap()
    }
}

/// A TCP connection from a chosen loopback source address (each 127.0.0.x is a distinct host
/// with its own PTR record).
pub fn socket_from(source: &str, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&format!("{source}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.connect(&to.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Poll `f` every 100 ms for up to `secs` seconds; whether it became true.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// `amtp-relay queue <args> --data-dir <data_dir>`, running or stopped relay alike:
/// (exit success, stdout, stderr).
pub fn queue_cli(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("queue")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
