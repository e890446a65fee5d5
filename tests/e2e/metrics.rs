//! Observability end to end: the real relay with `[metrics]`, an AMTP listener (real DNS, rcgen
//! certificates), delivery to a sink and to a dead next hop. Mail is accepted, relayed,
//! refused (550, 504) and deferred; the test scrapes `/metrics`, checks that each counter moved
//! by exactly what happened, lints the scrape with the real `promtool`, follows one message
//! through the per-message log, and turns `/healthz/ready` to 503 and back by breaking and
//! repairing the queue's storage.

use crate::dns;
use crate::harness::{Client, Relay, wait_until};
use crate::pki::TestCa;
use crate::sink::Sink;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

/// GET `path` from the metrics endpoint: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// The value of one series (`name{labels}` exactly as exposed, labels sorted), 0 if absent.
pub fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// The sum of every series of a family whose labels include all of `labels`.
fn sum(scrape: &str, family: &str, labels: &[&str]) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Run the real `promtool check metrics` on a scrape; panics with its findings.
pub fn promtool_check(scrape: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool not found: install the Debian package `prometheus` (.ci/run does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics: {findings}"
    );
}

/// The keys of a flat JSON object, in order, duplicates kept (serde_json's `Value` would keep
/// only the last of a repeated key, hiding exactly what we look for).
fn json_keys(line: &str) -> Vec<String> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Keys>(line)
        .map(|k| k.0)
        .unwrap_or_default()
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_default()
}

const GOOD: &str = "good.amtp.test";

