//! Layer 2: session dialogues. First the pure state machine (command in, replies out), then
//! the driver over an in-memory pipe with stand-in policy and queue actors.

use super::driver::{self, Outcome, SessionDeps};
use super::stream::MaybeTls;
use super::*;
use crate::config::{ListenerRole, SessionConfig};
use crate::messages::{AuthOutcome, Authenticate, Enqueue, EnqueueError};
use crate::units::{ByteSize, HumanDuration};
use actix::prelude::*;
use amtp_proto::command::parse;
use base64::Engine;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn listener(role: ListenerRole) -> Arc<ListenerConfig> {
    Arc::new(ListenerConfig {
        name: role.as_str().into(),
        role,
        address: "127.0.0.1:0".parse().unwrap(),
        max_connections: 10,
        max_connections_per_ip: 10,
        auth: None,
        cram_md5: true,
        allow_insecure_auth: false,
        default_mpc: None,
        proxy_protocol: false,
        proxy_trusted: Vec::new(),
        proxy_header_timeout: crate::units::HumanDuration(std::time::Duration::from_secs(5)),
    })
}

fn ctx(role: ListenerRole, limits: SessionConfig) -> SessionContext {
    SessionContext {
        hostname: Arc::from("relay.test"),
        listener: listener(role),
        limits: Arc::new(limits),
        local_domains: Arc::new(["example.test".to_string()].into_iter().collect()),
        peer: "127.0.0.5:40000".parse().unwrap(),
        tls_available: true,
        cram_md5: true,
        nonce: "abc".into(),
        amtp: None,
        user_mpcs: Arc::new(
            [("bob".to_string(), "com/customer".parse().unwrap())]
                .into_iter()
                .collect(),
        ),
    }
}

fn tls() -> TlsInfo {
    TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
    }
}

/// Feed lines; return every reply code, in order, and the last actions' kinds.
fn codes(session: &mut Session, lines: &[&str]) -> Vec<u16> {
    let mut out = Vec::new();
    for line in lines {
        let actions = if session.expects_sasl_line() {
            session.on_sasl_line(line.as_bytes())
        } else {
            session.on_command(parse(line.as_bytes()))
        };
        for a in actions {
            match a {
                Action::Reply(r) => out.push(r.code),
                Action::Verify(Credentials::Password { user, password }) => {
                    let outcome = if user == "alice" && password == "pw" {
                        AuthOutcome::Success(user)
                    } else {
                        AuthOutcome::Failed
                    };
                    out.extend(
                        session
                            .on_auth_outcome(outcome)
                            .into_iter()
                            .filter_map(|a| {
                                if let Action::Reply(r) = a {
                                    Some(r.code)
                                } else {
                                    None
                                }
                            }),
                    );
                }
                _ => {}
            }
        }
    }
    out
}

#[test]
fn mx_dialogues() {
    let cases: &[(&[&str], &[u16])] = &[
        (
            &[
                "EHLO c.test",
                "MAIL FROM:<a@b.test>",
                "RCPT TO:<u@example.test>",
                "DATA",
            ],
            &[250, 250, 250, 354],
        ),
        (
            &[
                "EHLO c.test",
                "MAIL FROM:<a@b.test>",
                "RCPT TO:<u@elsewhere.test>",
            ],
            &[250, 250, 550],
        ),
        (
            &[
                "EHLO c.test",
                "MAIL FROM:<a@b.test>",
                "RCPT TO:<Postmaster>",
            ],
            &[250, 250, 250],
        ),
        (
            &[
                "EHLO c.test",
                "MAIL FROM:<a@b.test>",
                "RCPT TO:<u@EXAMPLE.test.>",
            ],
            &[250, 250, 250],
        ),
        (&["MAIL FROM:<a@b.test>"], &[503]),
        (&["EHLO c.test", "RCPT TO:<u@example.test>"], &[250, 503]),
        (
            &[
                "EHLO c.test",
                "MAIL FROM:<a@b.test>",
                "MAIL FROM:<a@b.test>",
            ],
            &[250, 250, 503],
        ),
        (
            &["EHLO c.test", "MAIL FROM:<a@b.test>", "DATA"],
            &[250, 250, 554],
        ),
        (&["EHLO c.test", "DATA"], &[250, 503]),
        (
            &["EHLO c.test", "MAIL FROM:<a@b.test> SIZE=999999999"],
            &[250, 552],
        ),
        (
            &[
                "EHLO c.test",
                "MAIL FROM:<a@b.test>",
                "RSET",
                "MAIL FROM:<a@b.test>",
            ],
            &[250, 250, 250, 250],
        ),
        (
            &[
                "HELO c.test",
                "MAIL FROM:<a@b.test>",
                "RCPT TO:<u@example.test>",
            ],
            &[250, 250, 250],
        ),
        (&["EHLO c.test", "AUTH PLAIN"], &[250, 502]),
        (&["NOOP", "VRFY bob", "HELP", "QUIT"], &[250, 252, 214, 221]),
        (&["EHLO c.test", "STARTTLS"], &[250, 220]),
        (
            &["EHLO c.test", "MAIL FROM:<a@b.test>", "STARTTLS"],
            &[250, 250, 503],
        ),
    ];
    for (lines, expected) in cases {
        let mut s = Session::new(
            ctx(
                ListenerRole::Mx,
                SessionConfig {
                    max_message_size: ByteSize(1000),
                    ..SessionConfig::default()
                },
            ),
            None,
        );
        assert_eq!(codes(&mut s, lines), *expected, "{lines:?}");
    }
}

