//! Reads the relay's own figures while a run goes on: a plain HTTP GET of its `/metrics`
//! endpoint (Prometheus text format) every interval, reduced to the families a capacity
//! planner needs — CPU, memory, queue depth, per-pool busy time and mailbox depth, messages
//! accepted, replies by class, TLS handshakes. The HTTP client is deliberately minimal (the
//! relay answers with `Content-Length` and closes), bounded in time and size.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The largest response read (the relay's page is a few tens of KiB).
const MAX_RESPONSE: u64 = 8 << 20;
const TIMEOUT: Duration = Duration::from_secs(2);

/// One line of the exposition: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the Prometheus text format (comments and malformed lines are skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut end = None;
        loop {
            // key
            let start = chars.peek()?.0;
            let mut key_end = start;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    key_end = i;
                    break;
                }
                if c == '}' {
                    end = Some(i);
                    break;
                }
            }
            if end.is_some() {
                break;
            }
            let key = inner[start..key_end].trim().trim_start_matches(',').trim();
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.push((key.to_string(), value));
            match chars.next()? {
                (i, '}') => {
                    end = Some(i);
                    break;
                }
                (_, ',') => {
                    if let Some(&(i, '}')) = chars.peek() {
                        end = Some(i);
                        break;
                    }
                }
                _ => return None,
            }
        }
        rest = &inner[end? + 1..];
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `http://host:port/path` → (address, host header, path). Only plain HTTP.
fn split_url(url: &str) -> anyhow::Result<(SocketAddr, String, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs are supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    Ok((addr, host.to_string(), path.to_string()))
}

