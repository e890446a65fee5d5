//! Tests of [`super`]: tables and cases, kept beside the module so it stays readable.

use super::*;

#[test]
fn published_policy_in_all_three_draft_forms() {
    let mpc: Mpc = "com/optin".parse().unwrap();
    // (EHLO keyword lines, declarations shown, implied rule, our MPC's verdict)
    let cases: &[(&[&str], &str, &str, &str)] = &[
        (
            &["MPC ALLOW=per/* DENY=com/*"],
            "ALLOW per/* DENY com/*",
            "DENY",
            "deny",
        ),
        (&["MPC ALLOW com/*"], "ALLOW com/*", "DENY", "allow"),
        (
            &["MPC-DENY */optout", "MPC-DENY com/optin"],
            "DENY */optout DENY com/optin",
            "ALLOW",
            "deny",
        ),
    ];
    for (lines, shown, implied, verdict) in cases {
        let mut ehlo = vec!["peer.test Hello".to_string(), "PIPELINING".to_string()];
        ehlo.extend(lines.iter().map(|l| l.to_string()));
        let v = policy_view(&ehlo, &mpc).expect("a policy");
        let got: Vec<String> = v
            .declarations
            .iter()
            .map(|d| format!("{} {}/{}", d.verdict, d.role, d.class))
            .collect();
        assert_eq!(got.join(" "), *shown, "{lines:?}");
        assert_eq!(v.implied, *implied, "{lines:?}");
        assert_eq!(v.our_mpc, *verdict, "{lines:?}");
    }
    assert!(policy_view(&["peer.test".into(), "SIZE 10".into()], &mpc).is_none());
    let bad = policy_view(&["peer.test".into(), "MPC ALLOW=foo/bar".into()], &mpc).unwrap();
    assert!(bad.error.is_some());
}

#[test]
fn queue_id_from_the_final_reply() {
    for (text, id) in [
        ("Ok: queued as 00000000000000a1", Some("00000000000000a1")),
        ("Ok: queued as 4XyZ1 (mx3)", Some("4XyZ1")),
        ("Ok", None),
    ] {
        assert_eq!(queue_id_from(text).as_deref(), id, "{text}");
    }
}
