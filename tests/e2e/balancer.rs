//! The real fleet parts for the fleet tests: HAProxy in front of relay nodes (TCP mode,
//! `send-proxy-v2`) and a Redis server, each started on loopback with free ports and a
//! temporary directory, and stopped when dropped.
//!
//! CI installs both (`haproxy`, `redis-server`) and sets `AMTP_TEST_REQUIRE_FLEET=1`, which
//! turns a missing binary into a failure; elsewhere the tests say so and skip.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `bin` can be run; `false` (and a SKIPPED line) when it cannot and CI does not
/// require it.
pub fn have(bin: &str) -> bool {
    let ok = Command::new(bin)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            std::env::var_os("AMTP_TEST_REQUIRE_FLEET").is_none(),
            "AMTP_TEST_REQUIRE_FLEET is set but {bin} cannot be run (apt-get install haproxy redis-server)"
        );
        eprintln!("SKIPPED: {bin} is not installed");
    }
    ok
}

/// A free loopback port (bound and released: the child binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(addr: SocketAddr, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} is not listening on {addr}");
}

/// A running HAProxy: one TCP frontend per entry, each balancing round robin over its
/// backends with a PROXY v2 header.
pub struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
    frontends: Vec<(String, SocketAddr)>,
}

impl Haproxy {
    /// `frontends`: (name, relay listener addresses behind it).
    pub fn start(frontends: &[(&str, Vec<SocketAddr>)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = String::from(
            "global\n    maxconn 2000\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n",
        );
        let mut addrs = Vec::new();
        for (name, backends) in frontends {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            cfg.push_str(&format!(
                "\nfrontend f_{name}\n    bind {addr}\n    default_backend b_{name}\n\nbackend b_{name}\n    balance roundrobin\n"
            ));
            for (i, b) in backends.iter().enumerate() {
                cfg.push_str(&format!("    server n{i} {b} send-proxy-v2\n"));
            }
            addrs.push((name.to_string(), addr));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let mut child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for (name, addr) in &addrs {
            wait_listening(*addr, &format!("haproxy frontend {name}"), &mut child);
        }
        Self {
            child,
            _dir: dir,
            frontends: addrs,
        }
    }

    /// The frontend's address.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.frontends
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no frontend {name}"))
            .1
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
/// A Redis server on a loopback port, without persistence, in a temporary directory.
pub struct Redis {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Self {
            child: None,
            dir,
            port: free_port(),
        };
        r.restart();
        r
    }

    /// `redis://127.0.0.1:port/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Kill the server (SIGKILL: as if its host died).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it (again) on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(self.dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(
            format!("127.0.0.1:{}", self.port).parse().unwrap(),
            "redis-server",
            &mut child,
        );
        self.child = Some(child);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
