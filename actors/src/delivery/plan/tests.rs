//! Table tests for the routing decisions: the open-relay guarantee, what DNS answers mean,
//! the MPC rule, and how one message becomes jobs.

use super::*;
use crate::config::{HopProtocol, HopTls};
use crate::resolver::{MxHost, SrvTarget};
use amtp_proto::client::TlsPolicy;
use amtp_storage::{
    BodyType as StoredBody, Envelope as StoredEnvelope, RecipientState, RecipientStatus,
};

fn routes() -> HashMap<String, RouteConfig> {
    let r = RouteConfig {
        domains: vec!["local.test".into()],
        host: "store.local.test".into(),
        port: 25,
        protocol: HopProtocol::Smtp,
        tls: HopTls::None,
    };
    [("local.test".to_string(), r)].into_iter().collect()
}

fn first(_: u32) -> u32 {
    0
}

fn status_of(d: &Disposition) -> String {
    d.status().to_string()
}

/// The open-relay guarantee: for every origin, a configured (local) domain is reachable, and
/// a remote domain is reachable only for mail that did not arrive over a public connection.
/// Public AMTP and unauthenticated SMTP never get a public next hop — whatever DNS says,
/// because DNS is not even asked.
#[test]
fn open_relay_table() {
    #[derive(Debug, PartialEq)]
    enum Expect {
        Configured,
        Public,
        Refused,
    }
    use Expect::*;
    let cases = [
        (Origin::Smtp, "local.test", Configured),
        (Origin::Smtp, "remote.test", Refused),
        (Origin::AmtpPublic, "local.test", Configured),
        (Origin::AmtpPublic, "remote.test", Refused),
        (Origin::AmtpPrivate, "local.test", Configured),
        (Origin::AmtpPrivate, "remote.test", Public),
        (Origin::Submission, "local.test", Configured),
        (Origin::Submission, "remote.test", Public),
        (Origin::Local, "local.test", Configured),
        (Origin::Local, "remote.test", Public),
    ];
    let routes = routes();
    for (origin, domain, expect) in cases {
        let got = match choose(domain, origin, &routes) {
            RouteChoice::Configured(r) => {
                assert_eq!(r.host, "store.local.test");
                Configured
            }
            RouteChoice::Public => Public,
            RouteChoice::Refused(d) => {
                assert!(
                    matches!(&d, Disposition::Failed(Cause::LocalPolicy { .. })),
                    "{d:?}"
                );
                assert_eq!(status_of(&d), "5.7.1");
                Refused
            }
        };
        assert_eq!(got, expect, "{origin:?} → {domain}");
    }
}

fn srv(target: &str, port: u16) -> SrvTarget {
    SrvTarget {
        priority: 10,
        weight: 0,
        port,
        target: target.into(),
    }
}

