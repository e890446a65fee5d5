//! What one attempt's outcomes mean for a message, as a pure decision: each recipient's new
//! state (with the status and description stored in the record), which recipients are bounced
//! (and why — the DSN is made from these causes), and when the message is tried again.
//!
//! The rules: delivered → done; failed → bounced; deferred → pending and retried per the
//! [`RetryPolicy`], or — once the message has outlived its lifetime — bounced as expired with
//! the last cause kept (`4.4.7`). A local configuration error defers like any temporary cause:
//! the operator fixes it, the mail waits.

use super::schedule::{Next, RetryPolicy};
use amtp_proto::client::{Cause, Disposition};
use amtp_storage::{MessageRecord, RecipientState, RecipientStatus};

/// One recipient's outcome in one attempt, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempted {
    /// The recipient.
    pub address: String,
    /// The destination that tried it (`-` when none did).
    pub hop: String,
    /// The next hop (host and address) that gave the outcome, when one was connected to
    /// (for the per-message log).
    pub next_hop: Option<crate::messages::NextHop>,
    /// What happened.
    pub disposition: Disposition,
}

/// What became of a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered; removed from the message.
    Delivered,
    /// Deferred; tried again later.
    Deferred,
    /// Failed permanently; a DSN is sent.
    Bounced,
    /// Deferred past the message's lifetime; a DSN is sent.
    Expired,
}

impl Verdict {
    /// For logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Deferred => "deferred",
            Self::Bounced => "bounced",
            Self::Expired => "expired",
        }
    }
}

/// One recipient's final word for this attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    /// What was reported.
    pub attempted: Attempted,
    /// What it means.
    pub verdict: Verdict,
}

/// Everything to write for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Per recipient, in the order reported.
    pub outcomes: Vec<RecipientOutcome>,
    /// The record updates (state, description, status).
    pub states: Vec<RecipientStatus>,
    /// Recipients to report in a DSN, with their causes.
    pub bounce: Vec<(String, Cause)>,
    /// When to try the recipients still pending (ms since epoch), if any remain.
    pub retry_at: u64,
}

