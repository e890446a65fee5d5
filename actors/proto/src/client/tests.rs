//! Tests of [`super`]: tables and cases, kept beside the module so it stays readable.

use super::*;

fn r(code: u16, status: &str, text: &str) -> Reply {
    Reply::new(code, status, text)
}

fn ehlo(lines: &[&str]) -> Reply {
    let mut l = vec!["peer.test".to_string()];
    l.extend(lines.iter().map(|s| s.to_string()));
    Reply::multi(250, l)
}

fn sent(out: &[Output]) -> String {
    out.iter()
        .filter_map(|o| {
            if let Output::Send(b) = o {
                Some(String::from_utf8_lossy(b).into_owned())
            } else {
                None
            }
        })
        .collect()
}

fn done(out: &[Output]) -> Vec<(String, Disposition)> {
    out.iter()
        .find_map(|o| {
            if let Output::MessageDone(d) = o {
                Some(d.clone())
            } else {
                None
            }
        })
        .expect("a finished message")
}

fn env(mpc: Option<&str>, rcpts: &[&str]) -> Envelope {
    Envelope {
        from: "a@src.test".into(),
        recipients: rcpts.iter().map(|s| s.to_string()).collect(),
        mpc: mpc.map(|m| m.parse().unwrap()),
        size: 100,
        body: BodyType::Unspecified,
        eight_bit: false,
        smtputf8: false,
        utf8_headers: false,
    }
}

fn failed(out: &[Output]) -> Cause {
    out.iter()
        .find_map(|o| match o {
            Output::Failed(c) => Some(c.clone()),
            _ => None,
        })
        .expect("a connection failure")
}

fn amtp() -> Client {
    Client::new(ClientConfig {
        ehlo_name: "relay.test".into(),
        tls: TlsPolicy::Implicit,
        amtp: true,
        peer: "peer.test".into(),
    })
}

fn smtp(tls: TlsPolicy) -> Client {
    Client::new(ClientConfig {
        ehlo_name: "relay.test".into(),
        tls,
        amtp: false,
        peer: "peer.test".into(),
    })
}

#[test]
fn pipelined_amtp_delivery_with_per_recipient_outcomes_and_reuse() {
    let mut c = amtp();
    assert_eq!(
        sent(&c.on_reply(r(220, "", "peer.test AMTP"))),
        "EHLO relay.test\r\n"
    );
    assert_eq!(
        c.on_reply(ehlo(&["PIPELINING", "SIZE 1000", "MPC DENY=com/optout"])),
        vec![Output::Ready]
    );
    let out = c.send(env(Some("per/individual"), &["x@peer.test", "y@peer.test"]));
    assert_eq!(
        sent(&out),
        "MAIL FROM:<a@src.test> SIZE=100 MPC=per/individual\r\nRCPT TO:<x@peer.test>\r\nRCPT TO:<y@peer.test>\r\nDATA\r\n"
    );
    assert!(c.on_reply(r(250, "2.1.0", "ok")).is_empty());
    assert!(c.on_reply(r(250, "2.1.5", "ok")).is_empty());
    assert!(c.on_reply(r(550, "5.1.1", "no such user")).is_empty());
    assert_eq!(c.on_reply(r(354, "", "go")), vec![Output::SendBody]);
    let out = c.on_reply(r(250, "2.0.0", "queued as 1"));
    let d = done(&out);
    assert!(matches!(&d[0], (a, Disposition::Delivered(_)) if a == "x@peer.test"));
    assert!(
        matches!(&d[1], (a, Disposition::Failed(Cause::PeerReply(p))) if a == "y@peer.test" && p.reply.code == 550 && p.stage == Stage::Rcpt && p.status().to_string() == "5.1.1")
    );
    assert_eq!(out.last(), Some(&Output::Ready));
    // Reuse: a second message on the same connection.
    let out = c.send(env(Some("per/individual"), &["z@peer.test"]));
    assert!(sent(&out).starts_with("MAIL FROM:"));
    c.on_reply(r(250, "", "ok"));
    c.on_reply(r(250, "", "ok"));
    c.on_reply(r(354, "", "go"));
    assert!(matches!(
        done(&c.on_reply(r(451, "4.3.0", "try later")))[0].1,
        Disposition::Deferred(_)
    ));
    assert_eq!(sent(&c.quit()), "QUIT\r\n");
    assert_eq!(c.on_reply(r(221, "", "bye")), vec![Output::Close]);
}

