//! The loadtest tools against each other for real, on loopback: fixtures → certificates and
//! zones; the DNS server answering PTRs from them; blast over every protocol against the sink
//! (TLS with real certificates, AMTP with mutual TLS); failure injection; open-loop pacing;
//! hold; report; and the loopback guard of the command line.

use amtp_loadtest::blast::{self, BlastArgs};
use amtp_loadtest::client::Protocol;
use amtp_loadtest::fixtures::{self, FixturesArgs};
use amtp_loadtest::sink::{BoundSink, SinkArgs, SinkReport};
use amtp_loadtest::target::ConnectArgs;
use amtp_loadtest::{dns, hold, report};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn fixtures(dir: &Path, clients: u32) -> PathBuf {
    let out = dir.join("fx");
    fixtures::generate(&FixturesArgs {
        out: out.clone(),
        clients,
        domain: "load.test".into(),
        // Only written into the generated files; every server these tests start binds
        // port 0 itself, so no fixed port is ever used.
        relay_amtp: "127.0.0.1:0".parse().unwrap(),
        relay_smtp: "127.0.0.1:0".parse().unwrap(),
        relay_tls: "127.0.0.1:0".parse().unwrap(),
        dns: "127.0.0.1:0".parse().unwrap(),
        sink: "127.0.0.1:0".parse().unwrap(),
        relay_metrics: "127.0.0.1:0".parse().unwrap(),
    })
    .unwrap();
    out
}

fn sink_args(fx: Option<&Path>) -> SinkArgs {
    let mut args = SinkArgs::defaults("127.0.0.1:0".parse().unwrap());
    args.tls_cert = fx.map(|d| d.join("server.pem"));
    args.tls_key = fx.map(|d| d.join("server-key.pem"));
    args.duration = Duration::from_secs(120);
    args
}

/// A sink on its own runtime thread; `finish` stops it and returns its counts.
struct RunningSink {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<SinkReport>>,
}

impl RunningSink {
    fn start(args: SinkArgs) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let bound = BoundSink::bind(args).await.unwrap();
                addr_tx.send(bound.local_addr()).unwrap();
                bound
                    .run(async {
                        let _ = stop_rx.await;
                    })
                    .await
            })
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> SinkReport {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap()
    }
}

fn connect_args(target: std::net::SocketAddr, protocol: Protocol) -> ConnectArgs {
    let mut connect = BlastArgs::defaults(target, protocol).connect;
    connect.timeout = Duration::from_secs(10);
    connect
}

fn blast_args(connect: ConnectArgs, messages: u64) -> BlastArgs {
    let mut args = BlastArgs::defaults(connect.target, connect.protocol);
    args.connect = connect;
    args.connections = 4;
    args.messages_per_connection = 5;
    args.messages = messages;
    args.size = "2k".parse().unwrap();
    args.recipients = 2;
    args.json = true;
    args.threads = Some(2);
    args
}

#[test]
fn blast_delivers_every_message_over_smtp_starttls_and_implicit_tls() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixtures(dir.path(), 2);
    for (protocol, tls_on_connect) in [
        (Protocol::Smtp, false),
        (Protocol::Starttls, false),
        (Protocol::Tls, true),
    ] {
        let mut args = sink_args(Some(&fx));
        args.tls_on_connect = tls_on_connect;
        let sink = RunningSink::start(args);
        let mut connect = connect_args(sink.addr, protocol);
        connect.ca = Some(fx.join("ca.pem"));
        connect.server_name = Some("relay.load.test".into());
        let result = blast::run(blast_args(connect, 60)).unwrap();
        let counts = sink.finish();
        assert_eq!(result.messages_ok, 60, "{protocol:?}: {result:?}");
        assert_eq!(result.messages_failed, 0, "{protocol:?}");
        assert!(
            result.errors.is_empty(),
            "{protocol:?}: {:?}",
            result.errors
        );
        assert_eq!(counts.messages, 60, "{protocol:?}");
        assert_eq!(counts.recipients, 120, "{protocol:?}");
        assert_eq!(
            result.bytes,
            counts.bytes - 60 * 3,
            "body bytes plus the '.' lines"
        );
        let has_tls = result.phases.iter().any(|p| p.phase == "tls");
        assert_eq!(has_tls, protocol != Protocol::Smtp, "{protocol:?}");
        if protocol != Protocol::Smtp {
            assert_eq!(result.tls_full + result.tls_resumed, result.sessions);
            // Four connections start without a ticket; later ones resume.
            assert!(result.tls_resumed > 0, "{protocol:?}: {result:?}");
        }
        let data_end = result
            .phases
            .iter()
            .find(|p| p.phase == "data_end")
            .unwrap();
        assert_eq!(data_end.count, 60);
    }
}

