//! Real rustls handshakes in memory against [`AmtpTrust`]'s server configuration: tickets
//! resume, a resumed chain is checked against the current trust generation, tickets expire,
//! and the verified-chain cache never skips the client's CertificateVerify.

use super::*;
use crate::tickets::TicketKeys;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
    KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber, date_time_ymd,
};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConnection};

struct Pki {
    dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
    ca_pem: String,
    server_ca: rustls::RootCertStore,
    server_pem: String,
    server_key: String,
}

impl Pki {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Peers Root");
        let ca_cert = params.self_signed(&key).unwrap();
        let ca = Issuer::new(params, key);
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["relay.test".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let mut server_ca = rustls::RootCertStore::empty();
        server_ca.add(ca_cert.der().clone()).unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            ca,
            ca_pem: ca_cert.pem(),
            server_ca,
            server_pem: server.pem(),
            server_key: server_key.serialize_pem(),
        }
    }

    /// A client certificate (chain, key) for `name` with `serial`.
    fn client(&self, name: &str, serial: u64) -> (CertificateDer<'static>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.der().clone(), key)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// One trust generation: the CA as the public set, `revoked` serials on a CRL.
    fn trust(&self, revoked: &[u64], tickets: Option<Arc<TicketKeys>>) -> AmtpTrust {
        self.trust_with(revoked, tickets, crate::tls::ResumptionKx::default())
    }

    /// [`Pki::trust`] with a choice of `resumption_kx`.
    fn trust_with(
        &self,
        revoked: &[u64],
        tickets: Option<Arc<TicketKeys>>,
        resumption_kx: crate::tls::ResumptionKx,
    ) -> AmtpTrust {
        let crl = (!revoked.is_empty()).then(|| {
            let crl = CertificateRevocationListParams {
                this_update: date_time_ymd(2024, 1, 1),
                next_update: date_time_ymd(2099, 1, 1),
                crl_number: SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: revoked
                    .iter()
                    .map(|s| RevokedCertParams {
                        serial_number: SerialNumber::from(*s),
                        revocation_time: date_time_ymd(2024, 6, 1),
                        reason_code: None,
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(&self.ca)
            .unwrap();
            self.write("peers.crl.pem", &crl.pem().unwrap())
        });
        let files = TrustFiles {
            public_ca: Some(self.write("ca.pem", &self.ca_pem)),
            private_ca: vec![],
            crl: crl.into_iter().collect(),
            max_intermediates: 2,
        };
        let options = TlsOptions {
            tickets,
            resumption_kx,
            ..TlsOptions::default()
        };
        AmtpTrust::load(
            &files,
            &self.write("server.pem", &self.server_pem),
            &self.write("server-key.pem", &self.server_key),
            &options,
        )
        .unwrap()
    }

    /// A client that keeps its tickets (rustls' default in-memory store).
    fn client_config(&self, cert: &CertificateDer<'static>, key: &KeyPair) -> Arc<ClientConfig> {
        self.client_config_with(rustls::crypto::aws_lc_rs::default_provider(), cert, key)
    }

    /// [`Pki::client_config`] over `provider` (e.g. other key-exchange groups).
    fn client_config_with(
        &self,
        provider: rustls::crypto::CryptoProvider,
        cert: &CertificateDer<'static>,
        key: &KeyPair,
    ) -> Arc<ClientConfig> {
        Arc::new(
            ClientConfig::builder_with_provider(Arc::new(provider))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(self.server_ca.clone())
                .with_client_auth_cert(
                    vec![cert.clone()],
                    rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
                )
                .unwrap(),
        )
    }
}

/// How one handshake ended.
struct Outcome {
    client: ClientConnection,
    server: ServerConnection,
    server_error: Option<rustls::Error>,
    client_error: Option<rustls::Error>,
}

impl Outcome {
    fn kind(&self) -> Option<HandshakeKind> {
        if self.server_error.is_some() || self.client_error.is_some() {
            return None;
        }
        self.server.handshake_kind()
    }
}

/// Drive a handshake (and the tickets after it) to the end in memory.
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> Outcome {
    let mut c = ClientConnection::new(client.clone(), "relay.test".try_into().unwrap()).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let (mut server_error, mut client_error) = (None, None);
    for _ in 0..20 {
        let to_server = deliver(&mut c, &mut s, &mut server_error);
        let to_client = deliver(&mut s, &mut c, &mut client_error);
        if !(to_server || to_client) || server_error.is_some() || client_error.is_some() {
            break;
        }
    }
    Outcome {
        client: c,
        server: s,
        server_error,
        client_error,
    }
}

/// Move what `from` has to send into `to`; keep `to`'s first error. Whether anything moved.
fn deliver<A, B>(
    from: &mut rustls::ConnectionCommon<A>,
    to: &mut rustls::ConnectionCommon<B>,
    error: &mut Option<rustls::Error>,
) -> bool {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    if buf.is_empty() {
        return false;
    }
    let mut rd = &buf[..];
    while !rd.is_empty() && to.read_tls(&mut rd).unwrap() > 0 {}
    if let Err(e) = to.process_new_packets() {
        error.get_or_insert(e);
    }
    true
}

fn revoked_alert(o: &Outcome) -> bool {
    matches!(
        o.server_error,
        Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Revoked
        ))
    ) && matches!(
        o.client_error,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRevoked
        ))
    )
}

