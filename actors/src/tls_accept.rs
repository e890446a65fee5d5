//! The implicit-TLS accept of an AMTP connection: which server configuration a connection
//! gets, decided from its ClientHello.
//!
//! A TLS 1.3 session resumption still runs a fresh key exchange (rustls, like every common
//! client, resumes with `psk_dhe_ke`), and with the default groups that exchange is the
//! X25519 + ML-KEM-768 hybrid: about a quarter of the relay's cryptographic work in a
//! resumed handshake. For a *resumed* session the post-quantum half buys little: the session
//! keys are derived from both the fresh exchange and the ticket's pre-shared key, and that key
//! descends from the peer's full handshake, which used the hybrid. An adversary recording
//! traffic today to break X25519 later still lacks the pre-shared key. What the hybrid would
//! add is protection in the case where the ticket keys are stolen as well (they live only in
//! the relay's memory and are replaced every `ticket_lifetime`).
//!
//! So with `[amtp] resumption_kx = "classical"` (the default) a connection whose ClientHello
//! offers a ticket that the relay will honour, and a key share for a classical group, is
//! answered from a second server configuration that is identical except that it offers
//! `kx_groups` without the hybrids. Everything else — a first contact, an expired or unknown
//! ticket, a client that sent only a hybrid key share, a ClientHello this module cannot read —
//! gets the configuration full handshakes get. `"as-full"` turns the choice off.
//!
//! The ClientHello is read here (bounded by [`client_hello::MAX_CLIENT_HELLO`] and by the
//! caller's handshake timeout) and handed to rustls unchanged through [`Prefixed`], so rustls
//! still parses and checks every byte and answers anything wrong with its usual alert.

use crate::client_hello::{self, ClientHelloFacts, Progress};
use crate::tickets::TicketGate;
use rustls::{ServerConfig, ServerConnection};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How much a read of the ClientHello asks for at least.
const READ_AHEAD: usize = 8 * 1024;

/// The server configurations of an implicit-TLS AMTP listener.
#[derive(Clone)]
pub struct Acceptors {
    full: TlsAcceptor,
    /// For a returning peer (see the module docs); `None` when off.
    resuming: Option<Resuming>,
}

#[derive(Clone)]
struct Resuming {
    acceptor: TlsAcceptor,
    /// The ticket keys and checks both configurations use.
    gate: Arc<TicketGate>,
    /// Its groups (IANA numbers), in the configured order.
    groups: Vec<u16>,
}

/// Which configuration a connection got (for metrics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// The one full handshakes get.
    Full,
    /// The classical-groups one for a returning peer.
    Resuming,
}

impl Acceptors {
    /// `resuming`: the configuration for returning peers (same certificates, verifier and
    /// ticket gate as `full`, classical groups only) with that gate, or `None`.
    pub fn new(
        full: Arc<ServerConfig>,
        resuming: Option<(Arc<ServerConfig>, Arc<TicketGate>)>,
    ) -> Self {
        Self {
            full: TlsAcceptor::from(full),
            resuming: resuming.map(|(config, gate)| Resuming {
                groups: config
                    .crypto_provider()
                    .kx_groups
                    .iter()
                    .map(|g| u16::from(g.name()))
                    .collect(),
                acceptor: TlsAcceptor::from(config),
                gate,
            }),
        }
    }

    /// Which configuration a ClientHello gets: the resuming one only when the client offers a
    /// ticket the relay will honour (it decrypts, is within its lifetime and its chain still
    /// verifies: the same check rustls runs a moment later) and sent a key share for the
    /// classical group it prefers, so that choosing it never costs a HelloRetryRequest.
    pub fn choose(&self, facts: &ClientHelloFacts) -> Chosen {
        let Some(r) = &self.resuming else {
            return Chosen::Full;
        };
        let Some(ticket) = &facts.ticket else {
            return Chosen::Full;
        };
        // rustls picks the first group in the client's order that the configuration offers.
        let Some(group) = facts.groups.iter().find(|g| r.groups.contains(g)) else {
            return Chosen::Full;
        };
        if !facts.key_shares.contains(group) || !r.gate.honours(ticket) {
            return Chosen::Full;
        }
        Chosen::Resuming
    }

    /// Read the ClientHello, choose, and run the handshake; `before` gets the rustls
    /// connection before the handshake starts (to queue the greeting). The caller bounds the
    /// whole (`tls_handshake_timeout`).
    pub async fn accept<S, F>(
        &self,
        mut stream: S,
        before: F,
    ) -> io::Result<(TlsStream<Prefixed<S>>, Chosen)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: FnOnce(&mut ServerConnection),
    {
        if self.resuming.is_none() {
            let tls = self
                .full
                .accept_with(Prefixed::new(stream, Vec::new()), before)
                .await?;
            return Ok((tls, Chosen::Full));
        }
        // One read takes a whole ClientHello as a rule (a ticket makes it 1-3 KB).
        let mut received = Vec::with_capacity(READ_AHEAD);
        let facts = loop {
            match client_hello::read(&received) {
                Progress::Complete(facts) => break Some(facts),
                Progress::Unreadable => break None,
                Progress::NeedAtLeast(n) => {
                    let want = n.saturating_sub(received.len()).max(READ_AHEAD);
                    let before = received.len();
                    received.resize(before + want, 0);
                    let got = stream.read(&mut received[before..]).await?;
                    received.truncate(before + got);
                    if got == 0 {
                        break None; // rustls reports the early end as it always does
                    }
                }
            }
        };
        let chosen = facts.as_ref().map_or(Chosen::Full, |f| self.choose(f));
        let acceptor = match (&self.resuming, chosen) {
            (Some(r), Chosen::Resuming) => &r.acceptor,
            _ => &self.full,
        };
        let tls = acceptor
            .accept_with(Prefixed::new(stream, received), before)
            .await?;
        Ok((tls, chosen))
    }
}

/// A stream that first yields bytes already read from it (the ClientHello), then reads on.
/// Writes go straight through, vectored writes included (rustls writes its records with
/// `writev`).
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Over `inner`, yielding `prefix` first.
    pub fn new(inner: S, prefix: Vec<u8>) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
