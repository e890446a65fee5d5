//! The capacity tools against the real relay: `amtp-loadtest fixtures` writes a configuration
//! the relay accepts as is; the relay, configured from it, takes AMTP load from the fixture
//! identities (each its own source address, certificate and PTR, answered by the fixture zones
//! over real DNS) and plain SMTP load, and delivers everything to the loadtest sink.

use crate::harness::{Relay, wait_until};
use amtp_loadtest::blast::{self, BlastArgs};
use amtp_loadtest::client::Protocol;
use amtp_loadtest::fixtures::{self, FixturesArgs};
use amtp_loadtest::sink::{BoundSink, SinkArgs, SinkReport, SinkStats};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A future-driven service on its own runtime thread; `finish` stops it.
struct Background<T, M> {
    /// What the service reported once started (its address, handles).
    ready: M,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<T>>,
}

impl<T, M> Background<T, M> {
    fn finish(mut self) -> T {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap()
    }
}

fn start_sink() -> Background<SinkReport, (SocketAddr, SinkStats)> {
    let mut args = SinkArgs::defaults("127.0.0.1:0".parse().unwrap());
    args.duration = Duration::from_secs(300);
    spawn(move |addr_tx, stop| async move {
        let sink = BoundSink::bind(args).await.unwrap();
        addr_tx.send((sink.local_addr(), sink.stats())).unwrap();
        sink.run(async {
            let _ = stop.await;
        })
        .await
    })
}

fn start_dns(zones: &Path) -> Background<(), SocketAddr> {
    let (catalog, _) = amtp_loadtest::dns::catalog(zones).unwrap();
    spawn(move |addr_tx, stop| async move {
        let server = amtp_loadtest::dns::DnsServer::bind(catalog, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        addr_tx.send(server.addr).unwrap();
        server
            .serve_until(async {
                let _ = stop.await;
            })
            .await;
    })
}

fn spawn<T: Send + 'static, M: Send + 'static, F>(
    body: impl FnOnce(std::sync::mpsc::Sender<M>, tokio::sync::oneshot::Receiver<()>) -> F
    + Send
    + 'static,
) -> Background<T, M>
where
    F: std::future::Future<Output = T>,
{
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(body(addr_tx, stop_rx))
    });
    Background {
        ready: addr_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        stop: Some(stop),
        thread: Some(thread),
    }
}

fn load(target: SocketAddr, protocol: Protocol, identities: &Path, messages: u64) -> BlastArgs {
    let mut args = BlastArgs::defaults(target, protocol);
    args.connect.identities = Some(identities.to_path_buf());
    args.connect.timeout = Duration::from_secs(20);
    args.connections = 3;
    args.messages_per_connection = 5;
    args.messages = messages;
    args.size = "4k".parse().unwrap();
    args.json = true;
    args.threads = Some(1);
    args
}

#[test]
fn fixture_identities_drive_the_real_relay_over_amtp_and_smtp_into_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let fx = dir.path().to_path_buf();
    let sink = start_sink();
    let (sink_addr, sink_stats) = sink.ready.clone();
    fixtures::generate(&FixturesArgs {
        out: fx.clone(),
        clients: 6,
        domain: "load.test".into(),
        relay_amtp: "127.0.0.1:0".parse().unwrap(),
        relay_smtp: "127.0.0.1:0".parse().unwrap(),
        relay_tls: "127.0.0.1:0".parse().unwrap(),
        dns: "127.0.0.1:5353".parse().unwrap(),
        sink: sink_addr,
        relay_metrics: "127.0.0.1:0".parse().unwrap(),
    })
    .unwrap();

    // The generated configuration is valid as written.
    let check = std::process::Command::new(crate::harness::BIN)
        .args(["check-config", "--config"])
        .arg(fx.join("relay.toml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Serve the fixture zones on a free port and point the relay's resolver at it.
    let dns = start_dns(&fx.join("zones"));
    let text = std::fs::read_to_string(fx.join("relay.toml"))
        .unwrap()
        .replace("127.0.0.1:5353", &dns.ready.to_string());
    let relay = Relay::start_config_in(dir, &text);
    let identities = fx.join("identities.json");

    // The fixture config serves metrics; blast scrapes them during the run.
    let mut args = load(relay.addr("amtp"), Protocol::Amtp, &identities, 30);
    args.metrics_url = Some(format!("http://{}/metrics", relay.addr("metrics")));
    args.scrape_every = Duration::from_millis(100);
    let amtp = blast::run(args).unwrap();
    assert_eq!(amtp.messages_ok, 30, "{amtp:?}");
    assert!(amtp.relay_samples.len() >= 2, "{:?}", amtp.relay_samples);
    let last = amtp.relay_samples.last().unwrap();
    assert!(last.accepted >= 30.0 && last.rss_bytes > 0.0, "{last:?}");
    assert!(
        amtp.relay_cpu_s.is_some(),
        "CPU from process_cpu_seconds_total"
    );
    assert!(amtp.environment.relay_version.is_some());
    assert!(!amtp.environment.relay_pools.is_empty());
    assert_eq!(amtp.timeline.iter().map(|s| s.messages).sum::<u64>(), 30);
    assert!(amtp.errors.is_empty(), "{:?}", amtp.errors);
    assert_eq!(amtp.identities, 6);
    assert!(amtp.phases.iter().any(|p| p.phase == "tls"));

    let smtp = blast::run(load(relay.addr("mx"), Protocol::Smtp, &identities, 20)).unwrap();
    assert_eq!(smtp.messages_ok, 20, "{smtp:?}");

    let delivered = || sink_stats.report().messages;
    assert!(
        wait_until(60, || delivered() >= 50),
        "the relay delivered {} of 50 to the sink",
        delivered()
    );
    drop(relay);
    let report = sink.finish();
    assert_eq!(report.messages, 50, "nothing twice");
    assert_eq!(report.recipients, 50);
    dns.finish();
}