#[test]
fn peer_mpc_policy_denies_without_sending() {
    for line in ["MPC ALLOW=per/*", "MPC ALLOW per/*", "MPC-ALLOW per/*"] {
        let mut c = amtp();
        c.on_reply(r(220, "", "hi"));
        c.on_reply(ehlo(&[line]));
        let out = c.send(env(Some("com/optin"), &["x@peer.test"]));
        assert!(sent(&out).is_empty(), "{line}: nothing sent");
        assert!(
            matches!(&done(&out)[0].1, Disposition::Failed(Cause::PeerPolicy { mpc, .. }) if mpc == "com/optin"),
            "{line}"
        );
        // mpc/individual is always accepted.
        assert!(
            sent(&c.send(env(Some("mpc/individual"), &["x@peer.test"])))
                .starts_with("MAIL FROM:<a@src.test> MPC=mpc/individual")
        );
    }
}

#[test]
fn smtp_starttls_and_unpipelined_transaction() {
    let mut c = smtp(TlsPolicy::Opportunistic);
    c.on_reply(r(220, "", "hi"));
    assert_eq!(
        sent(&c.on_reply(ehlo(&["STARTTLS", "8BITMIME"]))),
        "STARTTLS\r\n"
    );
    assert_eq!(
        c.on_reply(r(220, "2.0.0", "go ahead")),
        vec![Output::StartTls]
    );
    assert_eq!(sent(&c.on_tls()), "EHLO relay.test\r\n");
    assert_eq!(c.on_reply(ehlo(&["8BITMIME"])), vec![Output::Ready]);
    assert!(c.tls_active());
    assert_eq!(
        sent(&c.send(env(None, &["x@p.test", "y@p.test"]))),
        "MAIL FROM:<a@src.test>\r\n",
        "no MPC parameter on SMTP hops"
    );
    assert_eq!(
        sent(&c.on_reply(r(250, "", "ok"))),
        "RCPT TO:<x@p.test>\r\n"
    );
    assert_eq!(
        sent(&c.on_reply(r(250, "", "ok"))),
        "RCPT TO:<y@p.test>\r\n"
    );
    assert_eq!(sent(&c.on_reply(r(250, "", "ok"))), "DATA\r\n");
    assert_eq!(c.on_reply(r(354, "", "go")), vec![Output::SendBody]);
    assert!(
        done(&c.on_reply(r(250, "", "ok")))
            .iter()
            .all(|(_, d)| matches!(d, Disposition::Delivered(_)))
    );
}

#[test]
fn connection_level_failures() {
    let mut c = smtp(TlsPolicy::Required);
    c.on_reply(r(220, "", "hi"));
    let out = c.on_reply(ehlo(&["SIZE 10"]));
    assert!(
        matches!(failed(&out), Cause::Tls(t) if t.contains("TLS is required")),
        "{out:?}"
    );
    assert_eq!(sent(&out), "QUIT\r\n");
    let mut c = smtp(TlsPolicy::Never);
    let cause = failed(&c.on_reply(r(554, "5.7.1", "go away")));
    assert!(
        matches!(&cause, Cause::PeerReply(p) if p.stage == Stage::Greeting)
            && cause.status().to_string() == "5.7.1"
    );
    let mut c = smtp(TlsPolicy::Never);
    assert_eq!(
        failed(&c.on_reply(r(421, "4.3.2", "busy"))).status().class,
        4
    );
    // EHLO refused: SMTP falls back to HELO, AMTP does not.
    let mut c = smtp(TlsPolicy::Never);
    c.on_reply(r(220, "", "hi"));
    assert_eq!(
        sent(&c.on_reply(r(502, "5.5.1", "no EHLO"))),
        "HELO relay.test\r\n"
    );
    assert_eq!(c.on_reply(r(250, "", "hello")), vec![Output::Ready]);
    let mut c = amtp();
    c.on_reply(r(220, "", "hi"));
    let out = c.on_reply(r(502, "5.5.1", "no EHLO"));
    assert_eq!(failed(&out).status().to_string(), "5.5.1");
}

