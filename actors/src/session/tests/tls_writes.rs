//! Layer 2: what an implicit-TLS session costs in writes. Each write on a socket is a system
//! call that also runs the receiver's TCP path, so a session (connect, greeting, EHLO, QUIT)
//! must take four: the server's handshake flight, the session tickets with the greeting, the
//! EHLO reply, and the `221` with the close_notify. Real rustls on both ends (the relay's own
//! server configurations, rcgen certificates) over an in-memory pipe that counts the server's
//! writes; the client checks that it still reads one `220` first and a clean close, and that a
//! refused handshake never shows it a `220`.

use super::*;
use crate::amtp_tls::{AmtpTrust, TrustFiles};
use crate::session::driver::Banner;
use crate::session::stream::{queue_greeting, tls_info};
use crate::tickets::TicketKeys;
use crate::tls::TlsOptions;
use crate::tls_accept::Acceptors;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, HandshakeKind, ServerConfig};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The server's end of the pipe: every write made on it (what one `write`/`writev` on a
/// socket would carry), in order.
struct Counted {
    inner: DuplexStream,
    writes: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Counted {
    fn record(&self, bytes: &[u8]) {
        self.writes.lock().unwrap().push(bytes.to_vec());
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            this.record(&buf[..*n]);
        }
        r
    }

    /// One vectored write is one write (a `writev`), as on a socket.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        self.poll_write(cx, &joined)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// TLS records in one write.
fn records(write: &[u8]) -> usize {
    let (mut at, mut n) = (0, 0);
    while at + 5 <= write.len() {
        at += 5 + usize::from(u16::from_be_bytes([write[at + 3], write[at + 4]]));
        n += 1;
    }
    assert_eq!(at, write.len(), "a write ends on a record boundary");
    n
}

/// A CA, the relay's certificate for `relay.test`, and the files the loaders read.
struct Pki {
    dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
    roots: rustls::RootCertStore,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Self::authority("Peers Root");
        let ca_cert = ca.1;
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["relay.test".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca.0)
            .unwrap();
        std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        Self {
            dir,
            ca: ca.0,
            roots,
        }
    }

    fn authority(name: &str) -> (Issuer<'static, KeyPair>, rcgen::Certificate) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        (Issuer::new(params, key), cert)
    }

    fn options() -> TlsOptions {
        TlsOptions {
            tickets: Some(TicketKeys::new(Duration::from_secs(3600)).unwrap()),
            ..TlsOptions::default()
        }
    }

    /// The implicit-TLS submission listener's configuration.
    fn submissions(&self) -> Arc<ServerConfig> {
        let p = self.dir.path();
        crate::tls::server_config(
            &p.join("server.pem"),
            &p.join("server.key"),
            &Self::options(),
        )
        .unwrap()
    }

    /// What the submissions worker accepts with (no classical resumption configuration).
    fn submissions_acceptors(&self) -> Acceptors {
        Acceptors::new(self.submissions(), None)
    }

    /// What the AMTP worker accepts with: the full and the returning-peer configuration.
    fn amtp_acceptors(&self) -> Acceptors {
        let trust = self.amtp_trust();
        Acceptors::new(trust.server_config.clone(), trust.resumption.clone())
    }

    /// The AMTP listener's configuration (client certificates from the CA).
    fn amtp(&self) -> Arc<ServerConfig> {
        self.amtp_trust().server_config
    }

    fn amtp_trust(&self) -> AmtpTrust {
        let p = self.dir.path();
        let files = TrustFiles {
            public_ca: Some(p.join("ca.pem")),
            private_ca: vec![],
            crl: vec![],
            max_intermediates: 2,
        };
        AmtpTrust::load(
            &files,
            &p.join("server.pem"),
            &p.join("server.key"),
            &Self::options(),
        )
        .unwrap()
    }

    fn client_builder(
        &self,
    ) -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(self.roots.clone())
    }

    /// A client without a certificate; it keeps its tickets.
    fn anonymous(&self) -> Arc<ClientConfig> {
        Arc::new(self.client_builder().with_no_client_auth())
    }

    /// A client presenting a certificate for `name` issued by `issuer`.
    fn peer(&self, name: &str, issuer: &Issuer<'static, KeyPair>) -> Arc<ClientConfig> {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        Arc::new(
            self.client_builder()
                .with_client_auth_cert(chain, PrivatePkcs8KeyDer::from(key.serialize_der()).into())
                .unwrap(),
        )
    }
}

