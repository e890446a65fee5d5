//! A stream that is plain TCP until STARTTLS (or TLS from the start), generic over the
//! transport so sessions run over in-memory pipes in tests.

use super::TlsInfo;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

/// Plain or TLS.
pub enum MaybeTls<S> {
    /// Before STARTTLS.
    Plain(S),
    /// After the handshake.
    Tls(Box<TlsStream<S>>),
    /// Transient state while the handshake owns the transport; any I/O fails.
    Upgrading,
}

/// TLS parameters of an established server-side stream.
pub fn tls_info<S>(tls: &TlsStream<S>) -> TlsInfo {
    let conn = tls.get_ref().1;
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => "unknown".to_string(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map_or_else(|| "unknown".to_string(), |c| format!("{:?}", c.suite()));
    TlsInfo { version, cipher }
}

/// Whether an established server-side stream resumed an earlier session.
pub fn resumed<S>(tls: &TlsStream<S>) -> bool {
    tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

/// Queue the session's greeting on a server connection whose handshake has not started (the
/// closure of `TlsAcceptor::accept_with`), so it leaves in the same write as the session tickets
/// instead of one of its own. Returns whether it was queued (whole); if not, nothing was and
/// the driver writes it.
///
/// rustls holds plaintext written during the handshake and encrypts it only when traffic starts:
/// after the client's Finished (and, with client certificates, its Certificate and
/// CertificateVerify) were verified. Our server configurations leave `send_half_rtt_data` off,
/// so nothing goes out earlier, and a handshake that fails never sends the greeting.
pub fn queue_greeting(conn: &mut rustls::ServerConnection, greeting: &[u8]) -> bool {
    use std::io::Write;
    // A fresh connection's plaintext buffer is empty and holds 64 KiB: a greeting (a host name
    // and a few words) goes in whole or, past this bound, not at all.
    const MAX: usize = 16 * 1024;
    conn.is_handshaking()
        && greeting.len() <= MAX
        && conn.writer().write(greeting).ok() == Some(greeting.len())
}

/// A bounded metric label for a failed handshake (never the peer's free text).
pub fn handshake_failure(e: &io::Error) -> &'static str {
    use rustls::Error as E;
    match e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
        Some(E::NoCertificatesPresented) => "no_client_certificate",
        Some(E::InvalidCertificate(_)) => "bad_certificate",
        Some(E::AlertReceived(_)) => "alert_received",
        Some(E::PeerIncompatible(_)) => "incompatible",
        Some(E::PeerMisbehaved(_) | E::InvalidMessage(_)) => "protocol_error",
        Some(_) => "other",
        None if e.kind() == io::ErrorKind::UnexpectedEof => "eof",
        None => "io_error",
    }
}

fn upgrading() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "stream is being upgraded to TLS",
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Upgrading => Poll::Ready(Ok(())),
        }
    }
}