/// A peer that refuses our EHLO (an AMTP peer that does not trust us says 504 5.7.1): the
/// outcome carries the peer's own status and host, and we say QUIT before closing.
#[test]
fn ehlo_refusal_keeps_the_peer_status_and_says_quit() {
    let mut c = amtp();
    c.on_reply(r(220, "", "hi"));
    let out = c.on_reply(r(504, "5.7.1", "not authorised"));
    assert_eq!(
        out.first(),
        Some(&Output::Send(b"QUIT\r\n".to_vec())),
        "{out:?}"
    );
    assert_eq!(out.last(), Some(&Output::Close));
    let cause = failed(&out);
    assert_eq!(cause.status().to_string(), "5.7.1");
    assert_eq!(cause.remote_mta(), Some("peer.test"));
    assert!(matches!(&cause, Cause::PeerReply(p) if p.stage == Stage::Ehlo && p.reply.code == 504));
}

/// RFC 6152: BODY=8BITMIME when the peer offers it; an 8-bit message declared 8BITMIME is
/// refused with 5.6.3 for a peer without 8BITMIME, sent plain when its content is 7-bit.
/// RFC 6531: SMTPUTF8 is passed on when the peer offers it.
#[test]
fn eight_bit_and_smtputf8_table() {
    struct Case {
        offer: &'static [&'static str],
        body: BodyType,
        eight_bit: bool,
        smtputf8: bool,
        expect: Result<&'static str, &'static str>,
    }
    let cases = [
        Case {
            offer: &["8BITMIME"],
            body: BodyType::EightBitMime,
            eight_bit: true,
            smtputf8: false,
            expect: Ok("MAIL FROM:<a@src.test> BODY=8BITMIME\r\n"),
        },
        Case {
            offer: &[],
            body: BodyType::EightBitMime,
            eight_bit: true,
            smtputf8: false,
            expect: Err("5.6.3"),
        },
        Case {
            offer: &[],
            body: BodyType::EightBitMime,
            eight_bit: false,
            smtputf8: false,
            expect: Ok("MAIL FROM:<a@src.test>\r\n"),
        },
        Case {
            offer: &["8BITMIME"],
            body: BodyType::EightBitMime,
            eight_bit: false,
            smtputf8: false,
            expect: Ok("MAIL FROM:<a@src.test>\r\n"),
        },
        Case {
            offer: &["8BITMIME"],
            body: BodyType::Unspecified,
            eight_bit: true,
            smtputf8: false,
            expect: Ok("MAIL FROM:<a@src.test> BODY=8BITMIME\r\n"),
        },
        Case {
            offer: &["8BITMIME", "SMTPUTF8"],
            body: BodyType::EightBitMime,
            eight_bit: true,
            smtputf8: true,
            expect: Ok("MAIL FROM:<a@src.test> BODY=8BITMIME SMTPUTF8\r\n"),
        },
        Case {
            offer: &["8BITMIME"],
            body: BodyType::SevenBit,
            eight_bit: false,
            smtputf8: true,
            expect: Ok("MAIL FROM:<a@src.test>\r\n"),
        },
    ];
    // SMTPUTF8 with UTF-8 headers needs a peer that offers it.
    let mut c = smtp(TlsPolicy::Never);
    c.on_reply(r(220, "", "hi"));
    c.on_reply(ehlo(&["8BITMIME"]));
    let out = c.send(Envelope {
        smtputf8: true,
        utf8_headers: true,
        eight_bit: true,
        ..env(None, &["x@p.test"])
    });
    assert_eq!(done(&out)[0].1.status().to_string(), "5.6.7");
    let mut c = smtp(TlsPolicy::Never);
    c.on_reply(r(220, "", "hi"));
    c.on_reply(ehlo(&["8BITMIME", "SMTPUTF8"]));
    let out = c.send(Envelope {
        smtputf8: true,
        utf8_headers: true,
        eight_bit: true,
        ..env(None, &["x@p.test"])
    });
    assert_eq!(
        sent(&out),
        "MAIL FROM:<a@src.test> BODY=8BITMIME SMTPUTF8\r\n"
    );
    for (i, case) in cases.iter().enumerate() {
        let mut c = smtp(TlsPolicy::Never);
        c.on_reply(r(220, "", "hi"));
        c.on_reply(ehlo(case.offer));
        let out = c.send(Envelope {
            body: case.body,
            eight_bit: case.eight_bit,
            smtputf8: case.smtputf8,
            ..env(None, &["x@p.test"])
        });
        match case.expect {
            Ok(mail) => assert_eq!(sent(&out), mail, "case {i}"),
            Err(status) => {
                assert!(sent(&out).is_empty(), "case {i}: nothing sent");
                let d = &done(&out)[0].1;
                assert!(
                    matches!(d, Disposition::Failed(Cause::Unsupported { .. })),
                    "case {i}"
                );
                assert_eq!(d.status().to_string(), status, "case {i}");
            }
        }
    }
}

