//! The PROXY protocol (v1 text and v2 binary) in front of a listener: who may send it, and
//! reading it off the socket.
//!
//! Why: behind a load balancer every connection comes from the balancer, so the AMTP PTR
//! identity check, the per-IP limits and the AUTH lockouts would all see the balancer's
//! address. A listener with `proxy_protocol = true` accepts connections only from
//! `proxy_trusted` networks and reads the header the balancer sends first; the header's source
//! address becomes the connection's client address for everything after (the listener puts it
//! in [`crate::messages::Connection::peer`]).
//!
//! The header is read exactly — never a byte past its end — because on implicit-TLS and AMTP
//! listeners the client's ClientHello follows it in the same segment, and the socket is then
//! handed to a worker that starts TLS on it. Parsing is the `ppp` crate's.

use serde::{Deserialize, Deserializer, de};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The 12-byte signature that starts a v2 header.
const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// A v1 header is at most 107 bytes including its CRLF.
const V1_MAX: usize = 107;
/// Largest v2 address block + TLVs we accept (HAProxy's own limit is far below).
const V2_MAX_BODY: usize = 1024;

/// A network in CIDR notation (`"10.0.0.0/8"`, `"2001:db8::/32"`), or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip), ip) {
            (IpAddr::V4(net), IpAddr::V4(ip), _) => {
                u32::from(net) & self.mask_v4() == u32::from(ip) & self.mask_v4()
            }
            (IpAddr::V6(net), _, IpAddr::V6(ip)) => {
                u128::from(net) & self.mask_v6() == u128::from(ip) & self.mask_v6()
            }
            _ => false,
        }
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d` (dual-stack sockets report IPv4 clients that way).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        let net = Self { network, prefix };
        if net.masked() != network {
            return Err(format!(
                "{s:?} has host bits set; write the network address ({}/{prefix})",
                net.masked()
            ));
        }
        Ok(net)
    }
}

impl Cidr {
    fn masked(&self) -> IpAddr {
        match self.network {
            IpAddr::V4(n) => IpAddr::V4((u32::from(n) & self.mask_v4()).into()),
            IpAddr::V6(n) => IpAddr::V6((u128::from(n) & self.mask_v6()).into()),
        }
    }

    fn mask_v4(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    fn mask_v6(&self) -> u128 {
        u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// Whether `ip` is in any of `trusted`.
pub fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// Why a connection on a PROXY listener was closed before its session; the `reason` label of
/// `amtp_proxy_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyRefusal {
    /// The connection did not come from `proxy_trusted`.
    Untrusted,
    /// No complete header within `proxy_header_timeout`.
    Timeout,
    /// The first bytes were not a valid PROXY header (or the connection closed first).
    BadHeader,
}

impl ProxyRefusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Untrusted => "untrusted",
            Self::Timeout => "timeout",
            Self::BadHeader => "bad_header",
        }
    }
}

/// Read the PROXY header at the start of `stream`, within `timeout`, consuming exactly its
/// bytes. `Ok(Some(addr))`: the client's address. `Ok(None)`: a valid header without one (v2
/// `LOCAL`, e.g. the balancer's health check, or v1 `UNKNOWN`): use the socket's peer.
pub async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyRefusal> {
    match tokio::time::timeout(timeout, read_exact_header(stream)).await {
        Err(_) => Err(ProxyRefusal::Timeout),
        Ok(Err(())) => Err(ProxyRefusal::BadHeader),
        Ok(Ok(bytes)) => parse(&bytes).ok_or(ProxyRefusal::BadHeader),
    }
}

/// The header's bytes, read without over-reading.
async fn read_exact_header(stream: &mut TcpStream) -> Result<Vec<u8>, ()> {
    let mut buf = vec![0u8; 12];
    stream.read_exact(&mut buf).await.map_err(|_| ())?;
    if buf == V2_SIGNATURE {
        let mut rest = [0u8; 4];
        stream.read_exact(&mut rest).await.map_err(|_| ())?;
        buf.extend_from_slice(&rest);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if len > V2_MAX_BODY {
            return Err(());
        }
        let start = buf.len();
        buf.resize(start + len, 0);
        stream.read_exact(&mut buf[start..]).await.map_err(|_| ())?;
        return Ok(buf);
    }
    if !buf.starts_with(b"PROXY ") {
        return Err(());
    }
    // v1: peek at what has arrived, take up to the CRLF (or all of it: every byte before the
    // CRLF belongs to the header), until the CRLF or the 107-byte limit.
    let mut peek = [0u8; V1_MAX];
    while !buf.ends_with(b"\r\n") {
        let room = V1_MAX - buf.len();
        if room == 0 {
            return Err(());
        }
        let n = stream.peek(&mut peek[..room]).await.map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        let take = match peek[..n].iter().position(|b| *b == b'\n') {
            Some(i) => i + 1,
            None => n,
        };
        let start = buf.len();
        buf.resize(start + take, 0);
        stream.read_exact(&mut buf[start..]).await.map_err(|_| ())?;
        if buf[start..].contains(&b'\n') && !buf.ends_with(b"\r\n") {
            return Err(());
        }
    }
    Ok(buf)
}

