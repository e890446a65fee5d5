//! A fleet of relays end to end: relay nodes (the real binary) behind a real HAProxy that
//! sends PROXY v2 headers, clients bound to distinct 127.0.0.x sources with their own PTR
//! records in the in-process DNS server, and (for the shared limits) a real Redis.
//!
//! Skipped (with a line saying so) when haproxy or redis-server is not installed, unless
//! `AMTP_TEST_REQUIRE_FLEET` is set, as in CI.

use crate::balancer::{Haproxy, have};
use crate::dns::{self, TestDns};
use crate::harness::{Client, Relay, socket_from, wait_until};
use crate::pki::TestCa;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What every node of a test fleet shares: one server certificate (so a client behind the
/// balancer trusts every node), the AMTP CA, the DNS server with PTR records.
pub struct Shared {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub amtp_ca: TestCa,
    pub dns: TestDns,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// 127.0.0.{10+i} is hostN.amtp.test; 127.0.0.1 (where HAProxy connects from) is
/// balancer.amtp.test.
pub fn host_ip(i: u8) -> String {
    format!("127.0.0.{}", 10 + i)
}

pub fn host_name(i: u8) -> String {
    format!("host{i}.amtp.test")
}

pub fn shared() -> Shared {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new("Fleet server CA");
    let ca = server_ca.write(&dir.path().join("server-ca.pem"));
    let (cert, key) = server_ca
        .host(&["relay.test"], 2020, 2099)
        .write(dir.path(), "relay");
    let amtp_ca = TestCa::new("Fleet AMTP CA");
    let mut ptr: Vec<(u8, String)> = (0..8).map(|i| (10 + i, host_name(i))).collect();
    ptr.push((1, "balancer.amtp.test".into()));
    let refs: Vec<(u8, &str)> = ptr.iter().map(|(o, n)| (*o, n.as_str())).collect();
    let dns = dns::start(&refs);
    Shared {
        dir,
        ca,
        amtp_ca,
        dns,
        cert,
        key,
    }
}

/// A node's config: four listeners, each `proxy_protocol` trusting 127.0.0.1 (HAProxy),
/// `listener_extra` lines on each listener, `extra` sections appended.
pub fn node_config(s: &Shared, listener_extra: &str, extra: &str) -> String {
    let amtp_ca = s.amtp_ca.write(&s.dir.path().join("amtp-ca.pem"));
    let mut text = format!(
        r#"
[server]
hostname = "relay.test"
data_dir = "data"
local_domains = ["example.test"]
create_dev_user = true
shutdown_grace = "2s"

[tls]
certificate = "{}"
private_key = "{}"

[delivery]
enabled = false

[amtp]
public_ca = "{}"

[resolver]
servers = ["{}"]
timeout = "1s"
attempts = 1
"#,
        s.cert.display(),
        s.key.display(),
        amtp_ca.display(),
        s.dns.addr,
    );
    for (name, role) in [
        ("mx", "mx"),
        ("submission", "submission"),
        ("submissions", "submissions"),
        ("amtp", "amtp"),
    ] {
        text.push_str(&format!(
            "\n[[listener]]\nname = \"{name}\"\nrole = \"{role}\"\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\nproxy_trusted = [\"127.0.0.1/32\"]\n{listener_extra}\n"
        ));
    }
    text.push_str(extra);
    text
}

fn send(c: &mut Client, mail: &str, rcpt: &str, subject: &str) -> amtp_proto::Reply {
    c.expect(mail, 250);
    c.expect(rcpt, 250);
    c.expect("DATA", 354);
    c.write(format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n").as_bytes());
    c.read_reply().unwrap()
}

pub fn plain(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

/// Whether the server closed `s` without sending anything.
fn closed_unanswered(mut s: std::net::TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

#[test]
fn behind_haproxy_the_client_is_the_address_in_the_proxy_header() {
    if !have("haproxy") {
        return;
    }
    let s = shared();
    let nodes: Vec<Relay> = (0..2)
        .map(|_| Relay::start_config(&node_config(&s, "max_connections_per_ip = 2", "")))
        .collect();
    let all = |l: &str| nodes.iter().map(|n| n.addr(l)).collect::<Vec<SocketAddr>>();
    let lb = Haproxy::start(&[
        ("amtp", all("amtp")),
        ("mx0", vec![nodes[0].addr("mx")]),
        ("submission0", vec![nodes[0].addr("submission")]),
        ("submissions", all("submissions")),
    ]);

    // AMTP, implicit TLS after the header: each host's identity is checked against its own
    // PTR (HAProxy's own address is balancer.amtp.test), on both nodes (round robin).
    for round in 0..2 {
        for i in 0..2u8 {
            let cert = s.amtp_ca.client(&host_name(i), 2020, 2099);
            let mut c = Client::amtp(
                lb.addr("amtp"),
                &host_ip(i),
                &s.ca,
                Some((&cert.cert_pem, &cert.key_pem)),
            )
            .expect("AMTP handshake through the balancer");
            c.expect(&format!("EHLO {}", host_name(i)), 250);
            let r = send(
                &mut c,
                "MAIL FROM:<a@amtp.test> MPC=per/individual",
                "RCPT TO:<bob@example.test>",
                &format!("round {round} host {i}"),
            );
            assert_eq!(r.code, 250, "{r}");
            c.expect("QUIT", 221);
        }
    }
    // Both nodes got mail, and its Received names the real client.
    assert_eq!(nodes.iter().map(Relay::queued).sum::<usize>(), 4);
    for n in &nodes {
        assert!(n.queued() >= 1, "the balancer spreads connections");
        let show = n.show_first();
        assert!(
            show.contains("127.0.0.10") || show.contains("127.0.0.11"),
            "Received names the client, not the balancer: {show}"
        );
        assert!(!show.contains("[127.0.0.1]"), "{show}");
    }
    // Host 0's address presenting host 1's certificate: its own PTR does not match.
    let cert1 = s.amtp_ca.client(&host_name(1), 2020, 2099);
    let mut c = Client::amtp(
        lb.addr("amtp"),
        &host_ip(0),
        &s.ca,
        Some((&cert1.cert_pem, &cert1.key_pem)),
    )
    .unwrap();
    c.expect(&format!("EHLO {}", host_name(1)), 504);

    // The per-IP limit (2) applies per real client, not to the balancer.
    let mut held: Vec<Client> = (0..2)
        .map(|_| Client::from_tcp(socket_from("127.0.0.20", lb.addr("mx0"))))
        .collect();
    for c in &held {
        assert_eq!(c.greeting.code, 220, "{}", c.greeting);
    }
    let third = Client::from_tcp(socket_from("127.0.0.20", lb.addr("mx0")));
    assert_eq!(third.greeting.code, 421, "{}", third.greeting);
    assert!(
        third.greeting.text().contains("your address"),
        "{}",
        third.greeting
    );
    let mut other = Client::from_tcp(socket_from("127.0.0.21", lb.addr("mx0")));
    assert_eq!(other.greeting.code, 220, "another client is not limited");
    other.expect("QUIT", 221);
    held.iter_mut().for_each(|c| {
        c.expect("QUIT", 221);
    });

    // STARTTLS after the header, then AUTH (counted against the client's address).
    let mut sub = Client::from_tcp(socket_from("127.0.0.22", lb.addr("submission0")));
    sub.expect("EHLO client.test", 250);
    let mut sub = sub.starttls(&s.ca);
    sub.expect("EHLO client.test", 250);
    sub.expect(
        &format!("AUTH PLAIN {}", plain("dev", &nodes[0].dev_password())),
        235,
    );
    sub.expect("QUIT", 221);
    // Implicit TLS after the header (the ClientHello follows it at once).
    let mut subs = Client::amtp(lb.addr("submissions"), "127.0.0.23", &s.ca, None)
        .expect("implicit TLS through the balancer");
    subs.expect("EHLO client.test", 250);
    subs.expect("QUIT", 221);
    assert!(
        nodes[0].logged(&["connection refused: limit reached", "127.0.0.20"]),
        "logs name the real client"
    );
}

#[test]
fn a_proxy_listener_refuses_untrusted_and_headerless_connections() {
    let s = shared();
    let relay = Relay::start_config(&node_config(&s, "proxy_header_timeout = \"300ms\"", ""));
    let mx = relay.addr("mx");
    // Not from proxy_trusted: closed, never greeted.
    assert!(closed_unanswered(socket_from("127.0.0.50", mx)));
    assert!(wait_until(5, || relay
        .logged(&["not from a proxy_trusted address", "127.0.0.50"])));
    // Trusted, but no header within the timeout: closed, never greeted.
    assert!(closed_unanswered(socket_from("127.0.0.1", mx)));
    // Trusted, but not a PROXY header (a client that bypassed the balancer).
    let mut raw = socket_from("127.0.0.1", mx);
    raw.write_all(b"EHLO client.test\r\n").unwrap();
    assert!(closed_unanswered(raw));
    assert!(wait_until(5, || relay.logged(&["reason", "timeout"])
        && relay.logged(&["reason", "bad_header"])));
    // A v1 header from the trusted balancer: served as the client it names.
    let mut raw = socket_from("127.0.0.1", mx);
    raw.write_all(b"PROXY TCP4 127.0.0.60 127.0.0.1 40000 25\r\n")
        .unwrap();
    let mut c = Client::from_tcp(raw);
    assert_eq!(c.greeting.code, 220, "{}", c.greeting);
    c.expect("EHLO client.test", 250);
    let r = send(
        &mut c,
        "MAIL FROM:<a@client.test>",
        "RCPT TO:<bob@example.test>",
        "v1",
    );
    assert_eq!(r.code, 250, "{r}");
    assert!(relay.show_first().contains("127.0.0.60"));
}

/// A users file with `alice` / `password`, made by `amtp-relay hash-password`.
fn users_file(s: &Shared) -> PathBuf {
    let mut child = std::process::Command::new(crate::harness::BIN)
        .args(["hash-password", "--user", "alice"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let path = s.dir.path().join("users.toml");
    std::fs::write(&path, out.stdout).unwrap();
    path
}

/// Nodes `edge-0`… sharing `redis`, with `extra` sections (e.g. `[auth]`). The deadline is
/// generous: these tests are about what is shared, on a machine running many tests at once
/// (a missed deadline is a correct fallback to local limits, but not what they test).
fn cluster_nodes(s: &Shared, n: usize, redis: &str, extra: &str) -> Vec<Relay> {
    (0..n)
        .map(|i| {
            let cfg = node_config(
                s,
                "",
                &format!(
                    "{extra}\n[cluster]\nredis = \"{redis}\"\nnode_id = \"edge-{i}\"\ndeadline = \"500ms\"\nheartbeat = \"200ms\"\n"
                ),
            )
            .replace("create_dev_user = true", "create_dev_user = false");
            Relay::start_config(&cfg)
        })
        .collect()
}

/// Wait until every node has logged `needle` at least `times` times.
fn all_logged(nodes: &[Relay], needle: &str, times: usize) -> bool {
    wait_until(20, || {
        nodes.iter().all(|n| {
            n.logs
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(needle))
                .count()
                >= times
        })
    })
}

/// A node's log lines about Redis (for failure messages).
fn redis_lines(n: &Relay) -> String {
    n.logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("Redis"))
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

const SHARED_ON: &str = "limits are shared across the fleet";
const SHARED_OFF: &str = "Redis unreachable";

#[test]
fn an_auth_lockout_earned_on_one_node_holds_on_the_others() {
    if !have("haproxy") || !have("redis-server") {
        return;
    }
    let s = shared();
    let redis = crate::balancer::Redis::start();
    let users = users_file(&s);
    let nodes = cluster_nodes(
        &s,
        2,
        &redis.url(),
        &format!(
            "[auth]\nusers_file = \"{}\"\nmax_failures_per_ip = 3\nmax_failures_per_user = 3\nlockout = \"10m\"\n",
            users.display()
        ),
    );
    assert!(all_logged(&nodes, SHARED_ON, 1));
    let lb = Haproxy::start(&[
        ("subs0", vec![nodes[0].addr("submissions")]),
        ("subs1", vec![nodes[1].addr("submissions")]),
    ]);
    let login = |frontend: &str, source: &str, password: &str| -> u16 {
        let mut c = Client::amtp(lb.addr(frontend), source, &s.ca, None).unwrap();
        c.expect("EHLO client.test", 250);
        c.send(&format!("AUTH PLAIN {}", plain("alice", password)))
            .code
    };
    // Three failures from 127.0.0.30 on node 0 (the third locks the address out).
    let codes: Vec<u16> = (0..3)
        .map(|_| login("subs0", "127.0.0.30", "wrong"))
        .collect();
    assert_eq!(codes, [535, 535, 454], "node 0 locks the address out");
    // The right password from that address on node 1: locked out there too.
    let code = login("subs1", "127.0.0.30", "password");
    assert_eq!(code, 454, "node 1 logs: {}", redis_lines(&nodes[1]));
    assert!(wait_until(5, || nodes[1]
        .logged(&["locked out across the fleet", "127.0.0.30"])));
    // Another client on node 1 is not affected.
    assert_eq!(login("subs1", "127.0.0.31", "password"), 235);

    // `cluster status` on either node lists both.
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["cluster", "status", "--data-dir"])
        .arg(nodes[1].data_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("edge-0") && text.contains("edge-1 ") && text.contains("(this node)"),
        "{text}"
    );
    assert!(text.contains("shared limits: on"), "{text}");
}

/// Send one AMTP message as host `i` through `frontend`: the MAIL reply code (and, when 250,
/// the final reply code).
fn amtp_message(s: &Shared, lb: &Haproxy, i: u8, n: usize) -> (u16, u16) {
    let cert = s.amtp_ca.client(&host_name(i), 2020, 2099);
    let mut c = Client::amtp(
        lb.addr("amtp"),
        &host_ip(i),
        &s.ca,
        Some((&cert.cert_pem, &cert.key_pem)),
    )
    .expect("handshake");
    c.expect(&format!("EHLO {}", host_name(i)), 250);
    let mail = c.send("MAIL FROM:<a@amtp.test> MPC=per/individual");
    if mail.code != 250 {
        return (mail.code, 0);
    }
    c.expect("RCPT TO:<bob@example.test>", 250);
    c.expect("DATA", 354);
    c.write(format!("Subject: {n}\r\n\r\nhello\r\n.\r\n").as_bytes());
    let done = c.read_reply().unwrap();
    (250, done.code)
}

/// Sleep into the next wall-clock minute when fewer than `need` seconds of this one remain
/// (the fleet counts per minute).
fn room_in_this_minute(need: u64) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let left = 60 - secs % 60;
    if left < need {
        std::thread::sleep(Duration::from_secs(left + 1));
    }
}

#[test]
fn the_identity_rate_is_fleet_wide_and_redis_outages_fall_back_to_local_limits() {
    if !have("haproxy") || !have("redis-server") {
        return;
    }
    let s = shared();
    let mut redis = crate::balancer::Redis::start();
    // Rate limit 4 per minute per identity, on every node.
    let nodes: Vec<Relay> = (0..2)
        .map(|i| {
            let cfg = node_config(
                &s,
                "",
                &format!(
                    "\n[cluster]\nredis = \"{}\"\nnode_id = \"edge-{i}\"\ndeadline = \"500ms\"\nheartbeat = \"200ms\"\n",
                    redis.url()
                ),
            )
            .replace("[amtp]\n", "[amtp]\nrate_limit_per_minute = 4\n");
            Relay::start_config(&cfg)
        })
        .collect();
    assert!(all_logged(&nodes, SHARED_ON, 1));
    let lb = Haproxy::start(&[("amtp", nodes.iter().map(|n| n.addr("amtp")).collect())]);
    let queued = || nodes.iter().map(Relay::queued).sum::<usize>();

    // Shared: host 0 sends 7 messages spread over both nodes; the fleet takes 4.
    room_in_this_minute(25);
    let results: Vec<(u16, u16)> = (0..7).map(|n| amtp_message(&s, &lb, 0, n)).collect();
    let accepted = results.iter().filter(|r| *r == &(250, 250)).count();
    assert_eq!(accepted, 4, "fleet-wide limit: {results:?}");
    assert!(
        results.iter().all(|r| *r == (250, 250) || r.0 == 451),
        "{results:?}"
    );
    assert!(
        nodes.iter().all(|n| n.queued() >= 1),
        "both nodes took mail"
    );
    assert_eq!(queued(), 4);
    assert!(
        nodes[0].show_first().contains(".edge-0"),
        "the Received id names the node"
    );

    // Redis dies: the next decisions are local (4 per node), mail keeps flowing, and
    // everything acknowledged is queued.
    redis.kill();
    assert!(
        all_logged(&nodes, SHARED_OFF, 1),
        "each node notices and says so"
    );
    let results: Vec<(u16, u16)> = (0..7).map(|n| amtp_message(&s, &lb, 1, n)).collect();
    let accepted = results.iter().filter(|r| *r == &(250, 250)).count();
    assert!(
        accepted > 4,
        "local limits: each node takes up to 4: {results:?}"
    );
    assert_eq!(queued(), 4 + accepted, "nothing acknowledged is lost");

    // Redis returns: the nodes rejoin and the limit is fleet-wide again.
    redis.restart();
    assert!(all_logged(&nodes, SHARED_ON, 2), "each node rejoins");
    room_in_this_minute(25);
    let results: Vec<(u16, u16)> = (0..7).map(|n| amtp_message(&s, &lb, 2, n)).collect();
    let again = results.iter().filter(|r| *r == &(250, 250)).count();
    assert_eq!(again, 4, "shared again: {results:?}");
    assert_eq!(queued(), 8 + accepted);
}

#[test]
fn two_nodes_never_open_more_than_the_fleet_cap_to_one_destination() {
    if !have("haproxy") || !have("redis-server") {
        return;
    }
    let s = shared();
    let redis = crate::balancer::Redis::start();
    let sink = crate::sink::Sink::start("127.0.0.1:0");
    // Each delivery takes a while, so a backlog builds and each node wants its 2 connections.
    sink.behaviour.lock().unwrap().stall = Some(Duration::from_millis(150));
    let delivery = format!(
        "[delivery]\nserver_ca = \"{}\"\npoll_interval = \"200ms\"\nconcurrency_per_destination = 2\n\n[[delivery.route]]\ndomains = [\"example.test\"]\nhost = \"127.0.0.1\"\nport = {}\nprotocol = \"smtp\"\ntls = \"none\"\n",
        crate::harness::unused_roots().display(),
        sink.addr.port()
    );
    let nodes: Vec<Relay> = (0..2)
        .map(|i| {
            let cfg = node_config(
                &s,
                "",
                &format!(
                    "\n[cluster]\nredis = \"{}\"\nnode_id = \"edge-{i}\"\ndeadline = \"500ms\"\nheartbeat = \"200ms\"\n",
                    redis.url()
                ),
            )
            .replace("[delivery]\nenabled = false\n", &delivery);
            Relay::start_config(&cfg)
        })
        .collect();
    assert!(all_logged(&nodes, SHARED_ON, 1));
    let lb = Haproxy::start(&[
        ("mx0", vec![nodes[0].addr("mx")]),
        ("mx1", vec![nodes[1].addr("mx")]),
    ]);
    const PER_NODE: usize = 16;
    let senders: Vec<_> = ["mx0", "mx1"]
        .into_iter()
        .map(|f| {
            let addr = lb.addr(f);
            std::thread::spawn(move || {
                let mut c = Client::from_tcp(socket_from("127.0.0.40", addr));
                c.expect("EHLO client.test", 250);
                for n in 0..PER_NODE {
                    let r = send(
                        &mut c,
                        "MAIL FROM:<a@client.test>",
                        "RCPT TO:<bob@example.test>",
                        &format!("{n}"),
                    );
                    assert_eq!(r.code, 250, "{r}");
                }
                c.expect("QUIT", 221);
            })
        })
        .collect();
    senders.into_iter().for_each(|t| t.join().unwrap());
    let got = sink.wait_for(2 * PER_NODE, 60);
    assert_eq!(got.len(), 2 * PER_NODE, "everything is delivered");
    let most = sink.max_open.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        most <= 2,
        "the sink saw {most} connections at once; the fleet cap is 2"
    );
}

/// Nodes `edge-0`, `edge-1` on `redis`, delivering `example.test` to `sink` with `delivery`
/// lines added to `[delivery]`.
fn delivering_nodes(
    s: &Shared,
    redis: &str,
    sink: &crate::sink::Sink,
    delivery: &str,
) -> Vec<Relay> {
    let section = format!(
        "[delivery]\nserver_ca = \"{}\"\npoll_interval = \"200ms\"\n{delivery}\n\n[[delivery.route]]\ndomains = [\"example.test\"]\nhost = \"127.0.0.1\"\nport = {}\nprotocol = \"smtp\"\ntls = \"none\"\n",
        crate::harness::unused_roots().display(),
        sink.addr.port()
    );
    (0..2)
        .map(|i| {
            let cfg = node_config(
                s,
                "",
                &format!(
                    "\n[cluster]\nredis = \"{redis}\"\nnode_id = \"edge-{i}\"\ndeadline = \"500ms\"\nheartbeat = \"200ms\"\n"
                ),
            )
            .replace("[delivery]\nenabled = false\n", &section);
            Relay::start_config(&cfg)
        })
        .collect()
}

/// Send `per_node` messages through each frontend at once (one client per frontend),
/// subjects `<tag>-<frontend>-<n>`.
fn send_through(lb: &Haproxy, frontends: &[&str], per_node: usize, tag: &str) {
    let senders: Vec<_> = frontends
        .iter()
        .map(|f| {
            let (addr, subject) = (lb.addr(f), format!("{tag}-{f}"));
            std::thread::spawn(move || {
                let mut c = Client::from_tcp(socket_from("127.0.0.41", addr));
                c.expect("EHLO client.test", 250);
                for n in 0..per_node {
                    let r = send(
                        &mut c,
                        "MAIL FROM:<a@client.test>",
                        "RCPT TO:<bob@example.test>",
                        &format!("{subject}-{n}"),
                    );
                    assert_eq!(r.code, 250, "{r}");
                }
                c.expect("QUIT", 221);
            })
        })
        .collect();
    senders.into_iter().for_each(|t| t.join().unwrap());
}

/// The most messages the sink may see in any interval `t` at `per_second` with bursts of
/// `burst`: `burst + per_second × (t + jitter)` — the relays release at most
/// `burst + per_second × t` in any interval `t`, and `jitter` allows for deliveries taking
/// different times from release to MAIL (a new connection, a busy machine). Upper bounds
/// only. The worst window, if any breaks it.
fn over_pace(
    mut times: Vec<std::time::Instant>,
    per_second: f64,
    burst: f64,
    jitter: f64,
) -> Option<String> {
    times.sort();
    let mut worst: Option<(f64, usize, f64)> = None;
    for i in 0..times.len() {
        for j in i..times.len() {
            let t = (times[j] - times[i]).as_secs_f64();
            let count = j - i + 1;
            #[allow(clippy::cast_precision_loss)]
            let excess = count as f64 - (burst + per_second * (t + jitter));
            if excess > 0.0 && worst.is_none_or(|w| excess > w.0) {
                worst = Some((excess, count, t));
            }
        }
    }
    worst.map(|(_, count, t)| {
        format!("{count} messages within {t:.3} s; at {per_second}/s the bound is {burst} + {per_second} × ({t:.3} + {jitter})")
    })
}

/// Subjects of the messages the sink got whose subject starts with `tag`, and when each MAIL
/// arrived.
fn arrivals(sink: &crate::sink::Sink, tag: &str) -> (Vec<String>, Vec<std::time::Instant>) {
    sink.messages
        .lock()
        .unwrap()
        .iter()
        .filter_map(|m| {
            let subject = m.data.lines().find_map(|l| l.strip_prefix("Subject: "))?;
            subject
                .starts_with(tag)
                .then(|| (subject.to_string(), m.mail_at))
        })
        .unzip()
}

/// A node's JSON log events whose message is `message`.
fn log_events(n: &Relay, message: &str) -> Vec<serde_json::Value> {
    n.logs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// What a destination logs when its message rate starts holding mail back.
const HELD: &str = "destination message rate reached: mail waits in the queue for the budget (no attempt is counted)";

/// Every one of `expected` subjects arrived exactly once.
fn exactly_once(subjects: &[String], expected: usize) {
    let mut unique = subjects.to_vec();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        subjects.len(),
        "a message was sent twice: {subjects:?}"
    );
    assert_eq!(
        subjects.len(),
        expected,
        "every message arrives: {subjects:?}"
    );
}

#[test]
fn a_destination_message_rate_is_fleet_wide_and_held_mail_waits_without_an_attempt() {
    if !have("haproxy") || !have("redis-server") {
        return;
    }
    let s = shared();
    let mut redis = crate::balancer::Redis::start();
    let sink = crate::sink::Sink::start("127.0.0.1:0");
    // 4 a second for the fleet, bursts of 1: two nodes together release at most
    // 1 + 4 × t messages in any interval t. Each node alone would send 4 a second.
    let nodes = delivering_nodes(
        &s,
        &redis.url(),
        &sink,
        "max_messages_per_destination = \"4/s\"",
    );
    assert!(all_logged(&nodes, SHARED_ON, 1));
    let lb = Haproxy::start(&[
        ("mx0", vec![nodes[0].addr("mx")]),
        ("mx1", vec![nodes[1].addr("mx")]),
    ]);
    let wait_for = |tag: &str, n: usize| {
        wait_until(40, || arrivals(&sink, tag).0.len() >= n);
        // A message sent twice would arrive after the last one: give it a moment.
        std::thread::sleep(Duration::from_millis(300));
        arrivals(&sink, tag)
    };

    // Shared: 10 messages on each node, held for the fleet's budget, all delivered once.
    const PER_NODE: usize = 10;
    send_through(&lb, &["mx0", "mx1"], PER_NODE, "shared");
    // The queue says why the mail waits (leased, not attempted).
    assert!(
        wait_until(5, || nodes.iter().any(|n| {
            let (ok, out, _) = n.queue_cli(&["stats"]);
            ok && out.contains("waiting for a destination's message rate")
        })),
        "queue stats shows held mail"
    );
    let (subjects, times) = wait_for("shared", 2 * PER_NODE);
    exactly_once(&subjects, 2 * PER_NODE);
    if let Some(e) = over_pace(times, 4.0, 1.0, 1.0) {
        panic!("over the fleet's rate: {e}");
    }
    // Waiting is not an attempt: every message is delivered on its first, none deferred.
    let outcomes: Vec<serde_json::Value> = nodes
        .iter()
        .flat_map(|n| {
            log_events(n, "delivered")
                .into_iter()
                .chain(log_events(n, "deferred"))
        })
        .collect();
    assert_eq!(outcomes.len(), 2 * PER_NODE, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| o["message"] == "delivered" && o["attempt"] == 1),
        "held mail is neither deferred nor counted as an attempt: {outcomes:?}"
    );
    // A node says so once per episode, not per message.
    let said = |n: &Relay, scope: &str| {
        log_events(n, HELD)
            .iter()
            .filter(|e| e["scope"] == scope)
            .count()
    };
    assert!(
        nodes.iter().any(|n| said(n, "fleet") >= 1),
        "the node that held mail says so"
    );
    assert!(
        nodes.iter().all(|n| said(n, "fleet") < PER_NODE / 2),
        "once per episode, not per message"
    );

    // Redis dies: each node falls back to its own 4 a second; mail keeps flowing, none lost.
    redis.kill();
    assert!(
        all_logged(&nodes, SHARED_OFF, 1),
        "each node notices and says so"
    );
    send_through(&lb, &["mx0", "mx1"], 6, "alone");
    let (subjects, _) = wait_for("alone", 12);
    exactly_once(&subjects, 12);
    assert!(
        nodes.iter().any(|n| said(n, "node") >= 1),
        "held on the node's own budget while Redis is away"
    );

    // Redis returns: the rate is the fleet's again.
    redis.restart();
    assert!(all_logged(&nodes, SHARED_ON, 2), "each node rejoins");
    send_through(&lb, &["mx0", "mx1"], 6, "again");
    let (subjects, times) = wait_for("again", 12);
    exactly_once(&subjects, 12);
    if let Some(e) = over_pace(times, 4.0, 1.0, 1.0) {
        panic!("over the fleet's rate after Redis returned: {e}");
    }
}

/// Hold one of the fleet's connection slots to `destination` on `redis` for a minute, as a
/// node that died with an open connection would.
fn ghost_lease(redis: &crate::balancer::Redis, destination: &str) {
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 60_000;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    s.write_all(format!("ZADD amtp:conn:{destination} {until} ghost:0\r\n").as_bytes())
        .unwrap();
    let mut reply = [0u8; 16];
    let n = s.read(&mut reply).unwrap();
    assert_eq!(&reply[..n], b":1\r\n");
}

#[test]
fn a_destination_whose_fleet_slots_were_full_keeps_trying_after_its_last_connection() {
    if !have("haproxy") || !have("redis-server") {
        return;
    }
    let s = shared();
    let redis = crate::balancer::Redis::start();
    let sink = crate::sink::Sink::start("127.0.0.1:0");
    // Two fleet slots, one held by a dead node: each round, one connection gets the other and
    // a second request finds the fleet full. With one message per connection, the connection
    // ends within moments of that refusal — and the destination must still ask again.
    ghost_lease(&redis, &format!("route:127.0.0.1:{}", sink.addr.port()));
    let nodes = delivering_nodes(
        &s,
        &redis.url(),
        &sink,
        "concurrency_per_destination = 2\nmax_messages_per_connection = 1",
    );
    let node = &nodes[0];
    assert!(all_logged(std::slice::from_ref(node), SHARED_ON, 1));
    let lb = Haproxy::start(&[("mx0", vec![node.addr("mx")])]);
    send_through(&lb, &["mx0"], 20, "slots");
    let got = sink.wait_for(20, 30);
    assert_eq!(
        got.len(),
        20,
        "every message is delivered through the one free slot"
    );
}

/// One node (the rate works per node without `[cluster]`; no HAProxy or Redis needed), two
/// next hops, a small in-flight set: a backlog to a throttled hop far bigger than
/// `max_in_flight` must not keep mail for another hop waiting. The throttled hop holds only
/// a few seconds' worth; the rest goes back to the queue untried (no attempt counted), so
/// the router leases the other hop's mail. Every throttled message is delivered exactly once
/// or still queued, never deferred. (Before, the held mail filled the in-flight set and the
/// other hop's message waited for the whole backlog: about 40 s here.)
#[test]
fn a_throttled_hop_with_a_backlog_does_not_stall_the_other_hops() {
    let slow = crate::sink::Sink::start("127.0.0.1:0");
    let other = crate::sink::Sink::start("127.0.0.1:0");
    let route = |domain: &str, sink: &crate::sink::Sink| {
        format!(
            "\n[[delivery.route]]\ndomains = [\"{domain}\"]\nhost = \"127.0.0.1\"\nport = {}\nprotocol = \"smtp\"\ntls = \"none\"\n",
            sink.addr.port()
        )
    };
    let relay = Relay::start_config(&format!(
        "{}\n[delivery]\nserver_ca = \"{}\"\npoll_interval = \"200ms\"\nmax_in_flight = 8\nmax_messages_per_destination = \"1/s\"\n{}{}\n[resolver]\nservers = [\"127.0.0.1:9\"]\ntimeout = \"1s\"\nattempts = 1\n",
        crate::harness::SERVER.replace(
            "local_domains = [\"example.test\"]",
            "local_domains = [\"slow.test\", \"other.test\"]"
        ),
        crate::harness::unused_roots().display(),
        route("slow.test", &slow),
        route("other.test", &other),
    ));
    const BACKLOG: usize = 40;
    let mut c = Client::connect(relay.addr("mx"));
    c.expect("EHLO client.test", 250);
    for n in 0..BACKLOG {
        let r = send(
            &mut c,
            "MAIL FROM:<a@client.test>",
            "RCPT TO:<bob@slow.test>",
            &format!("slow-{n}"),
        );
        assert_eq!(r.code, 250, "{r}");
    }
    let r = send(
        &mut c,
        "MAIL FROM:<a@client.test>",
        "RCPT TO:<bob@other.test>",
        "other",
    );
    assert_eq!(r.code, 250, "{r}");
    c.expect("QUIT", 221);

    // A generous bound: at 1/s the backlog alone takes 40 s.
    assert!(
        wait_until(15, || arrivals(&other, "other").0.len() == 1),
        "the other hop's message is stuck behind the throttled hop: {} of {BACKLOG} throttled messages delivered meanwhile",
        arrivals(&slow, "slow").0.len()
    );
    // Let a few more of the backlog go, then take stock.
    wait_until(3, || arrivals(&slow, "slow").0.len() >= 3);
    let (ok, stats, err) = relay.queue_cli(&["stats"]);
    assert!(ok, "{err}");
    let (delivered, _) = arrivals(&slow, "slow");
    let mut unique = delivered.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), delivered.len(), "sent twice: {delivered:?}");
    let queued = relay.queued();
    assert!(
        delivered.len() + queued >= BACKLOG && delivered.len() + queued <= BACKLOG + 2,
        "every throttled message is delivered or still queued: {} delivered, {queued} queued\n{stats}",
        delivered.len()
    );
    // Waiting, held or postponed, is never an attempt: nothing deferred, every delivery the
    // message's first attempt.
    assert!(log_events(&relay, "deferred").is_empty(), "{stats}");
    assert!(stats.contains("deferred:  0"), "{stats}");
    let outcomes = log_events(&relay, "delivered");
    assert!(
        outcomes.iter().all(|o| o["attempt"] == 1),
        "held mail is not counted as an attempt: {outcomes:?}"
    );
    assert!(
        relay.logged(&["destination message rate reached"]),
        "the throttling episode is logged"
    );
}