#[test]
fn no_queue_id_means_451_and_nothing_queued() {
    let mut s = Session::new(ctx(ListenerRole::Mx, SessionConfig::default()), None);
    let lines = [
        "EHLO c.test",
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<u@example.test>",
        "DATA",
    ];
    assert_eq!(codes(&mut s, &lines), vec![250, 250, 250, 354]);
    let actions = s.on_data(Ok(b"Subject: x\r\n\r\nx\r\n".to_vec()), 0, None);
    let [Action::Reply(r)] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!((r.code, s.rejected), (451, 1));
    assert!(matches!(s.phase(), Phase::Ready(_)), "{:?}", s.phase());
}

#[test]
fn recipient_limit_is_452() {
    let mut s = Session::new(
        ctx(
            ListenerRole::Mx,
            SessionConfig {
                max_recipients: 2,
                ..SessionConfig::default()
            },
        ),
        None,
    );
    let lines = [
        "EHLO c.test",
        "MAIL FROM:<a@b.test>",
        "RCPT TO:<u@example.test>",
        "RCPT TO:<v@example.test>",
        "RCPT TO:<w@example.test>",
        "DATA",
    ];
    assert_eq!(codes(&mut s, &lines), vec![250, 250, 250, 250, 452, 354]);
    let Phase::Data(_, tx) = s.phase() else {
        panic!("{:?}", s.phase())
    };
    assert_eq!(
        tx.recipients,
        vec!["u@example.test".to_string(), "v@example.test".to_string()]
    );
}

#[test]
fn submission_dialogues() {
    let plain = |u: &str, p: &str| {
        format!(
            "AUTH PLAIN {}",
            base64::engine::general_purpose::STANDARD.encode(format!("\0{u}\0{p}"))
        )
    };
    let ok = plain("alice", "pw");
    let bad = plain("alice", "nope");
    let ok_s: &str = &ok;
    let bad_s: &str = &bad;
    // Before TLS.
    let cases: &[(&[&str], &[u16])] = &[
        (&["EHLO c.test", ok_s], &[250, 530]),
        (&["EHLO c.test", "MAIL FROM:<a@b.test>"], &[250, 530]),
    ];
    for (lines, expected) in cases {
        let mut s = Session::new(
            ctx(ListenerRole::Submission, SessionConfig::default()),
            None,
        );
        assert_eq!(codes(&mut s, lines), *expected, "plain {lines:?}");
    }
    // After TLS.
    let cases: &[(&[&str], &[u16])] = &[
        (&["EHLO c.test", "MAIL FROM:<a@b.test>"], &[250, 530]),
        (
            &[
                "EHLO c.test",
                ok_s,
                "MAIL FROM:<a@b.test>",
                "RCPT TO:<x@remote.test>",
            ],
            &[250, 235, 250, 250],
        ),
        (
            &["EHLO c.test", bad_s, "MAIL FROM:<a@b.test>"],
            &[250, 535, 530],
        ),
        (&["EHLO c.test", ok_s, ok_s], &[250, 235, 503]),
        (&["AUTH PLAIN"], &[503]),
        (&["EHLO c.test", "AUTH PLAIN", "*"], &[250, 334, 501]),
        (&["EHLO c.test", "AUTH PLAIN", "@@@"], &[250, 334, 501]),
        (&["EHLO c.test", "AUTH XOAUTH2"], &[250, 504]),
        (
            &["EHLO c.test", "AUTH LOGIN", "YWxpY2U=", "cHc="],
            &[250, 334, 334, 235],
        ),
        (&["EHLO c.test", "STARTTLS"], &[250, 503]),
    ];
    for (lines, expected) in cases {
        let mut s = Session::new(
            ctx(ListenerRole::Submission, SessionConfig::default()),
            Some(tls()),
        );
        assert_eq!(codes(&mut s, lines), *expected, "tls {lines:?}");
    }
}

