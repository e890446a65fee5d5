//! One outbound connection: connect (optionally from a fixed source address), TLS per the
//! hop, then run the pure [`amtp_proto::client::Client`] over it, pulling messages while the
//! connection is ready (connection reuse) and reporting per-recipient dispositions. Every read
//! and write has a timeout; replies are parsed from a bounded buffer.
//!
//! [`run_connection_with`] is the same connection with [`ConnectionHooks`]: they build the
//! client (adding AUTH, or stopping before DATA) and see each step (TCP, TLS, commands,
//! replies). `amtp-relay probe` reports a peer through them, so the probe and delivery share
//! one client.
//!
//! Failures carry a typed [`Cause`]: `Connect`, `Tls`, `Connection`, a peer's reply, or
//! `LocalConfig` when this relay lacks what the hop needs (no AMTP client certificate or trust
//! anchors, no `server_ca` for required TLS, an unbindable source address) — temporary, so the
//! mail waits for the operator instead of bouncing.

use amtp_proto::client::{
    Cause, Client, ClientConfig, Disposition, Envelope, Output, TlsPolicy, dot_stuff,
};
use amtp_proto::reply::{Reply, parse_reply};
use amtp_storage::QueueId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Where to connect and how.
#[derive(Debug, Clone)]
pub struct HopTarget {
    /// The host name (TLS server name) or address text.
    pub host: String,
    /// The resolved address.
    pub addr: SocketAddr,
    /// AMTP (implicit TLS with our certificate) or SMTP.
    pub amtp: bool,
    /// TLS policy for SMTP hops (AMTP hops are always `Implicit`).
    pub tls: TlsPolicy,
}

/// Settings shared by all outbound connections.
#[derive(Clone)]
pub struct OutboundContext {
    /// EHLO name.
    pub ehlo_name: String,
    /// Local address to bind.
    pub source: Option<IpAddr>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-reply timeout.
    pub command_timeout: Duration,
    /// AMTP: our certificate, verifying the peer against the trust anchors.
    pub amtp_tls: Option<Arc<rustls::ClientConfig>>,
    /// SMTP with `required` TLS: verifying against `server_ca`.
    pub smtp_verified_tls: Option<Arc<rustls::ClientConfig>>,
    /// SMTP opportunistic TLS: encryption without certificate verification (RFC 7435).
    pub smtp_opportunistic_tls: Arc<rustls::ClientConfig>,
}

/// One message for this connection.
#[derive(Debug, Clone)]
pub struct Job {
    /// Queue id.
    pub id: QueueId,
    /// Envelope for the client.
    pub envelope: Envelope,
    /// The message as it is sent (with the `MPC:` header on SMTP hops): the buffer the
    /// session received, shared, unless a header had to be added.
    pub body: bytes::Bytes,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

impl Stream {
    async fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Plain(s) => s.write_all(b).await,
            Self::Tls(s) => {
                s.write_all(b).await?;
                s.flush().await
            }
            Self::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    async fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(b).await,
            Self::Tls(s) => s.read(b).await,
            Self::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

/// What [`run_connection_with`] lets a caller decide and see. Every method has a default that
/// does what delivery does (nothing), so an implementation overrides only what it needs.
pub trait ConnectionHooks {
    /// Build the client for this connection (e.g. with AUTH credentials, or stopping before
    /// DATA).
    fn client(&mut self, config: ClientConfig) -> Client {
        Client::new(config)
    }
    /// TCP is connected from `local`.
    fn connected(&mut self, _local: SocketAddr) {}
    /// The TLS handshake succeeded (AMTP on connect, SMTP after STARTTLS).
    fn tls_established(&mut self, _connection: &rustls::ClientConnection) {}
    /// Bytes about to be written: commands, never the message body.
    fn sending(&mut self, _bytes: &[u8]) {}
    /// A complete reply arrived.
    fn reply(&mut self, _reply: &Reply) {}
    /// Reading failed (a TLS alert from the peer shows up here).
    fn read_failed(&mut self, _error: &std::io::Error) {}
}

/// The hooks delivery uses: none.
pub struct NoHooks;

impl ConnectionHooks for NoHooks {}

async fn connect(target: &HopTarget, ctx: &OutboundContext) -> Result<TcpStream, Cause> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| Cause::Connect(format!("socket: {e}")))?;
    if let Some(src) = ctx.source {
        socket
            .bind(SocketAddr::new(src, 0))
            .map_err(|e| Cause::LocalConfig(format!("cannot bind source address {src}: {e}")))?;
    }
    match tokio::time::timeout(ctx.connect_timeout, socket.connect(target.addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(Cause::Connect(format!(
            "{} ({}): {e}",
            target.host, target.addr
        ))),
        Err(_) => Err(Cause::Connect(format!(
            "{} ({}): timed out",
            target.host, target.addr
        ))),
    }
}

fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("invalid TLS server name {host}: {e}"))
}