#[test]
fn amtp_runs_with_mutual_tls_per_identity_and_fail_with_an_untrusted_ca() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixtures(dir.path(), 8);
    let mut args = sink_args(Some(&fx));
    args.tls_on_connect = true;
    args.client_ca = Some(fx.join("ca.pem"));
    args.mpc_policy = Some("ALLOW=per/*".into());
    let sink = RunningSink::start(args.clone());
    let mut connect = connect_args(sink.addr, Protocol::Amtp);
    connect.identities = Some(fx.join("identities.json"));
    let mut full_only = connect.clone();
    full_only.no_resumption = true;
    let result = blast::run(blast_args(full_only, 40)).unwrap();
    assert_eq!(result.messages_ok, 40, "{result:?}");
    assert_eq!(result.identities, 8);
    assert_eq!(
        result.tls_resumed, 0,
        "--no-resumption makes every handshake full"
    );
    assert_eq!(result.tls_full, result.sessions);
    assert_eq!(sink.finish().messages, 40);

    // Client certificates from another CA: the sink refuses the handshake.
    let other = tempfile::tempdir().unwrap();
    let other_fx = fixtures(other.path(), 2);
    let sink = RunningSink::start(args);
    connect.target = sink.addr;
    connect.identities = Some(other_fx.join("identities.json"));
    connect.ca = Some(fx.join("ca.pem"));
    let result = blast::run(blast_args(connect, 10)).unwrap();
    assert_eq!(result.messages_ok, 0);
    assert_eq!(result.messages_failed, 10);
    let failures: u64 = result.errors.values().sum();
    assert_eq!(failures, 10, "{:?}", result.errors);
    assert_eq!(sink.finish().messages, 0);

    // AMTP without identities is refused before any connection.
    let err = blast::run(blast_args(connect_args(sink_addr(), Protocol::Amtp), 1)).unwrap_err();
    assert!(err.to_string().contains("--identities"), "{err}");
}

fn sink_addr() -> std::net::SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

#[test]
fn injected_refusals_are_counted_by_reply_code_and_the_session_goes_on() {
    let mut args = sink_args(None);
    args.reject_percent = 10.0;
    args.reject_code = 451;
    let sink = RunningSink::start(args);
    let result = blast::run(blast_args(connect_args(sink.addr, Protocol::Smtp), 100)).unwrap();
    let counts = sink.finish();
    assert_eq!(result.errors.get("451"), Some(&10), "{:?}", result.errors);
    assert_eq!(result.messages_ok, 90);
    assert_eq!(result.messages_failed, 10);
    assert_eq!((counts.messages, counts.rejected), (90, 10));
    // Refusals do not end sessions: 100 messages at 5 per connection take 20 sessions, plus at
    // most one short session per connection slot (4) where the budget ran out; had each of the
    // 10 refusals ended its session, there would be 30 or more.
    assert!((20..24).contains(&result.sessions), "{}", result.sessions);
    assert_eq!(result.errors.len(), 1, "{:?}", result.errors);
}

#[test]
fn an_open_loop_run_is_paced_and_a_dead_target_ends_the_run_with_errors() {
    let sink = RunningSink::start(sink_args(None));
    let mut args = blast_args(connect_args(sink.addr, Protocol::Smtp), 50);
    args.rate = Some(100.0);
    let started = Instant::now();
    let result = blast::run(args).unwrap();
    // 50 messages scheduled at 100/s: the last one cannot start before 0.49 s.
    assert!(
        started.elapsed() >= Duration::from_millis(490),
        "{result:?}"
    );
    assert_eq!(result.messages_ok, 50);
    assert_eq!(result.rate, Some(100.0));
    assert_eq!(sink.finish().messages, 50);

    // Nothing listens: every message fails with `connect`, and the run still ends.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let result = blast::run(blast_args(connect_args(closed, Protocol::Smtp), 20)).unwrap();
    assert_eq!(result.messages_failed, 20);
    assert_eq!(
        result.errors.get("connect"),
        Some(&20),
        "{:?}",
        result.errors
    );
}

#[test]
fn the_fixture_zones_answer_ptr_queries_over_real_dns() {
    use hickory_resolver::proto::op::{Message, Query};
    use hickory_resolver::proto::rr::{Name, RData, RecordType};
    use std::str::FromStr;

    let dir = tempfile::tempdir().unwrap();
    let fx = fixtures(dir.path(), 300);
    let (catalog, origins) = dns::catalog(&fx.join("zones")).unwrap();
    assert_eq!(origins, ["127.in-addr.arpa.", "load.test."]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server = dns::DnsServer::bind(catalog, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.addr;
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve_until(async {
            let _ = stop_rx.await;
        }));
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Identity 300 is c00300.load.test on 127.1.1.44 (past an octet boundary).
        for (name, expected) in [
            ("44.1.1.127.in-addr.arpa.", "c00300.load.test."),
            ("1.0.0.127.in-addr.arpa.", "relay.load.test."),
        ] {
            let mut query = Message::query();
            query.metadata.recursion_desired = true;
            query.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::PTR));
            socket
                .send_to(&query.to_vec().unwrap(), addr)
                .await
                .unwrap();
            let mut buf = [0u8; 1500];
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            let answer = Message::from_vec(&buf[..n]).unwrap();
            let ptrs: Vec<String> = answer
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::PTR(ptr) => Some(ptr.to_string()),
                    _ => None,
                })
                .collect();
            assert_eq!(ptrs, [expected], "{name}");
        }
        let _ = stop.send(());
        serving.await.unwrap();
    });
}