#[test]
fn ehlo_advertises_what_is_allowed() {
    let ehlo = |role, tls: Option<TlsInfo>| {
        let mut s = Session::new(ctx(role, SessionConfig::default()), tls);
        let Action::Reply(r) = s.on_command(parse(b"EHLO c.test")).remove(0) else {
            panic!()
        };
        r.lines
    };
    let plain = ehlo(ListenerRole::Submission, None);
    assert!(plain.contains(&"STARTTLS".to_string()));
    assert!(
        !plain.iter().any(|l| l.starts_with("AUTH")),
        "no AUTH before TLS: {plain:?}"
    );
    let secure = ehlo(ListenerRole::Submission, Some(tls()));
    assert!(!secure.contains(&"STARTTLS".to_string()));
    assert!(
        secure.contains(&"AUTH PLAIN LOGIN CRAM-MD5".to_string()),
        "{secure:?}"
    );
    for kw in [
        "PIPELINING",
        "SIZE 25000000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
    ] {
        assert!(secure.contains(&kw.to_string()), "{kw} in {secure:?}");
    }
    assert!(
        !ehlo(ListenerRole::Mx, Some(tls()))
            .iter()
            .any(|l| l.starts_with("AUTH"))
    );
}

#[test]
fn consecutive_errors_close_the_session() {
    let mut s = Session::new(
        ctx(
            ListenerRole::Mx,
            SessionConfig {
                max_errors: 3,
                ..SessionConfig::default()
            },
        ),
        None,
    );
    assert_eq!(
        codes(&mut s, &["JUNK", "JUNK", "NOOP", "JUNK", "JUNK"]),
        vec![500, 500, 250, 500, 500]
    );
    assert_eq!(codes(&mut s, &["JUNK"]), vec![500, 421]);
    assert!(s.is_closed());
}