#[test]
fn returning_peers_resume_and_keep_their_chain() {
    let pki = Pki::new();
    let keys = TicketKeys::new(Duration::from_secs(3600)).unwrap();
    let trust = pki.trust(&[], Some(keys));
    let (cert, key) = pki.client("host1.amtp.test", 10);
    let client = pki.client_config(&cert, &key);
    let first = handshake(&trust.server_config, &client);
    assert_eq!(first.kind(), Some(HandshakeKind::Full));
    let again = handshake(&trust.server_config, &client);
    assert_eq!(again.kind(), Some(HandshakeKind::Resumed));
    assert_eq!(again.client.handshake_kind(), Some(HandshakeKind::Resumed));
    // The identity check and the classification read the chain of the resumed session.
    assert_eq!(again.server.peer_certificates().unwrap(), [cert]);
}

#[test]
fn without_tickets_every_handshake_is_full() {
    let pki = Pki::new();
    let trust = pki.trust(&[], None);
    let (cert, key) = pki.client("host1.amtp.test", 10);
    let client = pki.client_config(&cert, &key);
    for _ in 0..3 {
        assert_eq!(
            handshake(&trust.server_config, &client).kind(),
            Some(HandshakeKind::Full)
        );
    }
}

#[test]
fn a_peer_revoked_by_a_reload_is_refused_on_resumption_as_on_a_full_handshake() {
    let pki = Pki::new();
    // The process keeps its ticket keys across the reload.
    let keys = TicketKeys::new(Duration::from_secs(3600)).unwrap();
    let before = pki.trust(&[], Some(keys.clone()));
    let (cert, key) = pki.client("host1.amtp.test", 66);
    let client = pki.client_config(&cert, &key);
    assert_eq!(
        handshake(&before.server_config, &client).kind(),
        Some(HandshakeKind::Full)
    );
    // Reload: a CRL now revokes serial 66.
    let after = pki.trust(&[66], Some(keys));
    let resumed = handshake(&after.server_config, &client);
    assert!(
        revoked_alert(&resumed),
        "a revoked peer holding a ticket must be refused: server {:?}, client {:?}, kind {:?}",
        resumed.server_error,
        resumed.client_error,
        resumed.server.handshake_kind()
    );
    // The same reply a peer without a ticket gets.
    let fresh = pki.client_config(&cert, &key);
    assert!(revoked_alert(&handshake(&after.server_config, &fresh)));
    // A peer the CRL does not name still resumes across the same reload.
    let (other, other_key) = pki.client("host2.amtp.test", 67);
    let other_client = pki.client_config(&other, &other_key);
    let keys = TicketKeys::new(Duration::from_secs(3600)).unwrap();
    let g1 = pki.trust(&[], Some(keys.clone()));
    handshake(&g1.server_config, &other_client);
    let g2 = pki.trust(&[66], Some(keys));
    assert_eq!(
        handshake(&g2.server_config, &other_client).kind(),
        Some(HandshakeKind::Resumed)
    );
}

#[test]
fn a_ticket_past_its_lifetime_gives_a_full_handshake() {
    let pki = Pki::new();
    // Keys rotate every lifetime and the previous keys still decrypt for one more: at 2.1 s
    // the ticket decrypts, and only its age refuses it.
    let trust = pki.trust(&[], Some(TicketKeys::new(Duration::from_secs(2)).unwrap()));
    let (cert, key) = pki.client("host1.amtp.test", 10);
    let client = pki.client_config(&cert, &key);
    assert_eq!(
        handshake(&trust.server_config, &client).kind(),
        Some(HandshakeKind::Full)
    );
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(
        handshake(&trust.server_config, &client).kind(),
        Some(HandshakeKind::Full)
    );
}