#[test]
fn hold_keeps_sessions_open_and_reports_memory() {
    let sink = RunningSink::start(sink_args(None));
    let mut connect = connect_args(sink.addr, Protocol::Smtp);
    connect.sources = 10;
    let report = hold::run(hold::HoldArgs {
        connect,
        connections: 200,
        open_concurrency: 50,
        hold: Duration::from_millis(300),
        pid: Some(std::process::id()),
        json: true,
    })
    .unwrap();
    assert_eq!(report.opened, 200, "{report:?}");
    assert!(report.errors.is_empty());
    assert!(report.rss_before_kib.unwrap() > 0 && report.rss_held_kib.unwrap() > 0);
    assert!(report.kib_per_connection.is_some());
    assert_eq!(sink.finish().connections, 200);
}

#[test]
fn report_renders_charts_and_a_table_from_json_results() {
    let sink = RunningSink::start(sink_args(None));
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for connections in [1, 4] {
        let mut args = blast_args(connect_args(sink.addr, Protocol::Smtp), 20);
        args.connections = connections;
        args.label = Some(format!("smtp with {connections}"));
        let result = blast::run(args).unwrap();
        let path = dir.path().join(format!("c{connections}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&result).unwrap()).unwrap();
        files.push(path);
    }
    sink.finish();
    let runs = report::load(&files).unwrap();
    assert_eq!(runs.len(), 2);
    let page = report::html("capacity <test>", &runs).unwrap();
    assert!(page.contains("Messages per second against concurrency"));
    assert!(
        !page.contains("Sessions per second against concurrency"),
        "no session-only runs: no empty sessions chart"
    );
    assert!(page.contains("Messages per second</h3>"), "a time series");
    // One run alone: the charts that need several runs are hidden.
    let one = report::html("one", &runs[..1]).unwrap();
    assert!(
        !one.contains("against concurrency"),
        "a single dot is no chart"
    );
    assert!(page.contains("smtp with 1") && page.contains("smtp with 4"));
    assert!(page.contains("capacity &lt;test&gt;"));
    assert!(
        page.contains("<polyline") || page.contains("<path"),
        "series are drawn"
    );
    // A file that is not a result is a clear error.
    std::fs::write(dir.path().join("bad.json"), "{\"x\": 1}").unwrap();
    let err = report::load(&[dir.path().join("bad.json")]).unwrap_err();
    assert!(format!("{err:#}").contains("bad.json"), "{err:#}");
}

/// Reads a child's stderr lines on a thread until `want` matches one; returns that line.
fn wait_for_line(
    lines: &std::sync::mpsc::Receiver<String>,
    want: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if want(&line) => return Some(line),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn without_a_terminal_blast_prints_progress_lines_and_a_terminated_sink_prints_its_totals() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let bin = env!("CARGO_BIN_EXE_amtp-loadtest");
    let mut sink = Command::new(bin)
        .args([
            "sink",
            "--listen",
            "127.0.0.1:0",
            "--progress-every",
            "200ms",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = sink.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let listening = wait_for_line(&lines, |l| l.starts_with("sink: listening on ")).unwrap();
    let addr = listening
        .trim_start_matches("sink: listening on ")
        .to_string();
    // Progress lines on a pipe (no terminal): one per interval, with the interval's rate.
    let blast = Command::new(bin)
        .args([
            "blast",
            "--target",
            &addr,
            "--messages",
            "400",
            "--connections",
            "2",
            "--size",
            "1k",
            "--rate",
            "200",
            "--progress-every",
            "300ms",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(blast.status.success());
    let progress = String::from_utf8_lossy(&blast.stderr);
    let lines_seen: Vec<&str> = progress
        .lines()
        .filter(|l| l.starts_with("blast: "))
        .collect();
    assert!(lines_seen.len() >= 3, "{progress}");
    assert!(
        lines_seen
            .iter()
            .all(|l| l.contains("/400 messages") && l.contains(" eta ")),
        "{progress}"
    );
    assert!(
        wait_for_line(&lines, |l| l.contains("messages/s over the last")).is_some(),
        "the sink reports the rate of its last interval"
    );
    // SIGTERM, as scripts and service managers stop it: the totals are still printed.
    let killed = Command::new("kill")
        .args(["-TERM", &sink.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = sink.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("sink: 400 messages accepted"),
        "totals on SIGTERM: {stdout:?} ({:?})",
        out.status
    );
}

#[test]
fn the_command_line_refuses_non_loopback_targets_unless_told() {
    let bin = env!("CARGO_BIN_EXE_amtp-loadtest");
    let out = std::process::Command::new(bin)
        .args(["blast", "--target", "192.0.2.1:25", "--messages", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    let out = std::process::Command::new(bin)
        .args(["sink", "--listen", "0.0.0.0:0", "--duration", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-non-loopback"));
}