/// Submitted mail gets an MPC: the client's (validated like on AMTP listeners), else the
/// user's, else the listener's default; mx validates a given MPC but adds none.
#[test]
fn submitted_mail_gets_its_mpc() {
    let login = |role: ListenerRole, default_mpc: Option<&str>, user: &str| {
        let mut c = ctx(role, SessionConfig::default());
        let mut l = (*c.listener).clone();
        l.default_mpc = default_mpc.map(Into::into);
        l.auth = Some(true);
        c.listener = Arc::new(l);
        let mut s = Session::new(c, Some(tls()));
        assert_eq!(codes(&mut s, &["EHLO c.test"]), vec![250]);
        let auth = format!(
            "AUTH PLAIN {}",
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0pw"))
        );
        let verify = s.on_command(parse(auth.as_bytes()));
        assert!(matches!(verify[..], [Action::Verify(_)]), "{verify:?}");
        let done = s.on_auth_outcome(AuthOutcome::Success(user.into()));
        assert!(matches!(&done[..], [Action::Reply(r)] if r.code == 235));
        s
    };
    let mpc_after = |s: &mut Session, mail: &str| -> (u16, Option<String>) {
        let code = codes(s, &[mail])[0];
        let mpc = match s.phase() {
            Phase::Mail(_, tx) => tx.mpc.map(|m| m.to_string()),
            _ => None,
        };
        codes(s, &["RSET"]);
        (code, mpc)
    };
    let per = Some("per/individual".to_string());
    // (listener, its default_mpc, user, MAIL line, (reply, the transaction's MPC))
    type Case<'a> = (
        ListenerRole,
        Option<&'a str>,
        &'a str,
        &'a str,
        (u16, Option<String>),
    );
    let cases: &[Case] = &[
        // No MPC= from the client: the listener's natural default.
        (
            ListenerRole::Submission,
            None,
            "alice",
            "MAIL FROM:<a@b.test>",
            (250, per.clone()),
        ),
        (
            ListenerRole::Submissions,
            None,
            "alice",
            "MAIL FROM:<a@b.test>",
            (250, per.clone()),
        ),
        // A configured default, and a user's own code before it.
        (
            ListenerRole::Submission,
            Some("com/customer"),
            "alice",
            "MAIL FROM:<a@b.test>",
            (250, Some("com/customer".into())),
        ),
        (
            ListenerRole::Submission,
            None,
            "bob",
            "MAIL FROM:<a@b.test>",
            (250, Some("com/customer".into())),
        ),
        // The client's own, if defined.
        (
            ListenerRole::Submission,
            None,
            "bob",
            "MAIL FROM:<a@b.test> MPC=com/optin",
            (250, Some("com/optin".into())),
        ),
        // Undefined and malformed codes are refused, as on AMTP listeners.
        (
            ListenerRole::Submission,
            None,
            "alice",
            "MAIL FROM:<a@b.test> MPC=foo/bar",
            (550, None),
        ),
        (
            ListenerRole::Submission,
            None,
            "alice",
            "MAIL FROM:<a@b.test> MPC=per/bogus",
            (550, None),
        ),
        (
            ListenerRole::Submission,
            None,
            "alice",
            "MAIL FROM:<a@b.test> MPC=foo",
            (501, None),
        ),
        // mx: no default, but the same validation.
        (
            ListenerRole::Mx,
            None,
            "alice",
            "MAIL FROM:<a@b.test>",
            (250, None),
        ),
        (
            ListenerRole::Mx,
            None,
            "alice",
            "MAIL FROM:<a@b.test> MPC=foo/bar",
            (550, None),
        ),
        (
            ListenerRole::Mx,
            Some("net/autoresponse"),
            "alice",
            "MAIL FROM:<a@b.test>",
            (250, Some("net/autoresponse".into())),
        ),
    ];
    for (role, default_mpc, user, mail, expected) in cases {
        let mut s = login(*role, *default_mpc, user);
        assert_eq!(
            &mpc_after(&mut s, mail),
            expected,
            "{role:?} default {default_mpc:?} user {user}: {mail}"
        );
    }
    // The code chosen is what the queue stores (and delivery uses).
    let mut s = login(ListenerRole::Submission, None, "alice");
    assert_eq!(
        codes(
            &mut s,
            &["MAIL FROM:<a@b.test>", "RCPT TO:<x@remote.test>", "DATA"]
        ),
        vec![250, 250, 354]
    );
    let actions = s.on_data(
        Ok(b"Subject: x\r\n\r\nhi\r\n".to_vec()),
        0,
        Some(QueueId(1)),
    );
    let Some(Action::Enqueue(message)) = actions.first() else {
        panic!("{actions:?}")
    };
    assert_eq!(message.envelope.mpc.as_deref(), Some("per/individual"));
}

#[test]
fn temporary_refusals_count_toward_max_errors() {
    let mut c = ctx(
        ListenerRole::Mx,
        SessionConfig {
            max_errors: 3,
            ..SessionConfig::default()
        },
    );
    c.tls_available = false;
    let mut s = Session::new(c, None);
    assert_eq!(
        codes(
            &mut s,
            &["EHLO c.test", "STARTTLS", "STARTTLS", "NOOP", "STARTTLS"]
        ),
        vec![250, 454, 454, 250, 454]
    );
    assert_eq!(
        codes(&mut s, &["STARTTLS", "STARTTLS"]),
        vec![454, 454, 421]
    );
    assert!(s.is_closed());
}

#[test]
fn endless_452_for_recipients_ends_the_session_after_the_overshoot() {
    let mut s = Session::new(
        ctx(
            ListenerRole::Mx,
            SessionConfig {
                max_recipients: 1,
                max_errors: 3,
                ..SessionConfig::default()
            },
        ),
        None,
    );
    assert_eq!(
        codes(
            &mut s,
            &[
                "EHLO c.test",
                "MAIL FROM:<a@b.test>",
                "RCPT TO:<u@example.test>"
            ]
        ),
        vec![250, 250, 250]
    );
    // A pipelining client that sent more recipients than we take still gets to DATA…
    let over = vec!["RCPT TO:<v@example.test>"; RECIPIENT_OVERSHOOT];
    assert!(codes(&mut s, &over).iter().all(|&c| c == 452));
    assert!(!s.is_closed());
    // …but one that never stops is an error like any other.
    assert_eq!(
        codes(&mut s, &over[..3]),
        vec![452, 452, 452, 421],
        "452 after the overshoot counts toward max_errors"
    );
    assert!(s.is_closed());
}