async fn tls(
    tcp: TcpStream,
    host: &str,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, String> {
    match tokio::time::timeout(
        timeout,
        TlsConnector::from(config).connect(server_name(host)?, tcp),
    )
    .await
    {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Counts an outbound connection as open (`amtp_outbound_connections_open`) until dropped.
struct OpenConnection;

impl Drop for OpenConnection {
    fn drop(&mut self) {
        crate::metrics::outbound_closed();
    }
}

/// Deliver messages over one connection. `next_job` is asked for the next message whenever the
/// connection is ready (until it returns `None` or `max_messages` were sent); `report` gets each
/// message's dispositions. `Err` means the connection failed with no message in flight.
pub async fn run_connection<F: Future<Output = Option<Job>>>(
    target: &HopTarget,
    ctx: &OutboundContext,
    max_messages: usize,
    next_job: impl FnMut() -> F,
    report: impl FnMut(QueueId, Vec<(String, Disposition)>),
) -> Result<(), Cause> {
    run_connection_with(target, ctx, max_messages, next_job, report, &mut NoHooks).await
}

/// [`run_connection`] with hooks that build the client and see every step.
pub async fn run_connection_with<F: Future<Output = Option<Job>>>(
    target: &HopTarget,
    ctx: &OutboundContext,
    max_messages: usize,
    mut next_job: impl FnMut() -> F,
    mut report: impl FnMut(QueueId, Vec<(String, Disposition)>),
    hooks: &mut dyn ConnectionHooks,
) -> Result<(), Cause> {
    // A local configuration error is found before connecting: the peer need not see us.
    if target.amtp && ctx.amtp_tls.is_none() {
        return Err(Cause::LocalConfig(
            "AMTP next hop, but no AMTP client certificate and trust anchors are configured \
             ([tls] certificate and private_key; [delivery] server_ca or [amtp] public_ca)"
                .into(),
        ));
    }
    if !target.amtp && target.tls == TlsPolicy::Required && ctx.smtp_verified_tls.is_none() {
        return Err(Cause::LocalConfig(
            "TLS is required for this hop, but no server_ca is configured to verify it".into(),
        ));
    }
    let tcp = connect(target, ctx).await;
    crate::metrics::outbound_connect(tcp.is_ok());
    let tcp = tcp?;
    let _open = OpenConnection;
    if let Ok(local) = tcp.local_addr() {
        hooks.connected(local);
    }
    let mut stream = if target.amtp {
        let config = ctx
            .amtp_tls
            .clone()
            .ok_or_else(|| Cause::LocalConfig("no AMTP client TLS configuration".into()))?;
        let s = tls(tcp, &target.host, config, ctx.command_timeout)
            .await
            .map_err(|e| Cause::Tls(format!("with {}: {e}", target.host)))?;
        hooks.tls_established(s.get_ref().1);
        Stream::Tls(Box::new(s))
    } else {
        Stream::Plain(tcp)
    };
    let policy = if target.amtp {
        TlsPolicy::Implicit
    } else {
        target.tls
    };
    let mut client = hooks.client(ClientConfig {
        ehlo_name: ctx.ehlo_name.clone(),
        tls: policy,
        amtp: target.amtp,
        peer: target.host.clone(),
    });
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut current: Option<Job> = None;
    let mut sent = 0usize;
    let mut todo: VecDeque<Output> = VecDeque::new();
    loop {
        // Read one reply (bounded, with a timeout).
        let reply = loop {
            match parse_reply(&buf, 4096) {
                Ok(Some((r, used))) => {
                    buf.drain(..used);
                    break Ok(r);
                }
                Ok(None) => {}
                Err(e) => break Err(format!("unparseable reply: {e:?}")),
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(ctx.command_timeout, stream.read(&mut chunk)).await {
                Ok(Ok(0)) => break Err("connection closed by peer".into()),
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => {
                    hooks.read_failed(&e);
                    break Err(e.to_string());
                }
                Err(_) => break Err("timed out waiting for a reply".into()),
            }
        };
        let reply = match reply {
            Ok(r) => {
                hooks.reply(&r);
                r
            }
            Err(reason) => {
                let cause = Cause::Connection(format!("{}: {reason}", target.host));
                for o in client.on_connection_lost(&cause) {
                    if let (Output::MessageDone(d), Some(job)) = (o, current.take()) {
                        report(job.id, d);
                    }
                }
                return if sent == 0 { Err(cause) } else { Ok(()) };
            }
        };
        todo.extend(client.on_reply(reply));
        while let Some(out) = todo.pop_front() {
            match out {
                Output::Send(bytes) => {
                    hooks.sending(&bytes);
                    if let Err(e) =
                        tokio::time::timeout(ctx.command_timeout, stream.write_all(&bytes))
                            .await
                            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))
                            .and_then(|r| r)
                    {
                        // The QUIT after a refusal may meet a peer that already closed: the
                        // refusal stays the cause.
                        if let Some(refusal) = todo.iter().find_map(|o| match o {
                            Output::Failed(c) => Some(c.clone()),
                            _ => None,
                        }) {
                            return Err(refusal);
                        }
                        let cause =
                            Cause::Connection(format!("{}: write failed: {e}", target.host));
                        for o in client.on_connection_lost(&cause) {
                            if let (Output::MessageDone(d), Some(job)) = (o, current.take()) {
                                report(job.id, d);
                            }
                        }
                        return if sent == 0 { Err(cause) } else { Ok(()) };
                    }
                }
                Output::StartTls => {
                    let Stream::Plain(tcp) = std::mem::replace(&mut stream, Stream::Gone) else {
                        return Err(Cause::Connection(format!(
                            "{}: STARTTLS on a TLS connection",
                            target.host
                        )));
                    };
                    let config = match target.tls {
                        TlsPolicy::Required => ctx.smtp_verified_tls.clone().ok_or_else(|| {
                            Cause::LocalConfig(
                                "TLS is required for this hop, but no server_ca is configured"
                                    .into(),
                            )
                        })?,
                        _ => ctx.smtp_opportunistic_tls.clone(),
                    };
                    match tls(tcp, &target.host, config, ctx.command_timeout).await {
                        Ok(s) => {
                            hooks.tls_established(s.get_ref().1);
                            stream = Stream::Tls(Box::new(s));
                            buf.clear();
                            todo.extend(client.on_tls());
                        }
                        Err(e) => todo.extend(client.on_tls_failed(&e)),
                    }
                }
                Output::SendBody => {
                    let Some(job) = &current else { continue };
                    let wire = dot_stuff(&job.body);
                    let write = tokio::time::timeout(
                        ctx.command_timeout.max(Duration::from_secs(60)),
                        stream.write_all(&wire),
                    )
                    .await;
                    if !matches!(write, Ok(Ok(()))) {
                        todo.clear();
                        todo.extend(client.on_connection_lost(&Cause::Connection(format!(
                            "{}: writing the message failed",
                            target.host
                        ))));
                    }
                }
                Output::MessageDone(d) => {
                    if let Some(job) = current.take() {
                        report(job.id, d);
                    }
                }
                Output::Ready => {
                    let job = if sent < max_messages {
                        next_job().await
                    } else {
                        None
                    };
                    match job {
                        Some(job) => {
                            sent += 1;
                            todo.extend(client.send(job.envelope.clone()));
                            current = Some(job);
                        }
                        None => todo.extend(client.quit()),
                    }
                }
                Output::Failed(cause) => return Err(cause),
                Output::Close => return Ok(()),
            }
        }
    }
}

/// Opportunistic TLS (RFC 7435): encrypt, do not authenticate the server. Handshake
/// signatures are still verified, so the session keys belong to whoever holds the key in the
/// presented certificate.
#[derive(Debug)]
pub struct EncryptOnly(pub rustls::crypto::WebPkiSupportedAlgorithms);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The outbound TLS client configurations.
pub struct OutboundTls {
    /// AMTP: our certificate, peers verified against the roots.
    pub amtp: Option<Arc<rustls::ClientConfig>>,
    /// SMTP with required TLS: verified against the roots.
    pub verified: Option<Arc<rustls::ClientConfig>>,
    /// Opportunistic SMTP TLS: encrypt only.
    pub opportunistic: Arc<rustls::ClientConfig>,
}

/// Build the outbound TLS configurations from our certificate and the trust anchors.
pub fn tls_configs(
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
    roots: Option<&std::path::Path>,
) -> Result<OutboundTls, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = || {
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())
    };
    let store = match roots {
        Some(path) => Some(Arc::new(root_store(&[path])?)),
        None => None,
    };
    let verified = match &store {
        Some(s) => Some(Arc::new(
            builder()?
                .with_root_certificates(s.clone())
                .with_no_client_auth(),
        )),
        None => None,
    };
    let amtp = match (&store, cert, key) {
        (Some(s), Some(cert), Some(key)) => Some(amtp_client_tls(s.clone(), cert, key)?),
        _ => None,
    };
    let algs = provider.signature_verification_algorithms;
    let opportunistic = Arc::new(
        builder()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(algs)))
            .with_no_client_auth(),
    );
    Ok(OutboundTls {
        amtp,
        verified,
        opportunistic,
    })
}

