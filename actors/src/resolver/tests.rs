//! The resolver against a real DNS server: hickory-server started in the test on 127.0.0.1,
//! serving forward and reverse zones; every lookup here is a real query on the wire.

use super::actor::ResolverActor;
use super::transport::HickoryTransport;
use super::*;
use actix::Actor;
use hickory_resolver::proto::rr::{LowerName, Name};
use hickory_server::Server;
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::Ordering;

const HOSTS: u8 = 50;

fn forward_zone() -> String {
    let mut z = String::from(
        "$ORIGIN amtp.test.\n$TTL 300\n@ IN SOA ns.amtp.test. admin.amtp.test. 1 3600 600 86400 30\n@ IN NS ns\nns IN A 127.0.0.1\n",
    );
    for i in 0..HOSTS {
        z.push_str(&format!("host{i} IN A 127.0.0.{}\n", 10 + i));
    }
    z.push_str("_amtp._tcp IN SRV 10 60 3025 host0.amtp.test.\n_amtp._tcp IN SRV 20 40 3025 host1.amtp.test.\n@ IN MX 10 host2.amtp.test.\n");
    z.push_str("_amtp._tcp.none IN SRV 0 0 0 .\n");
    z
}

fn reverse_zone() -> String {
    let mut z = String::from(
        "$ORIGIN 0.0.127.in-addr.arpa.\n$TTL 300\n@ IN SOA ns.amtp.test. admin.amtp.test. 1 3600 600 86400 30\n@ IN NS ns.amtp.test.\n",
    );
    for i in 0..HOSTS {
        z.push_str(&format!("{} IN PTR host{i}.amtp.test.\n", 10 + i));
    }
    // 127.0.0.99 claims host0's name, whose A record is 127.0.0.10: fails forward confirmation.
    z.push_str("99 IN PTR host0.amtp.test.\n");
    z
}

/// Start an authoritative server on 127.0.0.1 (UDP and TCP on one port).
async fn dns_server() -> (Server<Catalog>, SocketAddr) {
    let mut catalog = Catalog::new();
    for (origin, text) in [
        ("amtp.test.", forward_zone()),
        ("0.0.127.in-addr.arpa.", reverse_zone()),
    ] {
        let (name, records) = Parser::new(text, None, Some(Name::from_str(origin).unwrap()))
            .parse()
            .unwrap();
        let zone =
            InMemoryZoneHandler::<hickory_resolver::net::runtime::TokioRuntimeProvider>::new(
                name,
                records,
                ZoneType::Primary,
                AxfrPolicy::Deny,
            )
            .unwrap();
        catalog.upsert(
            LowerName::from_str(origin).unwrap(),
            vec![std::sync::Arc::new(zone)],
        );
    }
    let mut server = Server::new(catalog);
    // A free UDP port's TCP twin may be taken by another process: try another pair then.
    for _ in 0..20 {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(5), 4096);
            return (server, addr);
        }
    }
    panic!("no free UDP+TCP port pair on 127.0.0.1")
}

fn handle_for(servers: &[SocketAddr]) -> ResolverHandle {
    let cache = Arc::new(DnsCache::new(10_000, 16));
    let transport =
        Arc::new(HickoryTransport::new(servers, Duration::from_millis(500), 1).unwrap());
    let actor = ResolverActor::new(
        transport,
        cache.clone(),
        TtlPolicy::default(),
        crate::metrics::pool::Meter::default(),
    )
    .start();
    ResolverHandle::new(
        cache,
        actor.recipient(),
        Duration::from_secs(5),
        crate::metrics::pool::Meter::default(),
    )
}

#[actix_rt::test]
async fn real_queries_for_many_loopback_hosts() {
    let (_server, addr) = dns_server().await;
    let r = handle_for(&[addr]);
    // Every loopback host has its own PTR, served by our server (not hickory's "localhost.").
    for i in 0..HOSTS {
        let ip = IpAddr::from([127, 0, 0, 10 + i]);
        assert_eq!(
            r.resolve(DnsQuery::Ptr(ip)).await,
            Ok(Records::Names(vec![format!("host{i}.amtp.test")])),
            "{ip}"
        );
        assert_eq!(
            r.resolve(DnsQuery::A(format!("HOST{i}.amtp.test."))).await,
            Ok(Records::Addrs(vec![ip]))
        );
    }
    let srv = r
        .resolve(DnsQuery::Srv("_amtp._tcp.amtp.test".into()))
        .await
        .unwrap();
    let Records::Srv(mut targets) = srv else {
        panic!("{srv:?}")
    };
    targets.sort_by_key(|t| t.priority);
    assert_eq!(
        targets[0],
        SrvTarget {
            priority: 10,
            weight: 60,
            port: 3025,
            target: "host0.amtp.test".into()
        }
    );
    assert_eq!(targets[1].target, "host1.amtp.test");
    assert_eq!(
        r.resolve(DnsQuery::Srv("_amtp._tcp.none.amtp.test".into()))
            .await,
        Ok(Records::Srv(vec![SrvTarget {
            priority: 0,
            weight: 0,
            port: 0,
            target: String::new()
        }])),
        "target '.' = no service"
    );
    assert_eq!(
        r.resolve(DnsQuery::Mx("amtp.test".into())).await,
        Ok(Records::Mx(vec![MxHost {
            preference: 10,
            exchange: "host2.amtp.test".into()
        }]))
    );
    // Negative answers.
    assert_eq!(
        r.resolve(DnsQuery::Ptr(IpAddr::from([127, 0, 0, 200])))
            .await,
        Err(LookupError::NxDomain)
    );
    assert_eq!(
        r.resolve(DnsQuery::Aaaa("host1.amtp.test".into())).await,
        Err(LookupError::NoData)
    );
    assert_eq!(
        r.resolve(DnsQuery::A("nope.amtp.test".into())).await,
        Err(LookupError::NxDomain)
    );
}