/// What the `_amtp._tcp` SRV answer means, with and without the SMTP fallback. No cause the
/// relay decides itself is an SMTP reply; temporary DNS trouble is deferred.
#[test]
fn srv_answer_table() {
    #[derive(Debug, PartialEq)]
    enum Expect {
        Amtp(&'static str),
        TryMx,
        Deferred(&'static str),
        Failed(&'static str),
    }
    use Expect::*;
    let cases: Vec<(Result<Records, LookupError>, bool, Expect)> = vec![
        (
            Ok(Records::Srv(vec![srv("amtp.d.test", 2525)])),
            false,
            Amtp("amtp.d.test"),
        ),
        (
            Ok(Records::Srv(vec![srv("amtp.d.test", 2525)])),
            true,
            Amtp("amtp.d.test"),
        ),
        (Ok(Records::Srv(vec![srv("", 0)])), true, Failed("5.1.10")),
        (
            Err(LookupError::Temporary("SERVFAIL".into())),
            true,
            Deferred("4.4.3"),
        ),
        (
            Err(LookupError::Temporary("timeout".into())),
            false,
            Deferred("4.4.3"),
        ),
        (Err(LookupError::NxDomain), true, TryMx),
        (Err(LookupError::NoData), true, TryMx),
        (Err(LookupError::NxDomain), false, Failed("5.4.4")),
        (Err(LookupError::NoData), false, Failed("5.4.4")),
    ];
    for (i, (answer, fallback, expect)) in cases.into_iter().enumerate() {
        let got = match after_srv("d.test", answer, fallback, &mut first) {
            SrvAnswer::Amtp(h) => Amtp(if h[0].host == "amtp.d.test" {
                "amtp.d.test"
            } else {
                "?"
            }),
            SrvAnswer::TryMx => TryMx,
            SrvAnswer::Final(d @ Disposition::Deferred(_)) => {
                assert!(
                    matches!(d, Disposition::Deferred(Cause::Dns(_))),
                    "case {i}"
                );
                Deferred(if status_of(&d) == "4.4.3" {
                    "4.4.3"
                } else {
                    "?"
                })
            }
            SrvAnswer::Final(d) => {
                assert!(
                    matches!(d, Disposition::Failed(Cause::NoRoute { .. })),
                    "case {i}"
                );
                let (kind, _) = d.cause().unwrap().diagnostic();
                assert_eq!(kind, amtp_proto::outcome::DiagnosticType::Relay, "case {i}");
                Failed(match status_of(&d).as_str() {
                    "5.1.10" => "5.1.10",
                    "5.4.4" => "5.4.4",
                    _ => "?",
                })
            }
        };
        assert_eq!(got, expect, "case {i}");
    }
}

/// The MX answer (SMTP fallback): hops, the implicit MX, null MX, no such domain, DNS trouble.
#[test]
fn mx_answer_table() {
    let mx = |e: &str| MxHost {
        preference: 10,
        exchange: e.into(),
    };
    type Case = (
        Result<Records, LookupError>,
        Result<&'static str, &'static str>,
    );
    let cases: Vec<Case> = vec![
        (Ok(Records::Mx(vec![mx("mx.d.test")])), Ok("mx.d.test")),
        (Err(LookupError::NoData), Ok("d.test")),
        (Ok(Records::Mx(vec![mx("")])), Err("5.1.10")),
        (Err(LookupError::NxDomain), Err("5.1.2")),
        (Err(LookupError::Temporary("SERVFAIL".into())), Err("4.4.3")),
    ];
    for (i, (answer, expect)) in cases.into_iter().enumerate() {
        let got = after_mx("d.test", answer, 25, &mut first);
        match (got, expect) {
            (Ok(h), Ok(host)) => {
                assert_eq!((h[0].host.as_str(), h[0].port), (host, 25), "case {i}")
            }
            (Err(d), Err(status)) => assert_eq!(status_of(&d), status, "case {i}"),
            (got, expect) => panic!("case {i}: {got:?}, expected {expect:?}"),
        }
    }
    assert!(after_addresses("h.test", 2, None).is_ok());
    assert_eq!(
        status_of(&after_addresses("h.test", 0, Some("timeout".into())).unwrap_err()),
        "4.4.3"
    );
    assert_eq!(
        status_of(&after_addresses("h.test", 0, None).unwrap_err()),
        "5.4.4"
    );
}

/// Spec §6: AMTP hops carry the MPC as a parameter and need one; leaving AMTP, the MPC
/// becomes a header, and a message already carrying one is refused. A missing MPC on an AMTP
/// hop is its own cause with 5.7.1 (what an AMTP server answers), not a generic 5.0.0.
#[test]
fn mpc_rule_table() {
    type Case = (bool, Option<&'static str>, bool, Result<Wire, &'static str>);
    let cases: [Case; 7] = [
        (true, Some("per/individual"), false, Ok(Wire::AsReceived)),
        (true, Some("per/individual"), true, Ok(Wire::AsReceived)),
        (true, None, false, Err("5.7.1")),
        (
            false,
            Some("per/individual"),
            false,
            Ok(Wire::WithMpcHeader),
        ),
        (false, Some("per/individual"), true, Err("5.7.1")),
        (false, None, false, Ok(Wire::AsReceived)),
        (false, None, true, Ok(Wire::AsReceived)),
    ];
    for (i, (amtp, mpc, header, expect)) in cases.into_iter().enumerate() {
        match (mpc_rule(amtp, mpc, header), expect) {
            (Ok(w), Ok(e)) => assert_eq!(w, e, "case {i}"),
            (Err(d), Err(status)) => {
                assert!(matches!(d, Disposition::Failed(_)), "case {i}");
                assert_eq!(status_of(&d), status, "case {i}");
                if amtp {
                    assert_eq!(d.cause(), Some(&Cause::MissingMpc), "case {i}");
                }
            }
            (got, expect) => panic!("case {i}: {got:?}, expected {expect:?}"),
        }
    }
}

fn record(mpc: Option<&str>, rcpts: &[&str], body: StoredBody, smtputf8: bool) -> MessageRecord {
    MessageRecord {
        received_at: 0,
        envelope: StoredEnvelope {
            sender: "a@src.test".into(),
            mpc: mpc.map(str::to_string),
            origin: Origin::Submission,
            listener: "submission".into(),
            client_ip: "127.0.0.1".into(),
            auth_user: None,
            message_id: None,
            body,
            smtputf8,
        },
        recipients: rcpts
            .iter()
            .map(|a| RecipientStatus {
                address: a.to_string(),
                state: RecipientState::Pending,
                last_reply: None,
                status: None,
            })
            .collect(),
        size: 0,
        attempts: 0,
        next_attempt: 0,
        lease_until: 0,
    }
}

fn routed(key: &str, amtp: bool) -> Result<Routed, Disposition> {
    Ok(Routed {
        key: key.into(),
        targets: vec![HopTarget {
            host: "h.test".into(),
            // Planning only: nothing connects to it (port 0, never a well-known port).
            addr: "127.0.0.1:0".parse().unwrap(),
            amtp,
            tls: TlsPolicy::Never,
        }],
        amtp,
    })
}

/// One message, four domains: two share a destination (one job), one is AMTP (no header),
/// one was refused by routing (an immediate outcome). The `MPC:` header is prepended for
/// the SMTP job only; the body type, SMTPUTF8 flag and 8-bit content reach the client.
#[test]
fn assemble_groups_and_marks() {
    let rec = record(
        Some("per/individual"),
        &["a@one.test", "b@two.test", "c@amtp.test", "d@gone.test"],
        StoredBody::EightBitMime,
        true,
    );
    assert_eq!(
        by_domain(&rec)
            .iter()
            .map(|(d, _)| d.as_str())
            .collect::<Vec<_>>(),
        ["one.test", "two.test", "amtp.test", "gone.test"]
    );
    let body = bytes::Bytes::from_static("Subject: caf\u{e9}\r\n\r\nna\u{ef}ve\r\n".as_bytes());
    let refused = Disposition::Failed(Cause::NoRoute {
        status: EnhancedStatus::new(5, 4, 4),
        detail: "gone".into(),
    });
    let plan = assemble(
        QueueId(1),
        rec,
        body.clone(),
        vec![
            (vec!["a@one.test".into()], routed("smtp:shared", false)),
            (vec!["b@two.test".into()], routed("smtp:shared", false)),
            (vec!["c@amtp.test".into()], routed("amtp:amtp.test", true)),
            (vec!["d@gone.test".into()], Err(refused.clone())),
        ],
    );
    assert_eq!(plan.groups.len(), 2);
    let smtp = &plan.groups[0];
    assert_eq!(smtp.job.envelope.recipients, ["a@one.test", "b@two.test"]);
    assert!(
        smtp.job
            .body
            .starts_with(b"MPC: per/individual\r\nSubject:")
    );
    let amtp = &plan.groups[1];
    assert_eq!(amtp.job.body, body, "AMTP hops get the message as received");
    for g in &plan.groups {
        let e = &g.job.envelope;
        assert_eq!(
            (e.body, e.eight_bit, e.smtputf8, e.utf8_headers),
            (BodyType::EightBitMime, true, true, true)
        );
        assert_eq!(e.size, g.job.body.len() as u64);
    }
    assert_eq!(plan.immediate, vec![("d@gone.test".to_string(), refused)]);
    // Without an MPC: the AMTP recipient is refused with MissingMpc, SMTP gets no header.
    let plan = assemble(
        QueueId(2),
        record(
            None,
            &["a@one.test", "c@amtp.test"],
            StoredBody::Unspecified,
            false,
        ),
        body.clone(),
        vec![
            (vec!["a@one.test".into()], routed("smtp:one", false)),
            (vec!["c@amtp.test".into()], routed("amtp:amtp.test", true)),
        ],
    );
    assert_eq!(plan.groups.len(), 1);
    assert_eq!(plan.groups[0].job.body, body);
    assert_eq!(
        plan.immediate,
        vec![(
            "c@amtp.test".to_string(),
            Disposition::Failed(Cause::MissingMpc)
        )]
    );
}
