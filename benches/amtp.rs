//! AMTP hot-path benches.
//!
//! - `amtp_hot_path/identity_warm`: what a reconnecting, already-verified sender costs the
//!   identity check: parse the leaf certificate (names + SHA-256 fingerprint), one identity
//!   cache read, the EHLO comparison. No DNS.
//! - `amtp_hot_path/resolver_cache_hit`: one PTR answer read from a cache holding 100,000.
//! - `amtp_hot_path/mpc_evaluate` and `check_mail`: a six-declaration published policy, and the
//!   full MAIL check (MPC parse, published + unadvertised rules, no rate limit).
//! - `tls_server_side/*`: a TLS 1.3 handshake in memory, counting only the time spent in the
//!   server's `ServerConnection` — bare rustls (no client certificate, the physical limit) with
//!   the relay's cipher preference (AES-128-GCM/SHA-256), with the client's order instead
//!   (`bare_rustls_client_order`: AES-256-GCM/SHA-384, what rustls clients ask for), and with
//!   X25519 alone instead of the X25519MLKEM768 hybrid (`bare_rustls_x25519`); AMTP mutual TLS
//!   from a returning peer (`amtp_mutual_tls`: its chain is in the verified-chain cache), from a
//!   new peer (`amtp_mutual_tls_cold`: empty cache, the chain verified in full), mutual TLS plus
//!   the post-handshake work (leaf parse, trust classification, warm identity cache), and a
//!   returning peer resuming with a session ticket (`amtp_resumed`, the stored chain re-checked),
//!   the same over the classical-groups configuration such a peer gets by default
//!   (`amtp_resumed_classical`), and what choosing that configuration costs per connection
//!   (`resumption_choice`: read the ClientHello, decrypt and re-check the ticket).
//! - `tls_parallel/threads_{1,2}`: 64 full mutual-TLS handshakes (client and server sides) spread
//!   over 1 or 2 threads — models 1 vs 2 connection-worker arbiters; the ratio shows scaling.

use amtp_actors::amtp_policy::{AmtpPolicy, MpcRule};
use amtp_actors::amtp_tls::{AmtpTrust, TrustFiles};
use amtp_actors::client_hello;
use amtp_actors::identity::{IdentityCache, PeerCertificate, check_ehlo};
use amtp_actors::resolver::{Answer, DnsCache, DnsQuery, Records};
use amtp_actors::tickets::TicketKeys;
use amtp_actors::tls::{self, KxGroup, TlsOptions};
use amtp_actors::tls_accept::{Acceptors, Chosen};
use amtp_proto::mpc::{Mpc, MpcPolicy};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Pki {
    _dir: tempfile::TempDir,
    trust: AmtpTrust,
    /// Loads the trust sets again: a new generation, an empty chain cache.
    reload: Box<dyn Fn() -> AmtpTrust>,
    bare: Arc<ServerConfig>,
    bare_client_order: Arc<ServerConfig>,
    bare_x25519: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    resuming_client: Arc<ClientConfig>,
    client_leaf: Vec<u8>,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert, key)
    };
    let (server_cert, server_key) = leaf("relay.test");
    let (client_cert, client_key) = leaf("host1.amtp.test");
    let w = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let files = TrustFiles {
        public_ca: Some(w("ca.pem", ca.pem())),
        private_ca: vec![],
        crl: vec![],
        max_intermediates: 3,
    };
    let options = TlsOptions {
        tickets: Some(TicketKeys::new(Duration::from_secs(3600)).unwrap()),
        ..TlsOptions::default()
    };
    let (server_pem, server_key_pem) = (
        w("server.pem", server_cert.pem()),
        w("server-key.pem", server_key.serialize_pem()),
    );
    let reload =
        Box::new(move || AmtpTrust::load(&files, &server_pem, &server_key_pem, &options).unwrap());
    let trust = reload();
    let bare_with = |kx: &[KxGroup], server_order: bool| {
        let mut config = ServerConfig::builder_with_provider(Arc::new(tls::provider(kx)))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        if server_order {
            tls::prefer_server_order(&mut config);
        }
        Arc::new(config)
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![client_cert.der().clone()],
            PrivateKeyDer::from_pem_slice(client_key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    let resuming_client = Arc::new(client.clone());
    // Every handshake full: resumption is measured on its own row.
    client.resumption = Resumption::disabled();
    Pki {
        _dir: dir,
        trust,
        reload,
        bare: bare_with(&KxGroup::DEFAULT, true),
        bare_client_order: bare_with(&KxGroup::DEFAULT, false),
        bare_x25519: bare_with(&[KxGroup::X25519], true),
        client: Arc::new(client),
        resuming_client,
        client_leaf: client_cert.der().to_vec(),
    }
}

/// One full handshake in memory; returns the time spent in the server and the server side.
fn handshake(
    server_cfg: &Arc<ServerConfig>,
    client_cfg: &Arc<ClientConfig>,
) -> (Duration, ServerConnection) {
    let mut client = ClientConnection::new(
        client_cfg.clone(),
        ServerName::try_from("relay.test").unwrap(),
    )
    .unwrap();
    let mut server = ServerConnection::new(server_cfg.clone()).unwrap();
    let mut server_time = Duration::ZERO;
    let mut buf = Vec::with_capacity(8192);
    for _ in 0..10 {
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let t = Instant::now();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
        }
        server.process_new_packets().unwrap();
        buf.clear();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        server_time += t.elapsed();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        client.process_new_packets().unwrap();
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            break;
        }
    }
    assert!(!server.is_handshaking(), "handshake did not complete");
    (server_time, server)
}