#[test]
fn received_header_and_envelope() {
    let mut s = Session::new(
        ctx(
            ListenerRole::Submission,
            SessionConfig {
                received_auth_user: false,
                ..SessionConfig::default()
            },
        ),
        Some(tls()),
    );
    codes(
        &mut s,
        &[
            "EHLO c.test",
            &format!(
                "AUTH PLAIN {}",
                base64::engine::general_purpose::STANDARD.encode("\0alice\0pw")
            ),
            "MAIL FROM:<a@b.test> MPC=com/optin",
            "RCPT TO:<x@remote.test>",
            "DATA",
        ],
    );
    let actions = s.on_data(
        Ok(b"Message-ID: <m1@b.test>\r\nSubject: t\r\n\r\nhello\r\n".to_vec()),
        0,
        Some(QueueId(0x1234)),
    );
    let [Action::Enqueue(m)] = &actions[..] else {
        panic!("{actions:?}")
    };
    let text = String::from_utf8_lossy(&m.body);
    assert!(text.starts_with("Received: from c.test ([127.0.0.5])\r\n\tby relay.test (amtp-relay) with ESMTPSA\r\n\t(version=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256)"), "{text}");
    assert!(
        text.contains("\r\n\tid 0000000000001234"),
        "the Received id is the queue id: {text}"
    );
    assert_eq!(m.id, Some(QueueId(0x1234)), "the message carries its id");
    assert!(
        !text.contains("alice"),
        "user not revealed unless configured"
    );
    assert!(text.ends_with("Message-ID: <m1@b.test>\r\nSubject: t\r\n\r\nhello\r\n"));
    assert_eq!(
        (
            m.envelope.sender.as_str(),
            m.recipients.clone(),
            m.envelope.mpc.as_deref(),
            m.envelope.message_id.as_deref()
        ),
        (
            "a@b.test",
            vec!["x@remote.test".to_string()],
            Some("com/optin"),
            Some("<m1@b.test>")
        )
    );
    assert_eq!(m.envelope.origin, Origin::Submission);
    assert_eq!(codes(&mut s, &[]), Vec::<u16>::new());
    let r = s.on_enqueued(Ok(QueueId(0xab)));
    assert!(
        matches!(&r[0], Action::Reply(r) if r.code == 250 && r.text().contains("00000000000000ab"))
    );
    let r = s.on_enqueued(Err(EnqueueError::Busy));
    assert!(matches!(&r[0], Action::Reply(r) if r.code == 451));
}

/// RFC 6531 §3.4: a non-ASCII address in MAIL or RCPT needs the SMTPUTF8 parameter on MAIL;
/// without it the answer is 553 5.6.7 and the session goes on.
#[test]
fn non_ascii_addresses_need_smtputf8() {
    let cases: &[(&[&str], &[u16])] = &[
        (
            &["EHLO c.test", "MAIL FROM:<j\u{f6}rg@b.test>"],
            &[250, 553],
        ),
        (
            &["EHLO c.test", "MAIL FROM:<j\u{f6}rg@b.test> SMTPUTF8"],
            &[250, 250],
        ),
        (
            &[
                "EHLO c.test",
                "MAIL FROM:<a@b.test>",
                "RCPT TO:<j\u{f6}rg@example.test>",
                "RCPT TO:<u@example.test>",
            ],
            &[250, 250, 553, 250],
        ),
        (
            &[
                "EHLO c.test",
                "MAIL FROM:<a@b.test> SMTPUTF8",
                "RCPT TO:<j\u{f6}rg@example.test>",
            ],
            &[250, 250, 250],
        ),
    ];
    for (lines, expected) in cases {
        let mut s = Session::new(ctx(ListenerRole::Mx, SessionConfig::default()), None);
        assert_eq!(codes(&mut s, lines), *expected, "{lines:?}");
    }
    let mut s = Session::new(ctx(ListenerRole::Mx, SessionConfig::default()), None);
    codes(&mut s, &["EHLO c.test"]);
    let r = s.on_command(parse("MAIL FROM:<j\u{f6}rg@b.test>".as_bytes()));
    assert!(
        matches!(&r[0], Action::Reply(r) if r.status.map(|s| s.to_string()).as_deref() == Some("5.6.7")),
        "{r:?}"
    );
}

