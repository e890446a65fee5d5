//! What the probe sees of one connection: a [`ConnectionHooks`] implementation that builds the
//! outbound client (AUTH, stop before DATA) and records TCP, TLS and every command/reply pair,
//! and a server-certificate verifier wrapper that keeps the chain the peer presented (even
//! when verification fails, so an untrusted chain can still be shown).

use amtp_actors::delivery::outbound::ConnectionHooks;
use amtp_proto::client::{Client, ClientConfig};
use amtp_proto::reply::Reply;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// What the reply after the message body answers, in the transcript.
pub const END_OF_DATA: &str = "<message>";

/// The chain a server presented and what verification said about it.
#[derive(Debug, Default, Clone)]
pub struct SeenChain {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// `None` when the verifier accepted it.
    pub error: Option<rustls::Error>,
}

/// Wraps the delivery verifier and remembers what it was shown.
#[derive(Debug)]
pub struct RecordingVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    seen: Arc<Mutex<Option<SeenChain>>>,
}

impl RecordingVerifier {
    /// Wrap `inner`; the chain lands in `seen`.
    pub fn new(inner: Arc<dyn ServerCertVerifier>, seen: Arc<Mutex<Option<SeenChain>>>) -> Self {
        Self { inner, seen }
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(SeenChain {
                chain,
                error: result.as_ref().err().cloned(),
            });
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The negotiated TLS parameters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TlsParams {
    /// e.g. `TLSv1_3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// e.g. `X25519MLKEM768`.
    pub key_exchange: String,
}

/// One reply and the command it answers.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The command (AUTH credentials masked), `greeting`, or [`END_OF_DATA`].
    pub command: String,
    /// The reply.
    pub reply: Reply,
}

/// Everything one connection showed.
#[derive(Debug, Default)]
pub struct Recorder {
    /// AUTH PLAIN credentials for the client.
    pub auth: Option<(String, String)>,
    /// Stop before DATA.
    pub envelope_only: bool,
    /// TCP connected from this address.
    pub local: Option<SocketAddr>,
    /// TLS parameters, once the handshake succeeded.
    pub tls: Option<TlsParams>,
    /// The peer's chain from the connection (after a successful handshake).
    pub peer_chain: Vec<CertificateDer<'static>>,
    /// Replies in order, each with its command.
    pub exchanges: Vec<Exchange>,
    /// A TLS alert the peer sent (it refused our certificate, typically).
    pub alert: Option<String>,
    /// Another read error.
    pub read_error: Option<String>,
    pending: VecDeque<String>,
    in_body: bool,
}

impl Recorder {
    /// A recorder whose client authenticates with `auth` and stops before DATA when
    /// `envelope_only`.
    pub fn new(auth: Option<(String, String)>, envelope_only: bool) -> Self {
        Self {
            auth,
            envelope_only,
            ..Self::default()
        }
    }

    /// The reply to the first command starting with `verb`.
    pub fn reply_to(&self, verb: &str) -> Option<&Reply> {
        self.exchanges
            .iter()
            .find(|e| e.command.to_ascii_uppercase().starts_with(verb))
            .map(|e| &e.reply)
    }

    /// Replies to commands starting with `verb`, in order.
    pub fn replies_to<'a>(&'a self, verb: &'a str) -> impl Iterator<Item = &'a Exchange> + 'a {
        self.exchanges
            .iter()
            .filter(move |e| e.command.to_ascii_uppercase().starts_with(verb))
    }
}

impl ConnectionHooks for Recorder {
    fn client(&mut self, config: ClientConfig) -> Client {
        let mut client = Client::new(config);
        if let Some((user, password)) = &self.auth {
            client = client.with_auth_plain(user, password);
        }
        if self.envelope_only {
            client = client.stop_before_data();
        }
        client
    }

    fn connected(&mut self, local: SocketAddr) {
        self.local = Some(local);
    }

    fn tls_established(&mut self, c: &rustls::ClientConnection) {
        let debug = |d: &dyn std::fmt::Debug| format!("{d:?}");
        self.tls = Some(TlsParams {
            version: c
                .protocol_version()
                .map_or_else(|| "?".into(), |v| debug(&v)),
            cipher: c
                .negotiated_cipher_suite()
                .map_or_else(|| "?".into(), |s| debug(&s.suite())),
            key_exchange: c
                .negotiated_key_exchange_group()
                .map_or_else(|| "?".into(), |g| debug(&g.name())),
        });
        self.peer_chain = c
            .peer_certificates()
            .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
    }

    fn sending(&mut self, bytes: &[u8]) {
        if self.in_body {
            // The empty body a client sends to end DATA when every recipient was refused.
            self.in_body = false;
            self.pending.push_back(END_OF_DATA.into());
            return;
        }
        for line in String::from_utf8_lossy(bytes).split("\r\n") {
            if line.is_empty() {
                continue;
            }
            let shown = if line.to_ascii_uppercase().starts_with("AUTH PLAIN ") {
                "AUTH PLAIN ********".to_string()
            } else {
                line.to_string()
            };
            self.pending.push_back(shown);
        }
    }

    fn reply(&mut self, reply: &Reply) {
        let command = if self.exchanges.is_empty() {
            "greeting".to_string()
        } else if let Some(c) = self.pending.pop_front() {
            c
        } else {
            END_OF_DATA.to_string()
        };
        if command.eq_ignore_ascii_case("DATA") && reply.code == 354 {
            self.in_body = true;
        } else if command == END_OF_DATA {
            self.in_body = false;
        }
        self.exchanges.push(Exchange {
            command,
            reply: reply.clone(),
        });
    }

    fn read_failed(&mut self, error: &std::io::Error) {
        match error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::AlertReceived(alert)) => self.alert = Some(format!("{alert:?}")),
            _ => self.read_error = Some(error.to_string()),
        }
    }
}