/// Decide what the attempt's `attempted` outcomes mean for `record` at `now` (ms).
pub fn decide(
    record: &MessageRecord,
    attempted: Vec<Attempted>,
    retry: &RetryPolicy,
    now: u64,
) -> Decision {
    let deferred = attempted
        .iter()
        .any(|a| matches!(a.disposition, Disposition::Deferred(_)));
    let next = deferred.then(|| retry.next(record.received_at, record.attempts + 1, now));
    let expired = next == Some(Next::Expire);
    let retry_at = match next {
        Some(Next::RetryAt(t)) => t,
        _ => now,
    };
    let mut outcomes = Vec::with_capacity(attempted.len());
    let mut states = Vec::with_capacity(attempted.len());
    let mut bounce = Vec::new();
    for a in attempted {
        let (verdict, state) = match &a.disposition {
            Disposition::Delivered(_) => (Verdict::Delivered, RecipientState::Delivered),
            Disposition::Failed(c) => {
                bounce.push((a.address.clone(), c.clone()));
                (Verdict::Bounced, RecipientState::Failed)
            }
            Disposition::Deferred(c) if expired => {
                bounce.push((a.address.clone(), Cause::Expired(Box::new(c.clone()))));
                (Verdict::Expired, RecipientState::Failed)
            }
            Disposition::Deferred(_) => (Verdict::Deferred, RecipientState::Pending),
        };
        let (last_reply, status) = match (verdict, a.disposition.cause()) {
            (Verdict::Expired, Some(c)) => {
                let e = Cause::Expired(Box::new(c.clone()));
                (e.to_string(), e.status())
            }
            _ => (a.disposition.to_string(), a.disposition.status()),
        };
        states.push(RecipientStatus {
            address: a.address.clone(),
            state,
            last_reply: Some(last_reply),
            status: Some(status.to_string()),
        });
        outcomes.push(RecipientOutcome {
            attempted: a,
            verdict,
        });
    }
    Decision {
        outcomes,
        states,
        bounce,
        retry_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amtp_proto::Reply;
    use amtp_proto::client::{PeerReply, Stage};
    use amtp_storage::{BodyType, Envelope, Origin};
    use std::time::Duration;

    const HOUR: u64 = 3_600_000;

    fn record(attempts: u32) -> MessageRecord {
        MessageRecord {
            received_at: 0,
            envelope: Envelope {
                sender: "a@src.test".into(),
                mpc: Some("per/individual".into()),
                origin: Origin::Submission,
                listener: "submission".into(),
                client_ip: "127.0.0.1".into(),
                auth_user: None,
                message_id: None,
                body: BodyType::Unspecified,
                smtputf8: false,
            },
            recipients: Vec::new(),
            size: 1,
            attempts,
            next_attempt: 0,
            lease_until: 0,
        }
    }

    fn retry() -> RetryPolicy {
        RetryPolicy {
            first_retry: Duration::from_secs(60),
            max_backoff: Duration::from_secs(3600),
            max_lifetime: Duration::from_secs(24 * 3600),
        }
    }

    fn peer(code: u16, st: &str) -> PeerReply {
        PeerReply {
            host: "mx.peer.test".into(),
            reply: Reply::new(code, st, "text"),
            stage: Stage::Rcpt,
        }
    }

    fn at(address: &str, disposition: Disposition) -> Attempted {
        Attempted {
            next_hop: None,
            address: address.into(),
            hop: "route:mx.peer.test:25".into(),
            disposition,
        }
    }

    /// One row per outcome kind, before and after the message's lifetime: the verdict, the
    /// stored state and status, and whether the recipient is in the DSN.
    #[test]
    fn outcome_table() {
        use Verdict::*;
        let delivered = Disposition::Delivered(peer(250, "2.0.0"));
        let refused = Disposition::Failed(Cause::PeerReply(peer(550, "5.1.1")));
        let busy = Disposition::Deferred(Cause::PeerReply(peer(451, "4.3.0")));
        let config = Disposition::Deferred(Cause::LocalConfig("no AMTP certificate".into()));
        let no_mpc = Disposition::Failed(Cause::MissingMpc);
        let young = HOUR;
        let old = 25 * HOUR;
        let cases: Vec<(&Disposition, u64, Verdict, RecipientState, &str, bool)> = vec![
            (
                &delivered,
                young,
                Delivered,
                RecipientState::Delivered,
                "2.0.0",
                false,
            ),
            (
                &refused,
                young,
                Bounced,
                RecipientState::Failed,
                "5.1.1",
                true,
            ),
            (
                &busy,
                young,
                Deferred,
                RecipientState::Pending,
                "4.3.0",
                false,
            ),
            (
                &config,
                young,
                Deferred,
                RecipientState::Pending,
                "4.3.5",
                false,
            ),
            (
                &no_mpc,
                young,
                Bounced,
                RecipientState::Failed,
                "5.7.1",
                true,
            ),
            (
                &delivered,
                old,
                Delivered,
                RecipientState::Delivered,
                "2.0.0",
                false,
            ),
            (
                &refused,
                old,
                Bounced,
                RecipientState::Failed,
                "5.1.1",
                true,
            ),
            (&busy, old, Expired, RecipientState::Failed, "4.4.7", true),
            (&config, old, Expired, RecipientState::Failed, "4.4.7", true),
        ];
        for (i, (d, now, verdict, state, status, bounced)) in cases.into_iter().enumerate() {
            let got = decide(
                &record(3),
                vec![at("x@peer.test", d.clone())],
                &retry(),
                now,
            );
            assert_eq!(got.outcomes[0].verdict, verdict, "case {i}");
            assert_eq!(got.states[0].state, state, "case {i}");
            assert_eq!(got.states[0].status.as_deref(), Some(status), "case {i}");
            assert_eq!(got.bounce.len(), usize::from(bounced), "case {i}");
        }
    }

    #[test]
    fn mixed_attempt_retries_only_the_deferred() {
        let got = decide(
            &record(0),
            vec![
                at("a@p.test", Disposition::Delivered(peer(250, ""))),
                at(
                    "b@p.test",
                    Disposition::Deferred(Cause::Connect("refused".into())),
                ),
                at(
                    "c@p.test",
                    Disposition::Failed(Cause::PeerReply(peer(550, "5.1.1"))),
                ),
            ],
            &retry(),
            HOUR,
        );
        assert_eq!(got.retry_at, HOUR + 60_000, "first retry after first_retry");
        assert_eq!(
            got.bounce
                .iter()
                .map(|(a, c)| (a.as_str(), c.status().to_string()))
                .collect::<Vec<_>>(),
            vec![("c@p.test", "5.1.1".to_string())]
        );
        assert!(
            got.states[1]
                .last_reply
                .as_deref()
                .is_some_and(|t| t.contains("refused")),
            "{:?}",
            got.states[1]
        );
        // Expired: the DSN keeps the last cause (and its remote MTA) inside Expired.
        let got = decide(
            &record(9),
            vec![at(
                "b@p.test",
                Disposition::Deferred(Cause::PeerReply(peer(452, "4.2.2"))),
            )],
            &retry(),
            25 * HOUR,
        );
        assert!(
            matches!(&got.bounce[0].1, Cause::Expired(c) if c.remote_mta() == Some("mx.peer.test"))
        );
    }
}
