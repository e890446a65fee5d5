//! A real authoritative DNS server (hickory-server, through amtp-loadtest's `dns` module) in the
//! test process on 127.0.0.1, serving the forward zone `amtp.test.` and the reverse zone for
//! 127.0.0.0/24. It runs on its own thread and stops when dropped.

use std::net::SocketAddr;
use std::time::Duration;

pub struct TestDns {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// `ptr` maps the last octet of 127.0.0.x to a host name (PTR and A records are made for it).
pub fn start(ptr: &[(u8, &str)]) -> TestDns {
    start_with(ptr, "")
}

/// As [`start`], with extra records (master-file lines) in the `amtp.test.` zone.
pub fn start_with(ptr: &[(u8, &str)], extra_forward: &str) -> TestDns {
    let mut forward = String::from(
        "$ORIGIN amtp.test.\n$TTL 300\n@ IN SOA ns.amtp.test. admin.amtp.test. 1 3600 600 86400 30\n@ IN NS ns\nns IN A 127.0.0.1\n",
    );
    let mut reverse = String::from(
        "$ORIGIN 0.0.127.in-addr.arpa.\n$TTL 300\n@ IN SOA ns.amtp.test. admin.amtp.test. 1 3600 600 86400 30\n@ IN NS ns.amtp.test.\n",
    );
    for (octet, name) in ptr {
        reverse.push_str(&format!("{octet} IN PTR {name}.\n"));
        if let Some(label) = name.strip_suffix(".amtp.test") {
            forward.push_str(&format!("{label} IN A 127.0.0.{octet}\n"));
        }
    }
    forward.push_str(extra_forward);
    let (catalog, _) = amtp_loadtest::dns::catalog_from(vec![
        ("amtp.test.".to_string(), forward),
        ("0.0.127.in-addr.arpa.".to_string(), reverse),
    ])
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server =
                amtp_loadtest::dns::DnsServer::bind(catalog, "127.0.0.1:0".parse().unwrap())
                    .await
                    .unwrap();
            tx.send(server.addr).unwrap();
            server
                .serve_until(async {
                    let _ = stop_rx.await;
                })
                .await;
        });
    });
    let addr = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    TestDns {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