#[actix_rt::test]
async fn answers_are_cached_and_served_after_the_server_is_gone() {
    let (mut server, addr) = dns_server().await;
    let r = handle_for(&[addr]);
    let ip = IpAddr::from([127, 0, 0, 11]);
    let first = r.resolve(DnsQuery::Ptr(ip)).await;
    assert_eq!(
        r.resolve(DnsQuery::Ptr(IpAddr::from([127, 0, 0, 201])))
            .await,
        Err(LookupError::NxDomain)
    );
    let hits = r.cache().stats().hits.load(Ordering::Relaxed);
    server.shutdown_gracefully().await.unwrap();
    assert_eq!(
        r.resolve(DnsQuery::Ptr(ip)).await,
        first,
        "positive answer from the cache"
    );
    assert_eq!(
        r.resolve(DnsQuery::Ptr(IpAddr::from([127, 0, 0, 201])))
            .await,
        Err(LookupError::NxDomain),
        "negative answer from the cache"
    );
    assert_eq!(r.cache().stats().hits.load(Ordering::Relaxed), hits + 2);
    // Not cached: now a temporary failure, never a 5xx-worthy answer.
    let e = r
        .resolve(DnsQuery::Ptr(IpAddr::from([127, 0, 0, 12])))
        .await
        .unwrap_err();
    assert!(e.is_temporary(), "{e:?}");
}

#[actix_rt::test]
async fn unreachable_server_is_a_temporary_failure_and_not_cached() {
    // A UDP socket that never answers: queries time out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let r = handle_for(&[silent.local_addr().unwrap()]);
    let q = DnsQuery::Ptr(IpAddr::from([127, 0, 0, 10]));
    let e = r.resolve(q.clone()).await.unwrap_err();
    assert!(e.is_temporary(), "{e:?}");
    assert!(r.cache().is_empty(), "temporary failures are not cached");
}

#[test]
fn ttl_policy_table() {
    let p = TtlPolicy::default();
    let ok: Answer = Ok(Records::Addrs(vec![]));
    let s = Duration::from_secs;
    let cases: [(Answer, Option<u32>, Option<Duration>); 7] = [
        (ok.clone(), Some(3600), Some(s(3600))),
        (ok.clone(), Some(0), Some(s(5))),
        (ok.clone(), Some(10_000_000), Some(s(86_400))),
        (Err(LookupError::NxDomain), Some(3600), Some(s(300))),
        (Err(LookupError::NoData), Some(30), Some(s(30))),
        (Err(LookupError::NxDomain), None, Some(s(60))),
        (Err(LookupError::Temporary("x".into())), Some(3600), None),
    ];
    for (answer, ttl, expected) in cases {
        assert_eq!(p.ttl_for(&answer, ttl), expected, "{answer:?} {ttl:?}");
    }
}

#[actix_rt::test]
async fn identity_checks_against_real_dns() {
    use crate::identity::{IdentityCache, IdentityChecker, IdentityError, PeerCertificate};
    let (_server, addr) = dns_server().await;
    // A stand-in certificate: the fingerprint must differ per certificate, as SHA-256 does.
    let cert = |name: &str| {
        let mut fingerprint = [0u8; 32];
        fingerprint[..name.len().min(32)].copy_from_slice(&name.as_bytes()[..name.len().min(32)]);
        PeerCertificate {
            names: vec![name.to_string()],
            fingerprint,
        }
    };
    let checker = IdentityChecker::new(
        handle_for(&[addr]),
        Arc::new(IdentityCache::new(1000, 4)),
        false,
    );
    let ip = IpAddr::from([127, 0, 0, 15]);
    assert_eq!(
        checker.verify(ip, &cert("host5.amtp.test")).await,
        Ok("host5.amtp.test".to_string())
    );
    let hits = checker.cache().stats().hits.load(Ordering::Relaxed);
    assert_eq!(
        checker.verify(ip, &cert("host5.amtp.test")).await,
        Ok("host5.amtp.test".to_string())
    );
    assert_eq!(
        checker.cache().stats().hits.load(Ordering::Relaxed),
        hits + 1,
        "second check is an identity-cache hit"
    );
    assert!(matches!(
        checker.verify(ip, &cert("host6.amtp.test")).await,
        Err(IdentityError::PtrMismatch { .. })
    ));
    assert_eq!(
        checker
            .verify(IpAddr::from([127, 0, 0, 222]), &cert("host5.amtp.test"))
            .await,
        Err(IdentityError::NoPtr)
    );
    // Forward confirmation: 127.0.0.99's PTR names host0, which resolves to 127.0.0.10.
    let spoof = IpAddr::from([127, 0, 0, 99]);
    assert_eq!(
        checker.verify(spoof, &cert("host0.amtp.test")).await,
        Ok("host0.amtp.test".to_string()),
        "off by default"
    );
    let strict = IdentityChecker::new(
        handle_for(&[addr]),
        Arc::new(IdentityCache::new(1000, 4)),
        true,
    );
    assert_eq!(
        strict.verify(spoof, &cert("host0.amtp.test")).await,
        Err(IdentityError::NotForwardConfirmed {
            name: "host0.amtp.test".into()
        })
    );
    assert_eq!(
        strict
            .verify(IpAddr::from([127, 0, 0, 10]), &cert("host0.amtp.test"))
            .await,
        Ok("host0.amtp.test".to_string())
    );
}