/// Trust anchors from PEM bundles (every certificate in every file).
pub fn root_store(paths: &[&std::path::Path]) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    for path in paths {
        for c in
            CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?
        {
            store
                .add(c.map_err(|e| format!("{}: {e}", path.display()))?)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(store)
}

/// The AMTP client TLS configuration: our certificate chain and key, next hops verified
/// against `roots` (TLS 1.2 and 1.3).
pub fn amtp_client_tls(
    roots: Arc<rustls::RootCertStore>,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ClientConfig>, String> {
    amtp_client_tls_verified_by(webpki_verifier(roots)?, cert, key)
}

/// The verifier [`amtp_client_tls`] uses: WebPKI against `roots`.
pub fn webpki_verifier(
    roots: Arc<rustls::RootCertStore>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let verifier: Arc<dyn ServerCertVerifier> =
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots,
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .map_err(|e| format!("trust anchors: {e}"))?;
    Ok(verifier)
}

/// As [`amtp_client_tls`], with the server verified by `verifier` (a probe wraps
/// [`webpki_verifier`] to see the chain it was given).
pub fn amtp_client_tls_verified_by(
    verifier: Arc<dyn ServerCertVerifier>,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> OutboundContext {
        OutboundContext {
            ehlo_name: "relay.test".into(),
            source: None,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
            amtp_tls: None,
            smtp_verified_tls: None,
            smtp_opportunistic_tls: tls_configs(None, None, None).unwrap().opportunistic,
        }
    }

    /// A hop this relay is not configured to serve — AMTP without our client certificate and
    /// trust anchors, SMTP with required TLS but no `server_ca` — is a local configuration
    /// error: temporary (the mail is deferred, not bounced), found before connecting.
    #[actix_rt::test]
    async fn a_hop_we_cannot_serve_is_a_temporary_local_configuration_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (amtp, tls) in [(true, TlsPolicy::Implicit), (false, TlsPolicy::Required)] {
            let target = HopTarget {
                host: "peer.test".into(),
                addr,
                amtp,
                tls,
            };
            let err = run_connection(
                &target,
                &context(),
                10,
                || std::future::ready(None),
                |_, _| {},
            )
            .await
            .unwrap_err();
            assert!(err.is_local_config(), "{err:?}");
            assert_eq!(err.status().to_string(), "4.3.5");
            assert!(matches!(
                Disposition::from_cause(err),
                Disposition::Deferred(_)
            ));
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(200), listener.accept())
                .await
                .is_err(),
            "the peer never saw a connection"
        );
    }
}