#[test]
fn refusals_before_data_and_resets() {
    // Unpipelined, every RCPT refused: no DATA, RSET, then ready.
    let mut c = smtp(TlsPolicy::Never);
    c.on_reply(r(220, "", "hi"));
    c.on_reply(ehlo(&[]));
    c.send(env(None, &["x@p.test", "y@p.test"]));
    c.on_reply(r(250, "", "ok"));
    c.on_reply(r(550, "5.1.1", "unknown"));
    let out = c.on_reply(r(450, "4.2.0", "mailbox busy"));
    let d = done(&out);
    assert!(matches!(d[0].1, Disposition::Failed(_)) && matches!(d[1].1, Disposition::Deferred(_)));
    assert_eq!(d[1].1.status().to_string(), "4.2.0");
    assert_eq!(sent(&out), "RSET\r\n");
    assert_eq!(c.on_reply(r(250, "", "reset")), vec![Output::Ready]);
    // Pipelined, MAIL refused temporarily: everything deferred with MAIL's reason.
    let mut c = smtp(TlsPolicy::Never);
    c.on_reply(r(220, "", "hi"));
    c.on_reply(ehlo(&["PIPELINING"]));
    c.send(env(None, &["x@p.test"]));
    c.on_reply(r(451, "4.3.0", "queue full"));
    c.on_reply(r(503, "5.5.1", "need MAIL"));
    let out = c.on_reply(r(503, "5.5.1", "need RCPT"));
    assert!(
        matches!(&done(&out)[0].1, Disposition::Deferred(Cause::PeerReply(p)) if p.stage == Stage::Mail && p.reply.text() == "queue full")
    );
    assert_eq!(sent(&out), "RSET\r\n");
    // Pipelined, all RCPTs refused but the server still says 354: an empty body ends DATA.
    let mut c = smtp(TlsPolicy::Never);
    c.on_reply(r(220, "", "hi"));
    c.on_reply(ehlo(&["PIPELINING"]));
    c.send(env(None, &["x@p.test"]));
    c.on_reply(r(250, "", "ok"));
    c.on_reply(r(550, "5.1.1", "unknown"));
    assert_eq!(sent(&c.on_reply(r(354, "", "go"))), ".\r\n");
    assert!(
        matches!(&done(&c.on_reply(r(554, "5.5.1", "no recipients")))[0].1, Disposition::Failed(c) if c.status().to_string() == "5.1.1")
    );
}

