//! Turning permanent failures into a DSN message for the queue: one per message per failure
//! batch, from the null sender (so it can never bounce), with MPC `net/autoresponse` (spec §6),
//! never to the null sender and never for a message that is itself a DSN.
//!
//! Each recipient's `Status`, `Remote-MTA` and `Diagnostic-Code` come from its typed
//! [`Cause`]: a server's reply is reported as `smtp; <reply>`, a decision of the relay itself
//! (no SRV record, the peer's published MPC policy, an expired lifetime after a connection
//! failure) as `X-AMTP-Relay; <why>` — never as an invented SMTP reply.

use amtp_proto::client::Cause;
use amtp_proto::dsn::{Dsn, DsnAction, DsnRecipient, build};
use amtp_storage::{BodyType, Envelope, MessageRecord, NewMessage, Origin, QueueId};

/// The DSN for `failed` recipients (address, cause), or `None` when none may be sent.
/// `original` is the start of the original message (its header section is attached); when it
/// is unavailable, a minimal header section is made from the envelope.
pub fn dsn(
    hostname: &str,
    id: QueueId,
    record: &MessageRecord,
    failed: &[(String, Cause)],
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
        .map(|(address, cause)| DsnRecipient {
            address: address.clone(),
            action: DsnAction::Failed,
            status: cause.status().to_string(),
            remote_mta: cause.remote_mta().map(str::to_string),
            diagnostic: Some(cause.diagnostic()),
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
            body: BodyType::Unspecified,
            smtputf8: false,
        },
        recipients: vec![record.envelope.sender.clone()],
        body: body.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use amtp_proto::Reply;
    use amtp_proto::client::{PeerReply, Stage};
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
                body: BodyType::Unspecified,
                smtputf8: false,
            },
            recipients: vec![RecipientStatus {
                address: "bob@remote.test".into(),
                state: RecipientState::Pending,
                last_reply: None,
                status: None,
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
            Cause::PeerReply(PeerReply {
                host: "mx.remote.test".into(),
                reply: Reply::new(550, "5.1.1", "no such user"),
                stage: Stage::Rcpt,
            }),
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
        let text = String::from_utf8(m.body.to_vec()).unwrap();
        assert!(
            text.contains(
                "Status: 5.1.1\r\nRemote-MTA: dns; mx.remote.test\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n"
            ),
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
    }

    /// Per cause: the DSN's Status, Remote-MTA and Diagnostic-Code. A peer's refusal at EHLO
    /// keeps its 5.7.1; decisions of the relay itself are never reported as `smtp; 550`.
    #[test]
    fn dsn_fields_per_cause() {
        let st = |s: &str| amtp_proto::EnhancedStatus::parse(s).unwrap();
        let ehlo = Cause::PeerReply(PeerReply {
            host: "amtp.peer.test".into(),
            reply: Reply::new(504, "5.7.1", "client certificate not trusted"),
            stage: Stage::Ehlo,
        });
        let cases: Vec<(Cause, &str)> = vec![
            (
                ehlo.clone(),
                "Status: 5.7.1\r\nRemote-MTA: dns; amtp.peer.test\r\nDiagnostic-Code: smtp; 504 5.7.1 client certificate not trusted\r\n",
            ),
            (
                Cause::NoRoute {
                    status: st("5.4.4"),
                    detail: "gone.test has no _amtp._tcp SRV record (SMTP fallback disabled)"
                        .into(),
                },
                "Status: 5.4.4\r\nDiagnostic-Code: X-AMTP-Relay; gone.test has no _amtp._tcp SRV record (SMTP fallback disabled)\r\n",
            ),
            (
                Cause::PeerPolicy {
                    host: "amtp.peer.test".into(),
                    mpc: "com/optin".into(),
                },
                "Status: 5.7.1\r\nRemote-MTA: dns; amtp.peer.test\r\nDiagnostic-Code: X-AMTP-Relay; MPC com/optin is denied by the published policy of amtp.peer.test\r\n",
            ),
            (
                Cause::MissingMpc,
                "Status: 5.7.1\r\nDiagnostic-Code: X-AMTP-Relay; the next hop is AMTP and the message has no MPC\r\n",
            ),
            (
                Cause::Expired(Box::new(Cause::Connect("mx (127.0.0.1:9): refused".into()))),
                "Status: 4.4.7\r\nDiagnostic-Code: X-AMTP-Relay; delivery time expired; last error: cannot connect: mx (127.0.0.1:9): refused\r\n",
            ),
        ];
        for (cause, fields) in cases {
            let m = dsn(
                "relay.test",
                QueueId(7),
                &record("alice@src.test", Origin::Submission),
                &[("bob@remote.test".to_string(), cause.clone())],
                b"Subject: x\r\n\r\nbody\r\n",
                100,
            )
            .unwrap();
            let text = String::from_utf8(m.body.to_vec()).unwrap();
            assert!(
                text.contains(&format!("Action: failed\r\n{fields}")),
                "{cause:?}:\n{text}"
            );
            assert!(!text.contains("smtp; 550"), "{text}");
        }
    }
}