/// Serve one implicit-TLS session as the worker does: the greeting queued into the
/// handshake, then the driver. Returns the outcome, `None` when the handshake failed.
async fn serve_one(acceptors: Acceptors, io: Counted) -> Option<Outcome> {
    let ctx = ctx(ListenerRole::Submissions, SessionConfig::default());
    let mut hello = Vec::new();
    greeting(&ctx.hostname).write_to(&mut hello);
    let mut banner = Banner::Write;
    let accept = acceptors.accept(io, |conn| {
        if queue_greeting(conn, &hello) {
            banner = Banner::Queued;
        }
    });
    let (tls, _) = accept.await.ok()?;
    let mut session = Session::new(ctx, Some(tls_info(&tls)));
    let deps = test_deps(Arc::new(AtomicUsize::new(0)));
    Some(driver::run(MaybeTls::Tls(Box::new(tls)), &mut session, &deps, banner).await)
}

/// Read one reply: until what was read since the call ends with a complete final reply line
/// (`ddd text\r\n`).
async fn read_reply<R: AsyncRead + Unpin>(rd: &mut R, transcript: &mut String) {
    let from = transcript.len();
    let mut buf = [0u8; 4096];
    loop {
        let reply = &transcript[from..];
        let last = reply.trim_end_matches("\r\n").rsplit("\r\n").next();
        if reply.ends_with("\r\n") && last.is_some_and(|l| l.as_bytes().get(3) == Some(&b' ')) {
            return;
        }
        let n = rd.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server closed mid-reply: {transcript:?}");
        transcript.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// One session from the client's side: greeting, EHLO, QUIT, then the server's close.
/// Returns what the client read and how its handshake went.
async fn client_session(config: Arc<ClientConfig>, io: DuplexStream) -> (String, HandshakeKind) {
    let name = rustls::pki_types::ServerName::try_from("relay.test").unwrap();
    let mut tls = TlsConnector::from(config).connect(name, io).await.unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    let mut transcript = String::new();
    read_reply(&mut tls, &mut transcript).await;
    tls.write_all(b"EHLO client.test\r\n").await.unwrap();
    read_reply(&mut tls, &mut transcript).await;
    tls.write_all(b"QUIT\r\n").await.unwrap();
    // To the end: an error here is a close without close_notify (or a broken record).
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest)
        .await
        .expect("the server ends with a close_notify");
    transcript.push_str(&String::from_utf8_lossy(&rest));
    (transcript, kind)
}

/// Run a session between `client` and `server`; returns the client's transcript, its
/// handshake kind and the server's writes.
async fn session(
    server: &Acceptors,
    client: &Arc<ClientConfig>,
) -> (String, HandshakeKind, Vec<Vec<u8>>) {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let writes = Arc::new(Mutex::new(Vec::new()));
    let counted = Counted {
        inner: server_io,
        writes: writes.clone(),
    };
    let server_task = actix::spawn(serve_one(server.clone(), counted));
    let (transcript, kind) = client_session(client.clone(), client_io).await;
    assert_eq!(server_task.await.unwrap(), Some(Outcome::Closed));
    let writes = writes.lock().unwrap().clone();
    (transcript, kind, writes)
}

/// The writes of one session: flight, tickets + greeting, EHLO reply, 221 + close_notify.
fn assert_four_writes(writes: &[Vec<u8>], what: &str) {
    let shape: Vec<usize> = writes.iter().map(|w| records(w)).collect();
    assert_eq!(
        writes.len(),
        4,
        "{what}: server writes (TLS records in each): {shape:?}"
    );
    assert!(
        shape[1] >= 2,
        "{what}: the tickets and the greeting share a write: {shape:?}"
    );
    assert_eq!(
        shape[3], 2,
        "{what}: the 221 and the close_notify share a write: {shape:?}"
    );
}

fn assert_dialogue(transcript: &str) {
    assert!(
        transcript.starts_with("220 relay.test ESMTP amtp-relay\r\n250-relay.test"),
        "{transcript:?}"
    );
    assert_eq!(transcript.matches("220 ").count(), 1, "{transcript:?}");
    assert_eq!(
        reply_codes(transcript).last(),
        Some(&"221"),
        "{transcript:?}"
    );
}

#[actix_rt::test]
async fn a_submissions_session_takes_four_writes_full_and_resumed() {
    let pki = Pki::new();
    let server = pki.submissions_acceptors();
    let client = pki.anonymous();
    let (transcript, kind, writes) = session(&server, &client).await;
    assert_eq!(kind, HandshakeKind::Full);
    assert_dialogue(&transcript);
    assert_four_writes(&writes, "full handshake");
    let (transcript, kind, writes) = session(&server, &client).await;
    assert_eq!(kind, HandshakeKind::Resumed, "the client kept a ticket");
    assert_dialogue(&transcript);
    assert_four_writes(&writes, "resumed");
}

#[actix_rt::test]
async fn an_amtp_session_takes_four_writes_full_and_resumed() {
    let pki = Pki::new();
    let server = pki.amtp_acceptors();
    let client = pki.peer("host1.amtp.test", &pki.ca);
    let (transcript, kind, writes) = session(&server, &client).await;
    assert_eq!(kind, HandshakeKind::Full);
    assert_dialogue(&transcript);
    assert_four_writes(&writes, "full handshake");
    let (transcript, kind, writes) = session(&server, &client).await;
    assert_eq!(kind, HandshakeKind::Resumed, "the client kept a ticket");
    assert_dialogue(&transcript);
    assert_four_writes(&writes, "resumed");
}

/// Everything a client reads after its side of a handshake the server refuses.
async fn refused(server: &Acceptors, client: &Arc<ClientConfig>) -> String {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let counted = Counted {
        inner: server_io,
        writes: Arc::new(Mutex::new(Vec::new())),
    };
    let server_task = actix::spawn(serve_one(server.clone(), counted));
    let name = rustls::pki_types::ServerName::try_from("relay.test").unwrap();
    let mut seen = Vec::new();
    // TLS 1.3: the client's handshake ends when it has sent its Finished; the server's
    // verdict on its certificate arrives after, as an alert instead of data.
    if let Ok(mut tls) = TlsConnector::from(client.clone())
        .connect(name, client_io)
        .await
    {
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
    }
    assert_eq!(server_task.await.unwrap(), None, "the handshake failed");
    String::from_utf8_lossy(&seen).into_owned()
}

#[actix_rt::test]
async fn a_refused_amtp_handshake_never_shows_the_greeting() {
    let pki = Pki::new();
    let server = pki.amtp_acceptors();
    assert_eq!(
        refused(&server, &pki.anonymous()).await,
        "",
        "no certificate"
    );
    let (rogue, _) = Pki::authority("Rogue Root");
    let stranger = pki.peer("host1.amtp.test", &rogue);
    assert_eq!(refused(&server, &stranger).await, "", "unknown issuer");
}

#[actix_rt::test]
async fn a_refusal_after_the_handshake_follows_the_queued_greeting() {
    let pki = Pki::new();
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let mut hello = Vec::new();
    greeting("relay.test").write_to(&mut hello);
    let server = TlsAcceptor::from(pki.amtp());
    let server_task = actix::spawn(async move {
        let mut banner = Banner::Write;
        let tls = server
            .accept_with(server_io, |conn| {
                if queue_greeting(conn, &hello) {
                    banner = Banner::Queued;
                }
            })
            .await
            .unwrap();
        let reply =
            amtp_proto::Reply::new(421, "4.7.0", "relay.test Client certificate not usable");
        driver::refuse(
            MaybeTls::Tls(Box::new(tls)),
            banner,
            &reply,
            "amtp",
            Duration::from_secs(5),
        )
        .await
        .linger()
        .await;
    });
    let client = pki.peer("host1.amtp.test", &pki.ca);
    let name = rustls::pki_types::ServerName::try_from("relay.test").unwrap();
    let mut tls = TlsConnector::from(client)
        .connect(name, client_io)
        .await
        .unwrap();
    let mut seen = Vec::new();
    tls.read_to_end(&mut seen)
        .await
        .expect("the server ends with a close_notify");
    drop(tls);
    server_task.await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen),
        "220 relay.test ESMTP amtp-relay\r\n421 4.7.0 relay.test Client certificate not usable\r\n"
    );
}

#[test]
fn no_server_configuration_sends_data_before_the_client_finished() {
    let pki = Pki::new();
    assert!(!pki.submissions().send_half_rtt_data);
    assert!(!pki.amtp().send_half_rtt_data);
}