/// Presents `chain` but signs the handshake with `key` (not the certificate's key).
#[derive(Debug)]
struct WrongKey(Arc<CertifiedKey>);

impl ResolvesClientCert for WrongKey {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

#[test]
fn the_chain_cache_never_skips_certificate_verify() {
    let pki = Pki::new();
    let trust = pki.trust(&[], None);
    let (cert, key) = pki.client("host1.amtp.test", 10);
    let honest = pki.client_config(&cert, &key);
    assert_eq!(
        handshake(&trust.server_config, &honest).kind(),
        Some(HandshakeKind::Full)
    );
    assert_eq!(trust.chain_cache_len(), 1, "the chain is cached");
    // Same (cached) chain, another private key.
    let impostor_key = KeyPair::generate().unwrap();
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(
            rustls::pki_types::PrivatePkcs8KeyDer::from(impostor_key.serialize_der()).into(),
        )
        .unwrap();
    let impostor = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(pki.server_ca.clone())
            .with_client_cert_resolver(Arc::new(WrongKey(Arc::new(CertifiedKey::new(
                vec![cert.clone()],
                signer,
            ))))),
    );
    let o = handshake(&trust.server_config, &impostor);
    assert!(
        matches!(
            o.server_error,
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadSignature
            ))
        ),
        "{:?}",
        o.server_error
    );
    // And the honest holder still gets in, from the cache.
    assert_eq!(
        handshake(&trust.server_config, &honest).kind(),
        Some(HandshakeKind::Full)
    );
}

#[test]
fn a_trust_reload_empties_the_chain_cache() {
    let pki = Pki::new();
    let (cert, key) = pki.client("host1.amtp.test", 66);
    let client = pki.client_config(&cert, &key);
    let before = pki.trust(&[], None);
    assert_eq!(
        handshake(&before.server_config, &client).kind(),
        Some(HandshakeKind::Full)
    );
    assert_eq!(before.chain_cache_len(), 1);
    let after = pki.trust(&[66], None);
    assert_eq!(after.chain_cache_len(), 0);
    assert!(revoked_alert(&handshake(&after.server_config, &client)));
    assert_eq!(after.chain_cache_len(), 0, "refused chains are not cached");
    assert!(after.verify_chain(&[cert]).is_err());
}

mod resumption_kx {
    //! [`crate::tls_accept::Acceptors`] over real sockets' stand-in (an in-memory pipe): which
    //! configuration, handshake kind and key-exchange group each connection ends up with.

    use super::*;
    use crate::tls::ResumptionKx;
    use crate::tls_accept::{Acceptors, Chosen};
    use rustls::NamedGroup;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