/// The body type and SMTPUTF8 flag reach the queue; SMTPUTF8 mail is `UTF8SMTPS` in our
/// Received header (RFC 6531 §3.7.3), other mail keeps `ESMTPS`.
#[test]
fn body_type_and_smtputf8_are_stored_and_marked() {
    for (mail, with, body, utf8) in [
        (
            "MAIL FROM:<a@b.test> BODY=8BITMIME SMTPUTF8",
            "with UTF8SMTPS\r\n",
            BodyType::EightBitMime,
            true,
        ),
        (
            "MAIL FROM:<a@b.test> BODY=7BIT",
            "with ESMTPS\r\n",
            BodyType::SevenBit,
            false,
        ),
        (
            "MAIL FROM:<a@b.test>",
            "with ESMTPS\r\n",
            BodyType::Unspecified,
            false,
        ),
    ] {
        let mut s = Session::new(ctx(ListenerRole::Mx, SessionConfig::default()), Some(tls()));
        codes(
            &mut s,
            &["EHLO c.test", mail, "RCPT TO:<u@example.test>", "DATA"],
        );
        let actions = s.on_data(
            Ok(b"Subject: t\r\n\r\nhello\r\n".to_vec()),
            0,
            Some(QueueId(7)),
        );
        let [Action::Enqueue(m)] = &actions[..] else {
            panic!("{actions:?}")
        };
        let text = String::from_utf8_lossy(&m.body);
        assert!(text.contains(with), "{mail}: {text}");
        assert_eq!(
            (m.envelope.body, m.envelope.smtputf8),
            (body, utf8),
            "{mail}"
        );
    }
}

// ---- Driver over an in-memory pipe -------------------------------------------------------

struct FakePolicy;
impl Actor for FakePolicy {
    type Context = Context<Self>;
}
impl Handler<Authenticate> for FakePolicy {
    type Result = MessageResult<Authenticate>;
    fn handle(&mut self, msg: Authenticate, _: &mut Context<Self>) -> Self::Result {
        MessageResult(match msg.credentials {
            Credentials::Password { user, password } if user == "alice" && password == "pw" => {
                AuthOutcome::Success(user)
            }
            _ => AuthOutcome::Failed,
        })
    }
}

/// Stands in for the queue: counts enqueues and, like the real queue, answers with the id
/// allocated before the commit.
fn fake_queue(enqueued: Arc<AtomicUsize>) -> Enqueue {
    Arc::new(move |m| {
        enqueued.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::ready(
            m.id.ok_or(crate::messages::EnqueueError::Unavailable),
        ))
    })
}

/// Session dependencies over the stand-in policy and queue actors (ids from 0xabc up).
fn test_deps(enqueued: Arc<AtomicUsize>) -> SessionDeps {
    let next = Arc::new(AtomicUsize::new(0xabc));
    SessionDeps {
        policy: crate::metrics::pool::Metered {
            to: FakePolicy.start().recipient(),
            meter: crate::metrics::pool::Meter::default(),
        },
        queue: fake_queue(enqueued),
        tls: None,
        enqueue_timeout: Duration::from_secs(5),
        identity: None,
        new_id: Arc::new(move || {
            Some(QueueId(
                u64::try_from(next.fetch_add(1, Ordering::SeqCst)).unwrap(),
            ))
        }),
        lifecycle: Arc::new(crate::lifecycle::Lifecycle::new()),
    }
}