#[test]
fn refusals_without_a_round_trip_and_lost_connections() {
    let mut c = smtp(TlsPolicy::Never);
    c.on_reply(r(220, "", "hi"));
    c.on_reply(ehlo(&["SIZE 50"]));
    assert!(
        matches!(&done(&c.send(env(None, &["x@p.test"])))[0].1, Disposition::Failed(c) if c.status().to_string() == "5.3.4")
    );
    let out = c.send(Envelope {
        from: "ü@src.test".into(),
        size: 10,
        ..env(None, &["x@p.test"])
    });
    assert!(
        matches!(&done(&out)[0].1, Disposition::Failed(c) if c.status().to_string() == "5.6.7")
    );
    let mut a = amtp();
    a.on_reply(r(220, "", "hi"));
    a.on_reply(ehlo(&[]));
    assert!(matches!(
        &done(&a.send(env(None, &["x@p.test"])))[0].1,
        Disposition::Failed(Cause::MissingMpc)
    ));
    let mut c = smtp(TlsPolicy::Never);
    c.on_reply(r(220, "", "hi"));
    c.on_reply(ehlo(&[]));
    c.send(Envelope {
        size: 10,
        ..env(None, &["x@p.test"])
    });
    let out = c.on_connection_lost(&Cause::Connection("connection reset".into()));
    assert!(
        matches!(&done(&out)[0].1, Disposition::Deferred(Cause::Connection(t)) if t == "connection reset")
    );
}

#[test]
fn base64_table() {
    for (input, expected) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("\0dev\0secret", "AGRldgBzZWNyZXQ="),
    ] {
        assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
    }
}

