//! What the storage integration tests share: a message with a plain SMTP envelope, and a
//! seeded random body (so that a body read back can be compared with the one written).
#![allow(dead_code)] // each test binary uses part of it

use amtp_storage::{BodyType, Envelope, NewMessage, Origin};

/// An envelope as the `mx` listener writes it, from `sender`.
pub fn envelope(sender: String) -> Envelope {
    Envelope {
        sender,
        mpc: None,
        origin: Origin::Smtp,
        listener: "mx".into(),
        client_ip: "127.0.0.1".into(),
        auth_user: None,
        message_id: None,
        body: BodyType::Unspecified,
        smtputf8: false,
    }
}

/// A new message from `sender` to `recipients` with `body`.
pub fn message(sender: String, recipients: Vec<String>, body: Vec<u8>) -> NewMessage {
    NewMessage {
        id: None,
        envelope: envelope(sender),
        recipients,
        body: body.into(),
    }
}

/// `len` random bytes, the same for the same `seed`.
pub fn random_body(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}