/// Run a session over a pipe, send `input` (then close our write side unless `hold_open`),
/// and return everything the server wrote plus the outcome and the number of enqueues.
async fn dialogue(
    limits: SessionConfig,
    input: Vec<u8>,
    hold_open: bool,
) -> (String, Outcome, usize) {
    let enqueued = Arc::new(AtomicUsize::new(0));
    let deps = test_deps(enqueued.clone());
    let (client, server) = tokio::io::duplex(1 << 20);
    let mut session = Session::new(ctx(ListenerRole::Mx, limits), None);
    let server_task = actix::spawn(async move {
        driver::run(
            MaybeTls::Plain(server),
            &mut session,
            &deps,
            driver::Banner::Write,
        )
        .await
    });
    let (mut rd, mut wr) = tokio::io::split(client);
    wr.write_all(&input).await.unwrap();
    if !hold_open {
        wr.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    rd.read_to_end(&mut out).await.unwrap();
    // Close our side too, so the server's lingering close ends at once.
    drop(wr);
    drop(rd);
    let outcome = server_task.await.unwrap();
    (
        String::from_utf8_lossy(&out).into_owned(),
        outcome,
        enqueued.load(Ordering::SeqCst),
    )
}

/// Run a session, send `prefix`, then trickle `trickle` one byte every `every` for at most
/// `give_up`, reading what the server says meanwhile. Returns the server's output and, if the
/// server answered `421` while the client was still trickling, its outcome (`None` when the
/// client gave up first).
async fn trickle(
    limits: SessionConfig,
    prefix: &[u8],
    trickle: &[u8],
    every: Duration,
    give_up: Duration,
) -> (String, Option<Outcome>) {
    let deps = test_deps(Arc::new(AtomicUsize::new(0)));
    let (client, server) = tokio::io::duplex(1 << 20);
    let mut session = Session::new(ctx(ListenerRole::Mx, limits), None);
    let server_task = actix::spawn(async move {
        driver::run(
            MaybeTls::Plain(server),
            &mut session,
            &deps,
            driver::Banner::Write,
        )
        .await
    });
    let (mut rd, mut wr) = tokio::io::split(client);
    wr.write_all(prefix).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let mut cut_off = false;
    for byte in trickle.iter().cycle() {
        if String::from_utf8_lossy(&out).contains("421 ") {
            cut_off = true;
            break;
        }
        if started.elapsed() > give_up {
            break;
        }
        if wr.write_all(&[*byte]).await.is_err() {
            break;
        }
        if let Ok(Ok(n)) = tokio::time::timeout(every, rd.read(&mut buf)).await {
            out.extend_from_slice(&buf[..n]);
        }
    }
    if !cut_off {
        server_task.abort();
        return (String::from_utf8_lossy(&out).into_owned(), None);
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut out)).await;
    // Both halves gone: the server's lingering close sees the end at once.
    drop(wr);
    drop(rd);
    let outcome = server_task.await.unwrap();
    (String::from_utf8_lossy(&out).into_owned(), Some(outcome))
}

/// `amtp_slow_clients_total` for the test listener and `deadline` (metrics on).
fn slow_clients(deadline: &str) -> u64 {
    let m = crate::metrics::enable();
    m.slow_clients
        .with_label_values(&[
            ctx(ListenerRole::Mx, SessionConfig::default())
                .listener
                .name
                .as_str(),
            deadline,
        ])
        .get()
}

#[actix_rt::test]
async fn a_command_line_trickled_byte_by_byte_meets_its_deadline() {
    let before = slow_clients("command_line");
    // Every byte arrives well within any per-read timeout; the line never ends.
    let limits = SessionConfig {
        command_timeout: HumanDuration(Duration::from_millis(400)),
        ..SessionConfig::default()
    };
    let (wire, outcome) = trickle(
        limits,
        b"EHLO c.test\r\n",
        b"NOOP ",
        Duration::from_millis(50),
        Duration::from_secs(6),
    )
    .await;
    assert_eq!(reply_codes(&wire), ["220", "250", "421"], "{wire}");
    assert!(wire.contains("421 4.4.2"), "{wire}");
    assert_eq!(outcome, Some(Outcome::Timeout));
    assert!(slow_clients("command_line") > before, "counted");
}

#[actix_rt::test]
async fn data_below_the_minimum_rate_meets_its_deadline() {
    let before = slow_clients("data_rate");
    // 20 bytes a second against a minimum of 100: each read comes far inside data_timeout.
    let limits = SessionConfig {
        data_timeout: HumanDuration(Duration::from_millis(500)),
        min_data_rate: 100,
        ..SessionConfig::default()
    };
    let (wire, outcome) = trickle(
        limits,
        b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n",
        b"x",
        Duration::from_millis(50),
        Duration::from_secs(6),
    )
    .await;
    assert_eq!(
        reply_codes(&wire),
        ["220", "250", "250", "250", "354", "421"],
        "{wire}"
    );
    assert!(wire.contains("421 4.4.2"), "{wire}");
    assert_eq!(outcome, Some(Outcome::Timeout));
    assert!(slow_clients("data_rate") > before, "counted");
}

