//! The few facts the relay reads from a TLS ClientHello before rustls sees it: which
//! key-exchange groups the client prefers and sent key shares for, and the first session
//! ticket it offers. [`crate::tls_accept`] uses them to pick the server configuration for a
//! returning peer (see there for why).
//!
//! This is a reader, not a validator: rustls parses the same bytes again and answers anything
//! malformed with the right alert. Whatever this module cannot read is simply "no facts", and
//! the connection gets the configuration a full handshake gets.

use crate::tls_wire::Reader;

/// The TLS record type of handshake messages.
const HANDSHAKE: u8 = 22;
/// The handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Extension numbers (RFC 8446 §4.2).
const SUPPORTED_GROUPS: u16 = 10;
const PRE_SHARED_KEY: u16 = 41;
const KEY_SHARE: u16 = 51;
/// The most bytes a ClientHello may take before this module gives up on it (rustls does
/// not; a larger one just gets the full-handshake configuration).
pub const MAX_CLIENT_HELLO: usize = 32 * 1024;

/// What was read from a ClientHello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHelloFacts {
    /// `supported_groups`, in the client's order of preference.
    pub groups: Vec<u16>,
    /// The groups the client sent a key share for.
    pub key_shares: Vec<u16>,
    /// The first PSK identity (a session ticket), if the client offered one.
    pub ticket: Option<Vec<u8>>,
}

/// How far the bytes received so far go.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The ClientHello is complete; it was read.
    Complete(ClientHelloFacts),
    /// More bytes are needed; at least this many in total.
    NeedAtLeast(usize),
    /// Not a ClientHello this module can read (not TLS, too large, malformed).
    Unreadable,
}

/// Read the ClientHello at the start of `received` (the first bytes of a connection).
pub fn read(received: &[u8]) -> Progress {
    // Reassemble the handshake layer from the records received so far.
    let mut handshake = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = received.get(at..at + 5) else {
            return Progress::NeedAtLeast(at + 5);
        };
        if header[0] != HANDSHAKE || header[1] != 3 {
            return Progress::Unreadable;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || at + 5 + len > MAX_CLIENT_HELLO {
            return Progress::Unreadable;
        }
        let Some(body) = received.get(at + 5..at + 5 + len) else {
            return Progress::NeedAtLeast(at + 5 + len);
        };
        handshake.extend_from_slice(body);
        at += 5 + len;
        if handshake.len() >= 4 {
            if handshake[0] != CLIENT_HELLO {
                return Progress::Unreadable;
            }
            let msg_len = usize::from(handshake[1]) << 16
                | usize::from(handshake[2]) << 8
                | usize::from(handshake[3]);
            if msg_len > MAX_CLIENT_HELLO {
                return Progress::Unreadable;
            }
            if handshake.len() >= 4 + msg_len {
                return parse_body(&handshake[4..4 + msg_len])
                    .map_or(Progress::Unreadable, Progress::Complete);
            }
        }
    }
}

fn parse_body(body: &[u8]) -> Option<ClientHelloFacts> {
    let mut r = Reader::new(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec(1)?; // legacy_session_id
    r.vec(2)?; // cipher_suites
    r.vec(1)?; // legacy_compression_methods
    let mut facts = ClientHelloFacts::default();
    if r.is_empty() {
        return Some(facts); // no extensions at all (TLS 1.2 and older)
    }
    let mut extensions = r.vec(2)?;
    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let mut data = extensions.vec(2)?;
        match kind {
            SUPPORTED_GROUPS => {
                let mut list = data.vec(2)?;
                while !list.is_empty() {
                    facts.groups.push(list.u16()?);
                }
            }
            KEY_SHARE => {
                let mut shares = data.vec(2)?;
                while !shares.is_empty() {
                    facts.key_shares.push(shares.u16()?);
                    shares.vec(2)?;
                }
            }
            PRE_SHARED_KEY => {
                let mut identities = data.vec(2)?;
                let identity = identities.vec(2)?;
                facts.ticket = Some(identity.rest().to_vec());
            }
            _ => {}
        }
    }
    Some(facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};
    use std::sync::Arc;

    fn client_hello(config: ClientConfig) -> Vec<u8> {
        let mut client = ClientConnection::new(
            Arc::new(config),
            ServerName::try_from("relay.test").unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).unwrap();
        }
        out
    }

    fn rustls_client() -> ClientConfig {
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth()
    }

    #[test]
    fn a_rustls_client_hello_names_its_groups_and_shares_and_no_ticket() {
        let bytes = client_hello(rustls_client());
        let Progress::Complete(facts) = read(&bytes) else {
            panic!("not read: {:?}", read(&bytes));
        };
        let x25519 = u16::from(rustls::NamedGroup::X25519);
        let hybrid = u16::from(rustls::NamedGroup::X25519MLKEM768);
        assert_eq!(facts.groups[..2], [hybrid, x25519], "{facts:?}");
        assert!(facts.key_shares.contains(&hybrid), "{facts:?}");
        assert!(facts.key_shares.contains(&x25519), "{facts:?}");
        assert_eq!(facts.ticket, None);
    }

    #[test]
    fn partial_input_asks_for_more_and_never_reads_past_the_end() {
        let bytes = client_hello(rustls_client());
        for cut in 0..bytes.len() {
            match read(&bytes[..cut]) {
                Progress::NeedAtLeast(n) => assert!(n > cut, "cut {cut}: asks for {n}"),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_hello_split_over_two_records_is_reassembled() {
        let bytes = client_hello(rustls_client());
        let body = &bytes[5..];
        let (a, b) = body.split_at(40);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[HANDSHAKE, 3, 1]);
            split.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(read(&split), read(&bytes));
        assert!(matches!(read(&split), Progress::Complete(_)));
    }

    #[test]
    fn not_tls_or_garbage_is_unreadable_without_panicking() {
        assert_eq!(read(b"EHLO x\r\n"), Progress::Unreadable);
        assert_eq!(read(&[22, 3, 1, 0, 0]), Progress::Unreadable);
        assert_eq!(read(&[22, 3, 1, 0xff, 0xff]), Progress::Unreadable);
        // A complete record whose ClientHello lies about its lengths.
        let mut bad = vec![22, 3, 1, 0, 8, 1, 0, 0, 4, 3, 3, 0xff, 0xff];
        bad.truncate(13);
        assert_eq!(read(&bad), Progress::Unreadable);
        // Every truncation of a real hello's body inside one record: unreadable, no panic.
        let bytes = client_hello(rustls_client());
        for cut in 9..bytes.len() {
            let body = &bytes[5..cut];
            let mut rec = vec![22, 3, 1];
            rec.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
            rec.extend_from_slice(body);
            let _ = read(&rec);
        }
    }
}
