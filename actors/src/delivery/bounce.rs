//! Turning permanent failures into a DSN message for the queue: one per message per failure
//! batch, from the null sender (so it can never bounce), with MPC `net/autoresponse` (spec §6),
//! never to the null sender and never for a message that is itself a DSN.

use amtp_proto::dsn::{Dsn, DsnAction, DsnRecipient, build};
use amtp_storage::{Envelope, MessageRecord, NewMessage, Origin, QueueId};

/// The RFC 3463 status in a reply text like `550 5.1.1 …`, or one derived from its code.
fn status_of(text: &str) -> String {
    let mut words = text.split_whitespace();
    let first = words.next().unwrap_or("");
    let second = words.next().unwrap_or("");
    let looks = |s: &str| {
        s.split('.').count() == 3
            && s.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    if looks(first) {
        return first.to_string();
    }
    if looks(second) {
        return second.to_string();
    }
    match first.as_bytes().first() {
        Some(b'4') => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

/// The DSN for `failed` recipients (address, reason), or `None` when none may be sent.
/// `original` is the start of the original message (its header section is attached); when it
/// is unavailable, a minimal header section is made from the envelope.
pub fn dsn(
    hostname: &str,
    id: QueueId,
    record: &MessageRecord,
    failed: &[(String, String)],
    original: &[u8],
    now: u64,
) -> Option<NewMessage> {
    if record.envelope.sender.is_empty()
        || record.envelope.origin == Origin::Local
        || failed.is_empty()
    {
        return None;
    }
    let recipients: Vec<DsnRecipient> = failed
        .iter()
        .map(|(address, why)| DsnRecipient {
            address: address.clone(),
            action: DsnAction::Failed,
            status: status_of(why),
            remote_mta: None,
            diagnostic: Some(why.clone()),
        })
        .collect();
    let token = format!("{id}.{now}");
    let fallback = format!(
        "Message-ID: {}\r\nFrom: <{}>\r\n",
        record.envelope.message_id.as_deref().unwrap_or("<unknown>"),
        record.envelope.sender
    );
    let headers = if original.is_empty() {
        fallback.as_bytes()
    } else {
        original
    };
    let body = build(&Dsn {
        reporting_mta: hostname,
        to: &record.envelope.sender,
        arrival: record.received_at / 1000,
        now,
        token: &token,
        recipients: &recipients,
        original_headers: headers,
    });
    Some(NewMessage {
        id: None,
        envelope: Envelope {
            sender: String::new(),
            mpc: Some("net/autoresponse".into()),
            origin: Origin::Local,
            listener: "delivery".into(),
            client_ip: "127.0.0.1".into(),
            auth_user: None,
            message_id: Some(format!("<{token}@{hostname}>")),
        },
        recipients: vec![record.envelope.sender.clone()],
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use amtp_storage::{RecipientState, RecipientStatus};

    fn record(sender: &str, origin: Origin) -> MessageRecord {
        MessageRecord {
            received_at: 0,
            envelope: Envelope {
                sender: sender.into(),
                mpc: Some("per/individual".into()),
                origin,
                listener: "amtp".into(),
                client_ip: "127.0.0.9".into(),
                auth_user: None,
                message_id: Some("<m@x.test>".into()),
            },
            recipients: vec![RecipientStatus {
                address: "bob@remote.test".into(),
                state: RecipientState::Pending,
                last_reply: None,
            }],
            size: 10,
            attempts: 0,
            next_attempt: 0,
            lease_until: 0,
        }
    }

    #[test]
    fn dsn_envelope_and_rules() {
        let failed = vec![(
            "bob@remote.test".to_string(),
            "550 5.1.1 no such user".to_string(),
        )];
        let m = dsn(
            "relay.test",
            QueueId(7),
            &record("alice@src.test", Origin::Submission),
            &failed,
            b"Subject: the original\r\nX-Trace: 1\r\n\r\nsecret body\r\n",
            100,
        )
        .unwrap();
        assert_eq!(
            (
                m.envelope.sender.as_str(),
                m.envelope.mpc.as_deref(),
                m.recipients.clone()
            ),
            (
                "",
                Some("net/autoresponse"),
                vec!["alice@src.test".to_string()]
            )
        );
        assert_eq!(m.envelope.origin, Origin::Local);
        let text = String::from_utf8(m.body).unwrap();
        assert!(
            text.contains("Status: 5.1.1")
                && text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"),
            "{text}"
        );
        assert!(
            text.contains("Subject: the original\r\nX-Trace: 1\r\n")
                && !text.contains("secret body"),
            "original headers, not the body: {text}"
        );
        assert!(
            dsn(
                "relay.test",
                QueueId(7),
                &record("", Origin::Submission),
                &failed,
                b"",
                100
            )
            .is_none(),
            "never to the null sender"
        );
        assert!(
            dsn(
                "relay.test",
                QueueId(7),
                &record("a@b.test", Origin::Local),
                &failed,
                b"",
                100
            )
            .is_none(),
            "never for a DSN"
        );
        assert_eq!(status_of("4.4.7 delivery time expired"), "4.4.7");
        assert_eq!(status_of("421 try later"), "4.0.0");
        assert_eq!(status_of("something odd"), "5.0.0");
    }
}