#[actix_rt::test]
async fn data_at_the_minimum_rate_is_not_cut_off() {
    // A fast transfer with a tiny minimum: the deadline grows with what arrives.
    let limits = SessionConfig {
        data_timeout: HumanDuration(Duration::from_millis(300)),
        min_data_rate: 1,
        ..SessionConfig::default()
    };
    let mut input =
        b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(b"Subject: ok\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    let (wire, outcome, n) = dialogue(limits, input, false).await;
    assert_eq!(
        reply_codes(&wire),
        ["220", "250", "250", "250", "354", "250", "221"],
        "{wire}"
    );
    assert_eq!((outcome, n), (Outcome::Closed, 1));
}

fn reply_codes(wire: &str) -> Vec<&str> {
    wire.lines()
        .filter(|l| l.len() >= 4 && &l[3..4] == " ")
        .map(|l| &l[..3])
        .collect()
}

#[actix_rt::test]
async fn pipelined_transaction_is_answered_in_order() {
    let input = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@example.test>\r\nRCPT TO:<v@example.test>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n".to_vec();
    let (wire, outcome, n) = dialogue(SessionConfig::default(), input, false).await;
    assert_eq!(
        reply_codes(&wire),
        ["220", "250", "250", "250", "250", "354", "250", "221"],
        "{wire}"
    );
    assert_eq!((outcome, n), (Outcome::Closed, 1));
}

#[actix_rt::test]
async fn smuggling_is_refused_and_smuggled_commands_are_not_run() {
    let input = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\nhi\n.\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nevil\r\n.\r\nQUIT\r\n".to_vec();
    let (wire, _, n) = dialogue(SessionConfig::default(), input, false).await;
    assert_eq!(
        reply_codes(&wire),
        ["220", "250", "250", "250", "354", "554", "221"],
        "{wire}"
    );
    assert_eq!(n, 0, "nothing queued");
}

#[actix_rt::test]
async fn junk_flood_ends_with_421() {
    let input = b"JUNK\r\n".repeat(1000);
    let (wire, outcome, _) = dialogue(
        SessionConfig {
            max_errors: 10,
            ..SessionConfig::default()
        },
        input,
        false,
    )
    .await;
    let codes = reply_codes(&wire);
    assert_eq!(codes.len(), 12, "{wire}");
    assert!(codes[1..11].iter().all(|c| *c == "500"));
    assert_eq!(codes[11], "421");
    assert_eq!(outcome, Outcome::Closed);
}

#[actix_rt::test]
async fn silent_client_times_out_with_421() {
    let limits = SessionConfig {
        command_timeout: HumanDuration(Duration::from_millis(200)),
        ..SessionConfig::default()
    };
    let (wire, outcome, _) = dialogue(limits, b"EHLO c.test\r\n".to_vec(), true).await;
    assert_eq!(reply_codes(&wire), ["220", "250", "421"], "{wire}");
    assert!(wire.contains("421 4.4.2"));
    assert_eq!(outcome, Outcome::Timeout);
}

#[actix_rt::test]
async fn disconnect_mid_data_queues_nothing() {
    let input = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\nSubject: half\r\n".to_vec();
    let (wire, outcome, n) = dialogue(SessionConfig::default(), input, false).await;
    assert_eq!(reply_codes(&wire), ["220", "250", "250", "250", "354"]);
    assert_eq!((outcome, n), (Outcome::DisconnectedInData, 0));
}

#[actix_rt::test]
async fn over_long_lines_are_refused_and_the_session_continues() {
    let mut input = format!("NOOP {}\r\n", "x".repeat(600)).into_bytes();
    input.extend_from_slice(format!("{}\r\n", "y".repeat(20_000)).as_bytes());
    input.extend_from_slice(b"NO\0OP\r\nNOOP\r\nQUIT\r\n");
    let (wire, _, _) = dialogue(SessionConfig::default(), input, false).await;
    assert_eq!(
        reply_codes(&wire),
        ["220", "500", "500", "500", "250", "221"],
        "{wire}"
    );
    assert!(wire.contains("Line too long"));
    assert!(wire.contains("NUL character"));
}

mod tls_writes;