#[test]
fn auth_plain_after_ehlo_then_ready_only_over_tls() {
    // (greeting handled, EHLO reply, AUTH reply) -> what the client does.
    struct Case {
        tls: TlsPolicy,
        auth_reply: Option<Reply>,
        expect_auth_line: bool,
        ready: bool,
        temporary: Option<bool>,
    }
    let cases = [
        Case {
            tls: TlsPolicy::Implicit,
            auth_reply: Some(r(235, "2.7.0", "ok")),
            expect_auth_line: true,
            ready: true,
            temporary: None,
        },
        Case {
            tls: TlsPolicy::Implicit,
            auth_reply: Some(r(535, "5.7.8", "bad credentials")),
            expect_auth_line: true,
            ready: false,
            temporary: Some(false),
        },
        Case {
            tls: TlsPolicy::Implicit,
            auth_reply: Some(r(454, "4.7.0", "try later")),
            expect_auth_line: true,
            ready: false,
            temporary: Some(true),
        },
        Case {
            tls: TlsPolicy::Never,
            auth_reply: None,
            expect_auth_line: false,
            ready: false,
            temporary: Some(false),
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let mut c = Client::new(ClientConfig {
            ehlo_name: "laptop.test".into(),
            tls: case.tls,
            amtp: case.tls == TlsPolicy::Implicit,
            peer: "peer.test".into(),
        })
        .with_auth_plain("dev", "secret");
        c.on_reply(r(220, "", "hi"));
        let out = c.on_reply(ehlo(&["AUTH PLAIN"]));
        assert_eq!(
            sent(&out) == "AUTH PLAIN AGRldgBzZWNyZXQ=\r\n",
            case.expect_auth_line,
            "case {i}: {out:?}"
        );
        let out = match case.auth_reply {
            Some(reply) => c.on_reply(reply),
            None => out,
        };
        assert_eq!(out == vec![Output::Ready], case.ready, "case {i}: {out:?}");
        let failed = out.iter().find_map(|o| match o {
            Output::Failed(cause) => Some(cause.status().class == 4),
            _ => None,
        });
        assert_eq!(failed, case.temporary, "case {i}: {out:?}");
    }
}

#[test]
fn stop_before_data_reports_rcpt_replies_and_resets() {
    /// (pipelining, replies after the envelope, first write, outcomes).
    type Case<'a> = (bool, &'a [(u16, &'a str)], &'a str, &'a [&'a str]);
    let cases: &[Case] = &[
        (
            true,
            &[(250, "2.1.0"), (250, "2.1.5"), (550, "5.7.1")],
            "MAIL FROM:<a@src.test> MPC=per/individual\r\nRCPT TO:<x@peer.test>\r\nRCPT TO:<y@peer.test>\r\n",
            &["delivered 250", "failed 550"],
        ),
        (
            false,
            &[(250, "2.1.0"), (250, "2.1.5"), (451, "4.3.0")],
            "MAIL FROM:<a@src.test> MPC=per/individual\r\n",
            &["delivered 250", "deferred 451"],
        ),
        (
            false,
            &[(550, "5.7.1")],
            "MAIL FROM:<a@src.test> MPC=per/individual\r\n",
            &["failed 550", "failed 550"],
        ),
        (
            true,
            &[(550, "5.7.1"), (503, "5.5.1"), (503, "5.5.1")],
            "MAIL FROM:<a@src.test> MPC=per/individual\r\nRCPT TO:<x@peer.test>\r\nRCPT TO:<y@peer.test>\r\n",
            &["failed 550", "failed 550"],
        ),
    ];
    for (i, (pipelining, replies, first_write, outcomes)) in cases.iter().enumerate() {
        let mut c = amtp().stop_before_data();
        c.on_reply(r(220, "", "hi"));
        let caps: &[&str] = if *pipelining { &["PIPELINING"] } else { &[] };
        assert_eq!(c.on_reply(ehlo(caps)), vec![Output::Ready]);
        let out = c.send(env(Some("per/individual"), &["x@peer.test", "y@peer.test"]));
        assert_eq!(sent(&out), *first_write, "case {i}");
        let mut all = Vec::new();
        for (code, status) in *replies {
            all.extend(c.on_reply(r(*code, status, "text")));
        }
        assert!(!sent(&all).contains("DATA"), "case {i}: {all:?}");
        assert!(sent(&all).ends_with("RSET\r\n"), "case {i}: {all:?}");
        let got: Vec<String> = done(&all)
            .iter()
            .map(|(_, d)| match d {
                Disposition::Delivered(p) => format!("delivered {}", p.reply.code),
                Disposition::Failed(Cause::PeerReply(p)) => format!("failed {}", p.reply.code),
                Disposition::Deferred(Cause::PeerReply(p)) => {
                    format!("deferred {}", p.reply.code)
                }
                other => panic!("case {i}: not a peer reply: {other:?}"),
            })
            .collect();
        assert_eq!(got, *outcomes, "case {i}");
        assert_eq!(
            c.on_reply(r(250, "", "reset")),
            vec![Output::Ready],
            "case {i}"
        );
    }
}

#[test]
fn dot_stuffing_table() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"", b".\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".a\r\n", b"..a\r\n.\r\n"),
        (b"a\r\n.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"no final crlf", b"no final crlf\r\n.\r\n"),
        (
            b"..\r\n.x\r\nend.\r\n.",
            b"...\r\n..x\r\nend.\r\n..\r\n.\r\n",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(
            dot_stuff(input),
            expected.to_vec(),
            "{:?}",
            String::from_utf8_lossy(input)
        );
        // Round trip through our own DATA receiver gives the body back (with a final CRLF).
        let mut rx = crate::DataReceiver::new(1 << 20);
        assert!(matches!(
            rx.feed(&dot_stuff(input)),
            crate::Progress::Done { .. }
        ));
        let mut body = input.to_vec();
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        assert_eq!(rx.finish().unwrap(), body);
    }
}