/// GET `url`; the body of a 200 answer.
pub fn get(url: &str) -> anyhow::Result<String> {
    let (addr, host, path) = split_url(url)?;
    let mut tcp = TcpStream::connect_timeout(&addr, TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_read_timeout(Some(TIMEOUT))?;
    tcp.set_write_timeout(Some(TIMEOUT))?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut response = Vec::new();
    tcp.take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .with_context(|| format!("reading the answer of {url}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{url}: no HTTP header"))?;
    let status = head.lines().next().unwrap_or_default();
    anyhow::ensure!(
        status.split_whitespace().nth(1) == Some("200"),
        "{url}: {status}"
    );
    Ok(body.to_string())
}

/// What one scrape of the relay says (counters are totals since the relay started).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RelaySample {
    /// Seconds since the start of the run.
    pub t: f64,
    pub cpu_s: f64,
    pub rss_bytes: f64,
    /// `amtp_queue_messages` by state (ready, deferred, delivering).
    pub queue: BTreeMap<String, f64>,
    /// Per pool: members, busy seconds (all members) and mailbox depth (all members).
    pub pools: BTreeMap<String, PoolSample>,
    pub accepted: f64,
    pub replies_4xx: f64,
    pub replies_5xx: f64,
    pub sessions_open: f64,
    /// `amtp_tls_handshakes_total` by result.
    pub handshakes: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PoolSample {
    pub members: f64,
    pub busy_s: f64,
    pub mailbox: f64,
}

impl RelaySample {
    pub fn from_samples(t: f64, samples: &[Sample]) -> Self {
        let mut s = RelaySample {
            t,
            ..Default::default()
        };
        for m in samples {
            match m.name.as_str() {
                "process_cpu_seconds_total" => s.cpu_s = m.value,
                "process_resident_memory_bytes" => s.rss_bytes = m.value,
                "amtp_queue_messages" => {
                    *s.queue
                        .entry(m.label("state").unwrap_or("?").to_string())
                        .or_default() += m.value;
                }
                "amtp_pool_members"
                | "amtp_pool_busy_seconds_total"
                | "amtp_pool_mailbox_depth" => {
                    let pool = s
                        .pools
                        .entry(m.label("pool").unwrap_or("?").to_string())
                        .or_default();
                    match m.name.as_str() {
                        "amtp_pool_members" => pool.members += m.value,
                        "amtp_pool_busy_seconds_total" => pool.busy_s += m.value,
                        _ => pool.mailbox += m.value,
                    }
                }
                "amtp_messages_accepted_total" => s.accepted += m.value,
                "amtp_replies_total" => match m.label("code").and_then(|c| c.chars().next()) {
                    Some('4') => s.replies_4xx += m.value,
                    Some('5') => s.replies_5xx += m.value,
                    _ => {}
                },
                "amtp_sessions_open" => s.sessions_open += m.value,
                "amtp_tls_handshakes_total" => {
                    *s.handshakes
                        .entry(m.label("result").unwrap_or("?").to_string())
                        .or_default() += m.value;
                }
                _ => {}
            }
        }
        s
    }
}

/// The relay's version from `amtp_build_info{version}`.
pub fn version(samples: &[Sample]) -> Option<String> {
    samples
        .iter()
        .find(|s| s.name == "amtp_build_info")
        .and_then(|s| s.label("version"))
        .map(str::to_string)
}

/// A scraper thread: one scrape at once, then every `every` until stopped.
pub struct Scraper {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<RelaySample>>,
}

/// Everything the scraper collected.
pub struct Scraped {
    pub samples: Vec<RelaySample>,
    /// Scrapes that failed (the relay too busy to answer in time, or gone).
    pub failures: u64,
}

impl Scraper {
    /// Checks the endpoint once (so a wrong URL fails the run before it starts) and returns the
    /// first exposition together with the running scraper.
    pub fn start(
        url: &str,
        every: Duration,
        started: Instant,
    ) -> anyhow::Result<(Self, Vec<Sample>)> {
        let first = parse(&get(url).context("--metrics-url")?);
        let stop = Arc::new(AtomicBool::new(false));
        let url = url.to_string();
        let flag = stop.clone();
        let initial = RelaySample::from_samples(started.elapsed().as_secs_f64(), &first);
        let thread = std::thread::Builder::new()
            .name("scrape".into())
            .spawn(move || {
                let mut out = vec![initial];
                let mut next = Instant::now() + every;
                loop {
                    while Instant::now() < next {
                        if flag.load(Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let last = flag.load(Ordering::Relaxed);
                    next += every;
                    // A failed scrape leaves a gap; the next one fills the series again.
                    if let Ok(text) = get(&url) {
                        out.push(RelaySample::from_samples(
                            started.elapsed().as_secs_f64(),
                            &parse(&text),
                        ));
                    }
                    if last {
                        return out;
                    }
                }
            })
            .context("starting the scraper thread")?;
        Ok((Self { stop, thread }, first))
    }

    /// Takes a last scrape and returns the series.
    pub fn finish(self) -> Vec<RelaySample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP process_cpu_seconds_total CPU
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
process_resident_memory_bytes 6.2e7
amtp_build_info{version="0.1.0"} 1
amtp_queue_messages{state="ready"} 3
amtp_queue_messages{state="deferred"} 7
amtp_pool_members{pool="committer"} 1
amtp_pool_busy_seconds_total{pool="committer",member="0"} 2.5
amtp_pool_busy_seconds_total{pool="worker",member="0"} 1
amtp_pool_busy_seconds_total{pool="worker",member="1",} 2
amtp_pool_mailbox_depth{pool="worker",member="1"} 4
amtp_replies_total{listener="mx",code="451"} 2
amtp_replies_total{listener="mx",code="250"} 100
amtp_replies_total{listener="amtp",code="554"} 1
amtp_messages_accepted_total{listener="mx"} 40
amtp_messages_accepted_total{listener="amtp"} 2
amtp_tls_handshakes_total{listener="amtp",result="full"} 5
weird{text="a \"quoted\" \\ value, with } brace"} 9
broken{ 1
"#;

    #[test]
    fn the_families_a_planner_needs_are_read_from_the_text_format() {
        let samples = parse(PAGE);
        assert_eq!(version(&samples).as_deref(), Some("0.1.0"));
        let weird = samples.iter().find(|s| s.name == "weird").unwrap();
        assert_eq!(
            weird.label("text"),
            Some("a \"quoted\" \\ value, with } brace")
        );
        assert_eq!(weird.value, 9.0);
        assert!(samples.iter().all(|s| s.name != "broken"));
        let r = RelaySample::from_samples(1.0, &samples);
        assert_eq!(r.cpu_s, 12.5);
        assert_eq!(r.rss_bytes, 6.2e7);
        assert_eq!(r.queue["ready"] + r.queue["deferred"], 10.0);
        assert_eq!(r.pools["worker"].busy_s, 3.0);
        assert_eq!(r.pools["worker"].mailbox, 4.0);
        assert_eq!(r.pools["committer"].members, 1.0);
        assert_eq!((r.accepted, r.replies_4xx, r.replies_5xx), (42.0, 2.0, 1.0));
        assert_eq!(r.handshakes["full"], 5.0);
    }

    #[test]
    fn a_url_without_a_path_means_metrics_and_only_http_is_accepted() {
        let (addr, _, path) = split_url("http://127.0.0.1:9425").unwrap();
        assert_eq!((addr.port(), path.as_str()), (9425, "/metrics"));
        assert!(split_url("https://127.0.0.1:9425/metrics").is_err());
    }

    #[test]
    fn a_real_endpoint_is_scraped_over_tcp() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"GET /metrics HTTP/1.1\r\n"));
            let body = "process_cpu_seconds_total 3\n";
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        });
        let body = get(&format!("http://{addr}/metrics")).unwrap();
        server.join().unwrap();
        assert_eq!(parse(&body)[0].value, 3.0);
    }
}