    /// The server's end of the pipe, handing out at most 100 bytes per read (a ClientHello
    /// that arrives in pieces).
    struct Trickle(DuplexStream);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let mut tmp = [0u8; 100];
            let n = buf.remaining().min(tmp.len());
            let mut small = ReadBuf::new(&mut tmp[..n]);
            let r = Pin::new(&mut self.0).poll_read(cx, &mut small);
            buf.put_slice(small.filled());
            r
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, b)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    #[derive(Debug, PartialEq)]
    struct Seen {
        chosen: Chosen,
        kind: Option<HandshakeKind>,
        group: Option<NamedGroup>,
    }

    /// One connection: handshake, a line from the server (so the client takes its tickets
    /// in), close. `Err` carries the server's handshake error.
    async fn connect(
        acceptors: &Acceptors,
        client: &Arc<ClientConfig>,
    ) -> Result<Seen, std::io::Error> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(client.clone());
        let client_side = async move {
            let mut tls = connector
                .connect("relay.test".try_into().unwrap(), client_io)
                .await?;
            let mut all = Vec::new();
            tls.read_to_end(&mut all).await?;
            Ok::<_, std::io::Error>(all)
        };
        let server_side = async {
            let (mut tls, chosen) = acceptors.accept(Trickle(server_io), |_| ()).await?;
            let conn = tls.get_ref().1;
            let seen = Seen {
                chosen,
                kind: conn.handshake_kind(),
                group: conn.negotiated_key_exchange_group().map(|g| g.name()),
            };
            tls.write_all(b"220 relay.test\r\n").await?;
            tls.shutdown().await?;
            Ok::<_, std::io::Error>(seen)
        };
        let (c, s) = tokio::join!(client_side, server_side);
        let seen = s?;
        assert_eq!(c.expect("client side"), b"220 relay.test\r\n");
        Ok(seen)
    }

    fn acceptors(trust: &AmtpTrust) -> Acceptors {
        Acceptors::new(trust.server_config.clone(), trust.resumption.clone())
    }

    const HYBRID: Option<NamedGroup> = Some(NamedGroup::X25519MLKEM768);

    #[tokio::test]
    async fn a_returning_peer_resumes_over_x25519_and_a_first_contact_keeps_the_hybrid() {
        let pki = Pki::new();
        let trust = pki.trust(
            &[],
            Some(TicketKeys::new(Duration::from_secs(3600)).unwrap()),
        );
        let a = acceptors(&trust);
        let (cert, key) = pki.client("host1.amtp.test", 1);
        let client = pki.client_config(&cert, &key);
        let first = connect(&a, &client).await.unwrap();
        assert_eq!(
            first,
            Seen {
                chosen: Chosen::Full,
                kind: Some(HandshakeKind::Full),
                group: HYBRID
            }
        );
        for _ in 0..2 {
            let again = connect(&a, &client).await.unwrap();
            assert_eq!(
                again,
                Seen {
                    chosen: Chosen::Resuming,
                    kind: Some(HandshakeKind::Resumed),
                    group: Some(NamedGroup::X25519)
                }
            );
        }
        // Another peer's first contact still gets the hybrid.
        let (cert2, key2) = pki.client("host2.amtp.test", 2);
        let other = connect(&a, &pki.client_config(&cert2, &key2))
            .await
            .unwrap();
        assert_eq!((other.chosen, other.group), (Chosen::Full, HYBRID));
    }

    #[tokio::test]
    async fn as_full_resumes_with_the_hybrid() {
        let pki = Pki::new();
        let keys = TicketKeys::new(Duration::from_secs(3600)).unwrap();
        let trust = pki.trust_with(&[], Some(keys), ResumptionKx::AsFull);
        assert!(trust.resumption.is_none());
        let a = acceptors(&trust);
        let (cert, key) = pki.client("host1.amtp.test", 1);
        let client = pki.client_config(&cert, &key);
        connect(&a, &client).await.unwrap();
        let again = connect(&a, &client).await.unwrap();
        assert_eq!(
            again,
            Seen {
                chosen: Chosen::Full,
                kind: Some(HandshakeKind::Resumed),
                group: HYBRID
            }
        );
    }

    #[tokio::test]
    async fn a_ticket_the_relay_will_not_honour_gets_the_full_configuration() {
        let pki = Pki::new();
        let (cert, key) = pki.client("host1.amtp.test", 7);
        let client = pki.client_config(&cert, &key);
        let keys = TicketKeys::new(Duration::from_secs(3600)).unwrap();
        let before = pki.trust(&[], Some(keys.clone()));
        connect(&acceptors(&before), &client).await.unwrap();
        // Other ticket keys (a restarted relay): the ticket does not decrypt. The full
        // handshake that follows keeps the hybrid.
        let restarted = pki.trust(
            &[],
            Some(TicketKeys::new(Duration::from_secs(3600)).unwrap()),
        );
        let seen = connect(&acceptors(&restarted), &client).await.unwrap();
        assert_eq!(
            seen,
            Seen {
                chosen: Chosen::Full,
                kind: Some(HandshakeKind::Full),
                group: HYBRID
            }
        );
        // Same keys, but the peer has been revoked since: refused, as a full handshake is.
        let revoked = pki.trust(&[7], Some(keys));
        let e = connect(&acceptors(&revoked), &client).await.unwrap_err();
        assert!(
            matches!(
                e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Revoked
                ))
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_client_without_a_classical_key_share_resumes_with_the_hybrid_not_a_retry() {
        let pki = Pki::new();
        let trust = pki.trust(
            &[],
            Some(TicketKeys::new(Duration::from_secs(3600)).unwrap()),
        );
        let a = acceptors(&trust);
        let (cert, key) = pki.client("host1.amtp.test", 1);
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider
            .kx_groups
            .retain(|g| g.name() == NamedGroup::X25519MLKEM768);
        let hybrid_only = pki.client_config_with(provider, &cert, &key);
        connect(&a, &hybrid_only).await.unwrap();
        let again = connect(&a, &hybrid_only).await.unwrap();
        assert_eq!(
            again,
            Seen {
                chosen: Chosen::Full,
                kind: Some(HandshakeKind::Resumed),
                group: HYBRID
            }
        );
    }
}