#[test]
fn metrics_health_and_the_message_trail() {
    let dns = dns::start(&[(50, GOOD), (51, "other.amtp.test")]);
    let ca = TestCa::new("Metrics Test Public CA");
    let scratch = tempfile::tempdir().unwrap();
    let ca_path = ca.write(&scratch.path().join("public-ca.pem"));
    let sink = Sink::start("127.0.0.1:0");
    // A next hop that refuses connections: bind, note the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        r#"
{server}
[metrics]
listen = "127.0.0.1:0"

[[listener]]
name = "amtp"
role = "amtp"
address = "127.0.0.1:0"

[amtp]
public_ca = "{ca}"
mpc_policy = "DENY=com/optout"

[resolver]
servers = ["{dns}"]
timeout = "1s"
attempts = 1

[delivery]
poll_interval = "200ms"
first_retry = "1h"
connect_timeout = "2s"

[[delivery.route]]
domains = ["example.test"]
host = "127.0.0.1"
port = {sink}
protocol = "smtp"
tls = "none"

[[delivery.route]]
domains = ["dead.test"]
host = "127.0.0.1"
port = {dead}
protocol = "smtp"
tls = "none"
"#,
        server = crate::harness::SERVER
            .replace(r#"["example.test"]"#, r#"["example.test", "dead.test"]"#),
        ca = ca_path.display(),
        dns = dns.addr,
        sink = sink.addr.port(),
        dead = dead.port(),
    );
    let relay = Relay::start_config(&config);
    let endpoint = relay.addr("metrics");
    assert_eq!(http_get(endpoint, "/healthz/live").0, 200);
    // Listeners count themselves up when their accept loop runs, which may be a moment after
    // the start-up line (the sockets are already bound and queue connections meanwhile).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut ready = http_get(endpoint, "/healthz/ready");
    while ready.0 != 200 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        ready = http_get(endpoint, "/healthz/ready");
    }
    assert_eq!(ready, (200, "ready\n".into()));

    // 1. SMTP: accepted and relayed to the sink.
    let mut c = Client::connect(relay.addr("mx"));
    c.expect("EHLO client.test", 250);
    let r = c.send_mail(
        "alice@sender.test",
        &["bob@example.test"],
        "Subject: trail\r\nMessage-ID: <trail@sender.test>\r\n\r\nhello",
    );
    assert_eq!(r.code, 250, "{r}");
    let queue_id = r.text().rsplit(' ').next().unwrap().to_string();
    // 2. Refused: relaying without AUTH (550), in the same session.
    c.expect("MAIL FROM:<alice@sender.test>", 250);
    c.expect("RCPT TO:<someone@remote.test>", 550);
    c.expect("RSET", 250);
    // 3. Accepted, then deferred: its next hop refuses connections.
    let r = c.send_mail(
        "alice@sender.test",
        &["carol@dead.test"],
        "Subject: dead\r\n\r\nx",
    );
    assert_eq!(r.code, 250, "{r}");
    c.expect("QUIT", 221);

    // 4. AMTP: the right certificate from the wrong address — PTR mismatch, 504.
    let cert = ca.client(GOOD, 2020, 2099);
    let client_cert = Some((cert.cert_pem.as_str(), cert.key_pem.as_str()));
    let mut a = Client::amtp(relay.addr("amtp"), "127.0.0.51", &relay.ca(), client_cert)
        .expect("handshake");
    a.expect(&format!("EHLO {GOOD}"), 504);
    drop(a);
    // 5. AMTP from its own address: verified, accepted with an MPC, relayed.
    let mut a = Client::amtp(relay.addr("amtp"), "127.0.0.50", &relay.ca(), client_cert)
        .expect("handshake");
    a.expect(&format!("EHLO {GOOD}"), 250);
    a.expect("MAIL FROM:<peer@good.amtp.test> MPC=per/individual", 250);
    a.expect("RCPT TO:<dave@example.test>", 250);
    a.expect("DATA", 354);
    a.write(b"Subject: amtp\r\n\r\nhi\r\n.\r\n");
    assert_eq!(a.read_reply().unwrap().code, 250);
    a.expect("QUIT", 221);

    let delivered = sink.wait_for(2, 20);
    assert_eq!(
        delivered.len(),
        2,
        "both messages to example.test delivered"
    );
    // Our Received header names the queue id the 250 reply gave (allocated before the commit).
    let ours = delivered
        .iter()
        .find(|m| m.data.contains("Subject: trail"))
        .unwrap();
    assert!(
        ours.data.contains(&format!("\tid {queue_id}")),
        "Received names queue id {queue_id}:\n{}",
        ours.data
    );
    let mut scrape = String::new();
    assert!(
        wait_until(20, || {
            scrape = http_get(endpoint, "/metrics").1;
            value(
                &scrape,
                r#"amtp_delivery_attempts_total{result="deferred",route="route"}"#,
            ) >= 1.0
                && value(
                    &scrape,
                    r#"amtp_delivery_attempts_total{result="delivered",route="route"}"#,
                ) >= 2.0
        }),
        "delivery outcomes recorded:\n{scrape}"
    );

    // The counters moved by exactly what happened.
    let v = |series: &str| value(&scrape, series);
    assert_eq!(v(r#"amtp_messages_accepted_total{listener="mx"}"#), 2.0);
    assert_eq!(v(r#"amtp_messages_accepted_total{listener="amtp"}"#), 1.0);
    assert_eq!(v(r#"amtp_connections_accepted_total{listener="mx"}"#), 1.0);
    assert_eq!(
        v(r#"amtp_connections_accepted_total{listener="amtp"}"#),
        2.0
    );
    assert_eq!(v(r#"amtp_replies_total{code="220",listener="mx"}"#), 1.0); // greeting
    assert_eq!(v(r#"amtp_replies_total{code="220",listener="amtp"}"#), 2.0);
    assert_eq!(v(r#"amtp_replies_total{code="550",listener="mx"}"#), 1.0);
    assert_eq!(v(r#"amtp_replies_total{code="504",listener="amtp"}"#), 1.0);
    assert_eq!(
        v(r#"amtp_commands_refused_total{listener="mx",verb="RCPT"}"#),
        1.0
    );
    assert_eq!(
        v(r#"amtp_commands_refused_total{listener="amtp",verb="EHLO"}"#),
        1.0
    );
    assert_eq!(
        v(r#"amtp_identity_checks_total{result="ptr_mismatch"}"#),
        1.0
    );
    assert_eq!(v(r#"amtp_identity_checks_total{result="verified"}"#), 1.0);
    assert_eq!(
        v(r#"amtp_tls_handshakes_total{listener="amtp",result="full"}"#),
        2.0
    );
    assert_eq!(
        v(r#"amtp_tls_handshake_duration_seconds_count{listener="amtp"}"#),
        2.0
    );
    assert_eq!(
        v(r#"amtp_delivery_attempts_total{result="delivered",route="route"}"#),
        2.0
    );
    assert_eq!(v("amtp_queue_commit_duration_seconds_count"), 3.0);
    assert_eq!(v(r#"amtp_queue_messages{state="deferred"}"#), 1.0);
    assert_eq!(v(r#"amtp_queue_messages{state="ready"}"#), 0.0);
    assert!(v("amtp_queue_oldest_message_age_seconds") > 0.0);
    assert_eq!(v("amtp_queue_storage_healthy"), 1.0);
    assert_eq!(v("amtp_outbound_connections_total{result=\"failed\"}"), 1.0);
    assert!(v(r#"amtp_dns_queries_total{result="ok",type="PTR"}"#) >= 2.0);
    // Every connection went through a worker; the pools report their members.
    assert_eq!(
        sum(
            &scrape,
            "amtp_pool_messages_handled_total",
            &[r#"pool="worker""#]
        ),
        3.0
    );
    assert!(v(r#"amtp_pool_members{pool="worker"}"#) >= 1.0);
    assert!(
        sum(
            &scrape,
            "amtp_pool_busy_seconds_total",
            &[r#"pool="worker""#]
        ) > 0.0
    );
    assert!(v(r#"amtp_pool_messages_handled_total{member="0",pool="committer"}"#) >= 3.0);
    assert!(v("process_resident_memory_bytes") > 0.0);
    assert!(v("process_cpu_seconds_total") > 0.0);
    // Bounded labels: no client address or queue id in any series.
    assert!(!scrape.contains("127.0.0.5"), "client address in a label");
    assert!(!scrape.contains(&queue_id), "queue id in a label");
    promtool_check(&scrape);

    // The per-message trail: received and delivered, keyed by the queue id.
    let logs = relay.logs.lock().unwrap().clone();
    let trail: Vec<serde_json::Value> = logs
        .iter()
        .map(|l| json(l))
        .filter(|v| v["queue_id"] == queue_id.as_str())
        .collect();
    let received = trail
        .iter()
        .find(|v| v["message"] == "received")
        .expect("received event");
    assert_eq!(received["listener"], "mx");
    assert_eq!(received["sender"], "alice@sender.test");
    assert_eq!(received["recipients"], 1);
    assert_eq!(received["message_id"], "<trail@sender.test>");
    let delivered = trail
        .iter()
        .find(|v| v["message"] == "delivered")
        .expect("delivered event");
    assert_eq!(delivered["rcpt"], "bob@example.test");
    assert_eq!(delivered["next_hop"], "127.0.0.1");
    assert_eq!(
        delivered["address"],
        format!("127.0.0.1:{}", sink.addr.port()).as_str()
    );
    assert_eq!(delivered["attempt"], 1);
    assert!(
        logs.iter()
            .map(|l| json(l))
            .any(|v| v["message"] == "deferred" && v["rcpt"] == "carol@dead.test"),
        "deferred event"
    );
    let refused = logs
        .iter()
        .map(|l| json(l))
        .find(|v| v["message"] == "refused" && v["verb"] == "RCPT")
        .expect("refused RCPT logged");
    assert_eq!(refused["code"], 550);
    assert_eq!(refused["client"], "127.0.0.1");
    // JSON logs never repeat a key (a repeated `target` used to hide the next hop).
    let hop_failed = logs
        .iter()
        .find(|l| json(l)["message"] == "next hop failed")
        .expect("next hop failed logged");
    assert_eq!(json(hop_failed)["next_hop"], "127.0.0.1");
    for line in &logs {
        let keys = json_keys(line);
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), keys.len(), "repeated key in {line}");
    }

    // Readiness follows storage: break the spool, a commit fails (451), ready turns 503 with
    // the reason; repair it, the next commit succeeds, ready is 200 again.
    let spool = relay.data_dir().join("queue/spool");
    let moved = relay.data_dir().join("queue/spool-moved");
    std::fs::rename(&spool, &moved).unwrap();
    let mut c = Client::connect(relay.addr("mx"));
    c.expect("EHLO client.test", 250);
    let r = c.send_mail(
        "alice@sender.test",
        &["bob@example.test"],
        "Subject: x\r\n\r\nx",
    );
    assert_eq!(r.code, 451, "{r}");
    let (status, body) = http_get(endpoint, "/healthz/ready");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("storage unhealthy: ") && body.contains("No such file or directory"),
        "{body}"
    );
    assert_eq!(http_get(endpoint, "/healthz/live").0, 200);
    let scrape = http_get(endpoint, "/metrics").1;
    assert_eq!(value(&scrape, "amtp_queue_storage_healthy"), 0.0);
    assert_eq!(value(&scrape, "amtp_queue_commit_failures_total"), 1.0);
    std::fs::rename(&moved, &spool).unwrap();
    assert!(
        wait_until(10, || {
            let r = c.send_mail(
                "alice@sender.test",
                &["bob@example.test"],
                "Subject: y\r\n\r\ny",
            );
            r.code == 250
        }),
        "accepting again after the repair"
    );
    assert_eq!(
        http_get(endpoint, "/healthz/ready"),
        (200, "ready\n".into())
    );
    drop(dns);
}

#[test]
fn a_closed_stderr_never_stops_the_relay() {
    // `amtp-relay serve 2>&1 | head -2`: the log reader goes away; the relay must keep serving.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[delivery]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            crate::harness::SERVER
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(crate::harness::BIN)
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut addrs = std::collections::HashMap::new();
    {
        use std::io::BufRead;
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        for line in stderr.lines().map_while(Result::ok) {
            let v = json(&line);
            if v["message"] == "listening" {
                addrs.insert(
                    v["listener"].as_str().unwrap().to_string(),
                    v["address"]
                        .as_str()
                        .unwrap()
                        .parse::<SocketAddr>()
                        .unwrap(),
                );
            }
            if v["message"] == "relay started" {
                break;
            }
        }
        // The reader is dropped here: the relay's stderr is now a broken pipe.
    }
    for _ in 0..20 {
        let mut c = Client::connect(addrs["mx"]);
        c.expect("EHLO client.test", 250);
        c.expect("MAIL FROM:<a@b.test>", 250);
        c.expect("RCPT TO:<x@remote.test>", 550); // logged as refused
        c.expect("QUIT", 221);
    }
    assert!(child.try_wait().unwrap().is_none(), "the relay exited");
    let scrape = http_get(addrs["metrics"], "/metrics").1;
    assert!(
        value(&scrape, "amtp_log_lines_dropped_total") > 0.0,
        "{scrape}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