/// Parse a complete v1 or v2 header.
fn parse(bytes: &[u8]) -> Option<Option<SocketAddr>> {
    if bytes.starts_with(&V2_SIGNATURE) {
        let h = ppp::v2::Header::try_from(bytes).ok()?;
        if h.command == ppp::v2::Command::Local {
            return Some(None);
        }
        return match h.addresses {
            ppp::v2::Addresses::IPv4(a) => Some(Some(SocketAddr::new(
                IpAddr::V4(a.source_address),
                a.source_port,
            ))),
            ppp::v2::Addresses::IPv6(a) => Some(Some(SocketAddr::new(
                canonical(IpAddr::V6(a.source_address)),
                a.source_port,
            ))),
            ppp::v2::Addresses::Unspecified => Some(None),
            ppp::v2::Addresses::Unix(_) => None,
        };
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let h = ppp::v1::Header::try_from(text).ok()?;
    match h.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(Some(SocketAddr::new(
            IpAddr::V4(a.source_address),
            a.source_port,
        ))),
        ppp::v1::Addresses::Tcp6(a) => Some(Some(SocketAddr::new(
            canonical(IpAddr::V6(a.source_address)),
            a.source_port,
        ))),
        ppp::v1::Addresses::Unknown => Some(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[test]
    fn cidrs_parse_match_and_refuse_nonsense() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "10.0.0.1/8", "ten/8", "", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} accepted");
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn v1_and_v2_headers_give_the_client_and_leave_what_follows() {
        let (mut c, mut s) = pair().await;
        c.write_all(b"PROXY TCP4 192.0.2.9 198.51.100.1 40000 25\r\n\x16\x03\x01rest")
            .await
            .unwrap();
        let got = read_header(&mut s, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got, Some("192.0.2.9:40000".parse().unwrap()));
        let mut rest = [0u8; 7];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"\x16\x03\x01rest");

        let (mut c, mut s) = pair().await;
        let mut v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::5]:4000".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:465".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        v2.extend_from_slice(b"EHLO");
        c.write_all(&v2).await.unwrap();
        let got = read_header(&mut s, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got, Some("[2001:db8::5]:4000".parse().unwrap()));
        let mut rest = [0u8; 4];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"EHLO");
    }

    #[tokio::test]
    async fn local_command_and_unknown_mean_the_socket_peer() {
        let (mut c, mut s) = pair().await;
        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        c.write_all(&v2).await.unwrap();
        assert_eq!(read_header(&mut s, Duration::from_secs(5)).await, Ok(None));
        let (mut c, mut s) = pair().await;
        c.write_all(b"PROXY UNKNOWN\r\n").await.unwrap();
        assert_eq!(read_header(&mut s, Duration::from_secs(5)).await, Ok(None));
    }

    #[tokio::test]
    async fn garbage_silence_and_overlong_lines_are_refused() {
        let (mut c, mut s) = pair().await;
        c.write_all(b"EHLO client.example\r\n").await.unwrap();
        assert_eq!(
            read_header(&mut s, Duration::from_secs(5)).await,
            Err(ProxyRefusal::BadHeader)
        );
        let (_c, mut s) = pair().await;
        assert_eq!(
            read_header(&mut s, Duration::from_millis(50)).await,
            Err(ProxyRefusal::Timeout)
        );
        let (mut c, mut s) = pair().await;
        c.write_all(format!("PROXY TCP4 {}\r\n", "1".repeat(200)).as_bytes())
            .await
            .unwrap();
        assert_eq!(
            read_header(&mut s, Duration::from_secs(5)).await,
            Err(ProxyRefusal::BadHeader)
        );
        let (mut c, mut s) = pair().await;
        c.write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n")
            .await
            .unwrap();
        assert_eq!(
            read_header(&mut s, Duration::from_secs(5)).await,
            Err(ProxyRefusal::BadHeader)
        );
    }
}