fn hot_path(c: &mut Criterion) {
    let p = pki();
    let ip: IpAddr = "127.0.0.11".parse().unwrap();
    let mut g = c.benchmark_group("amtp_hot_path");
    let identities = IdentityCache::new(100_000, 64);
    let warm = PeerCertificate::from_der(&p.client_leaf).unwrap();
    identities.insert(
        (ip, warm.fingerprint),
        "host1.amtp.test".to_string(),
        Duration::from_secs(3600),
        Instant::now(),
    );
    g.bench_function("identity_warm", |b| {
        b.iter(|| {
            let cert = PeerCertificate::from_der(black_box(&p.client_leaf)).unwrap();
            let name = identities
                .get(&(ip, cert.fingerprint), Instant::now())
                .unwrap();
            check_ehlo(&name, black_box("HOST1.amtp.test")).unwrap();
        })
    });
    // 100,000 answers in a cache sized for 200,000 (shards fill unevenly; none may evict here).
    let dns = DnsCache::new(200_000, 64);
    let now = Instant::now();
    for i in 0..100_000u32 {
        let a: Answer = Ok(Records::Names(vec![format!("host{i}.amtp.test")]));
        dns.insert(
            DnsQuery::Ptr(IpAddr::from(i.to_be_bytes())),
            a,
            Duration::from_secs(3600),
            now,
        );
    }
    let q = DnsQuery::Ptr(IpAddr::from(777u32.to_be_bytes()));
    g.bench_function("resolver_cache_hit", |b| {
        b.iter(|| dns.get(black_box(&q), Instant::now()).unwrap())
    });
    let published = MpcPolicy::parse_declarations(
        "ALLOW=per/* ALLOW=com/confirmed ALLOW=com/optin DENY=com/optout ALLOW=gov/* DENY=pol/*",
    )
    .unwrap();
    let mpc: Mpc = "com/optin".parse().unwrap();
    g.bench_function("mpc_evaluate", |b| {
        b.iter(|| published.evaluate(black_box(&mpc)))
    });
    let policy = AmtpPolicy {
        published: published.clone(),
        rules: vec![MpcRule {
            sender_domain: Some("spam.test".into()),
            deny: MpcPolicy::parse_declarations("DENY=*/*").unwrap(),
            ..MpcRule::default()
        }],
        ..AmtpPolicy::default()
    };
    g.bench_function("check_mail", |b| {
        b.iter(|| {
            policy
                .check_mail(
                    black_box(Some("com/optin")),
                    Some("sender.test"),
                    "host1.amtp.test",
                    Instant::now(),
                )
                .unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("tls_server_side");
    g.throughput(Throughput::Elements(1));
    g.bench_function("bare_rustls", |b| {
        b.iter_custom(|n| (0..n).map(|_| handshake(&p.bare, &p.client).0).sum())
    });
    g.bench_function("bare_rustls_client_order", |b| {
        b.iter_custom(|n| {
            (0..n)
                .map(|_| handshake(&p.bare_client_order, &p.client).0)
                .sum()
        })
    });
    g.bench_function("bare_rustls_x25519", |b| {
        b.iter_custom(|n| (0..n).map(|_| handshake(&p.bare_x25519, &p.client).0).sum())
    });
    g.bench_function("amtp_mutual_tls", |b| {
        b.iter_custom(|n| {
            (0..n)
                .map(|_| handshake(&p.trust.server_config, &p.client).0)
                .sum()
        })
    });
    g.bench_function("amtp_mutual_tls_cold", |b| {
        b.iter_custom(|n| {
            (0..n)
                .map(|_| handshake(&(p.reload)().server_config, &p.client).0)
                .sum()
        })
    });
    // The first handshake stores the tickets; every later one resumes (and gets new ones).
    let (_, first) = handshake(&p.trust.server_config, &p.resuming_client);
    assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
    g.bench_function("amtp_resumed", |b| {
        b.iter_custom(|n| {
            (0..n)
                .map(|_| {
                    let (t, server) = handshake(&p.trust.server_config, &p.resuming_client);
                    assert_eq!(
                        server.handshake_kind(),
                        Some(rustls::HandshakeKind::Resumed)
                    );
                    t
                })
                .sum()
        })
    });
    // The same over the classical-groups configuration a returning peer gets
    // (`[amtp] resumption_kx = "classical"`): x25519 instead of the hybrid.
    let (resuming_config, _) = p.trust.resumption.clone().expect("tickets on");
    g.bench_function("amtp_resumed_classical", |b| {
        b.iter_custom(|n| {
            (0..n)
                .map(|_| {
                    let (t, server) = handshake(&resuming_config, &p.resuming_client);
                    assert_eq!(
                        server.handshake_kind(),
                        Some(rustls::HandshakeKind::Resumed)
                    );
                    assert_eq!(
                        server.negotiated_key_exchange_group().map(|g| g.name()),
                        Some(rustls::NamedGroup::X25519)
                    );
                    t
                })
                .sum()
        })
    });
    // What choosing it costs: read the ClientHello, decrypt and re-check the ticket.
    let acceptors = Acceptors::new(p.trust.server_config.clone(), p.trust.resumption.clone());
    let hello = {
        let mut c = ClientConnection::new(
            p.resuming_client.clone(),
            ServerName::try_from("relay.test").unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).unwrap();
        }
        out
    };
    g.bench_function("resumption_choice", |b| {
        b.iter(|| {
            let client_hello::Progress::Complete(facts) = client_hello::read(black_box(&hello))
            else {
                panic!("unreadable ClientHello");
            };
            assert_eq!(acceptors.choose(&facts), Chosen::Resuming);
        })
    });
    g.bench_function("amtp_mutual_tls_identity", |b| {
        b.iter_custom(|n| {
            (0..n)
                .map(|_| {
                    let (mut t, server) = handshake(&p.trust.server_config, &p.client);
                    let start = Instant::now();
                    let chain = server.peer_certificates().unwrap();
                    let cert = PeerCertificate::from_der(&chain[0]).unwrap();
                    black_box(p.trust.classify(&cert, chain));
                    let name = identities
                        .get(&(ip, cert.fingerprint), Instant::now())
                        .unwrap();
                    check_ehlo(&name, "host1.amtp.test").unwrap();
                    t += start.elapsed();
                    t
                })
                .sum()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("tls_parallel");
    const N: u64 = 64;
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    for threads in [1u64, 2] {
        g.bench_function(format!("threads_{threads}"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    std::thread::scope(|s| {
                        for _ in 0..threads {
                            s.spawn(|| {
                                for _ in 0..N / threads {
                                    black_box(handshake(&p.trust.server_config, &p.client));
                                }
                            });
                        }
                    });
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
