//! Tests of [`super`]: tables and cases, kept beside the module so it stays readable.

use super::*;

#[test]
fn embedded_dev_config_is_valid() {
    let c = parse(DEV_CONFIG, "dev", Path::new("/base")).unwrap();
    assert_eq!(c.file.listeners.len(), 4);
    let amtp = c.amtp_files.as_ref().unwrap();
    assert_eq!(amtp.public_ca, None, "the dev CA is private only");
    assert_eq!(
        amtp.private_ca,
        vec![Path::new("/base/./amtp-data/tls/ca.pem").to_path_buf()]
    );
    assert_eq!(c.data_dir, Path::new("/base/./amtp-data"));
    assert!(c.local_domains.contains("example.test"));
    assert_eq!(
        c.users_file.as_deref(),
        Some(Path::new("/base/./amtp-data/users.toml"))
    );
}

#[test]
fn errors_name_field_and_line() {
    let base = "[server]\nhostname = \"relay.test\"\n\n[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:2525\"\n";
    let cases: Vec<(String, &str, Option<usize>, &str)> = vec![
        (
            format!("{base}bogus = 1\n"),
            "bogus",
            Some(8),
            "unknown field `bogus`",
        ),
        (
            base.replace("role = \"mx\"", "role = \"relay\""),
            "role",
            Some(6),
            "unknown variant `relay`",
        ),
        (
            base.replace("127.0.0.1:2525", "localhost"),
            "address",
            Some(7),
            "invalid socket address",
        ),
        (
            format!("{base}[session]\nmax_message_size = \"10 parsecs\"\n"),
            "max_message_size",
            Some(9),
            "unknown size unit",
        ),
        (
            format!("{base}[session]\ncommand_timeout = \"5\"\n"),
            "command_timeout",
            Some(9),
            "needs a unit",
        ),
        (
            format!("{base}[session]\nmax_recipients = 0\n"),
            "session.max_recipients",
            Some(9),
            "at least 1",
        ),
        (
            format!(
                "{base}[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:2526\"\n"
            ),
            "listener[1].name",
            Some(9),
            "unique",
        ),
        (
            format!(
                "{base}[[listener]]\nname = \"sub\"\nrole = \"submission\"\naddress = \"127.0.0.1:2587\"\n"
            ),
            "listener[1].role",
            Some(10),
            "needs a certificate",
        ),
        (
            format!(
                "{base}[tls]\ngenerate_dev_certificate = true\n[[listener]]\nname = \"amtp\"\nrole = \"amtp\"\naddress = \"127.0.0.1:3025\"\n[amtp]\nmpc_policy = \"DENY=com/optout\"\n"
            ),
            "amtp.public_ca",
            Some(14),
            "public_ca (public peers) or private_ca",
        ),
        (
            base.replace("relay.test", "bad host"),
            "server.hostname",
            Some(2),
            "not a host name",
        ),
        (
            "[server]\n".to_string(),
            "",
            Some(1),
            "missing field `hostname`",
        ),
        (
            base.replace(
                "[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:2525\"\n",
                "",
            ),
            "listener",
            None,
            "at least one",
        ),
        (
            format!(
                "{base}[tls]\ncertificate = \"/nonexistent.pem\"\nprivate_key = \"/nonexistent-key.pem\"\n"
            ),
            "tls.certificate",
            Some(9),
            "does not exist",
        ),
        (
            base.replace(
                "address = \"127.0.0.1:2525\"\n",
                "address = \"127.0.0.1:2525\"\ndefault_mpc = \"foo/bar\"\n",
            ),
            "listener[0].default_mpc",
            Some(8),
            "undefined MPC role",
        ),
        (
            format!("{base}[logging]\nlevel = \"[[[\"\n"),
            "logging.level",
            Some(9),
            "",
        ),
    ];
    for (text, field, line, needle) in cases {
        let all = parse(&text, "t.toml", Path::new("/")).unwrap_err();
        let e = &all.0[0];
        assert_eq!(e.field, field, "{all}");
        assert_eq!(e.line, line, "{e}");
        assert!(e.message.contains(needle), "{e}");
    }
}

#[test]
fn every_error_is_reported_in_file_order() {
    let text = "[server]\nhostname = \"bad host\"\n[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:25\"\nmax_connections = 0\n[[listener]]\nname = \"mx\"\nrole = \"submissions\"\naddress = \"127.0.0.1:25\"\n[session]\nmax_recipients = 0\ndata_timeout = \"0s\"\n[amtp]\nmpc_policy = \"DENY=com/nonsense\"\n[[amtp.rule]]\ndeny = [\"com/optout\"]\n";
    let all = parse(text, "t", Path::new("/")).unwrap_err();
    let got: Vec<(&str, Option<usize>)> =
        all.0.iter().map(|e| (e.field.as_str(), e.line)).collect();
    assert_eq!(
        got,
        [
            ("server.hostname", Some(2)),
            ("listener[0].max_connections", Some(7)),
            ("listener[1].name", Some(9)),
            ("listener[1].role", Some(10)),
            ("listener[1].address", Some(11)),
            ("session.max_recipients", Some(13)),
            ("session.data_timeout", Some(14)),
            ("amtp.public_ca", Some(15)),
            ("amtp.mpc_policy", Some(16)),
            ("amtp.rule[0]", Some(17)),
            // No line: the [auth] and [delivery] sections are missing altogether
            // (delivery is on by default, and nothing could verify outbound AMTP hops).
            ("auth.users_file", None),
            ("delivery.server_ca", None),
        ],
        "{all}"
    );
    // The policy's errors are typed: the message is not prefixed with its field.
    assert!(
        all.0.iter().all(|e| !e.message.starts_with("amtp.")),
        "{all}"
    );
}

#[test]
fn type_errors_speak_the_operators_language() {
    let text = "[server]\nhostname = \"relay.test\"\n[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:25\"\nmax_connections = \"many\"\n";
    let all = parse(text, "t", Path::new("/")).unwrap_err();
    let e = &all.0[0];
    assert_eq!(e.line, Some(7), "{e}");
    assert!(e.message.ends_with("expected a whole number"), "{e}");
    assert!(!e.to_string().contains("usize"), "{e}");
    assert_eq!(
        operator_words("invalid value: integer `-1`, expected u16"),
        "invalid value: integer `-1`, expected a whole number"
    );
    assert_eq!(operator_words("expected f64"), "expected a number");
    assert_eq!(operator_words("expected u8x"), "expected u8x");
}

#[test]
fn proxy_settings_are_checked() {
    let base = "[server]\nhostname = \"relay.test\"\n[delivery]\nenabled = false\n[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:25\"\n";
    let ok = parse(
        &format!("{base}proxy_protocol = true\nproxy_trusted = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]\n"),
        "t",
        Path::new("/"),
    )
    .unwrap();
    assert_eq!(ok.file.listeners[0].proxy_trusted.len(), 3);
    for (extra, wants) in [
        ("proxy_protocol = true\n", "listener[0].proxy_trusted"),
        (
            "proxy_trusted = [\"10.0.0.0/8\"]\n",
            "listener[0].proxy_trusted",
        ),
        (
            "proxy_protocol = true\nproxy_trusted = [\"10.0.0.1/8\"]\n",
            "host bits",
        ),
        (
            "proxy_protocol = true\nproxy_trusted = [\"10.0.0.0/40\"]\n",
            "prefix length",
        ),
        (
            "proxy_protocol = true\nproxy_trusted = [\"balancer\"]\n",
            "not an IP address",
        ),
        (
            "proxy_protocol = true\nproxy_trusted = [\"10.0.0.0/8\"]\nproxy_header_timeout = \"0s\"\n",
            "above zero",
        ),
    ] {
        let e = parse(&format!("{base}{extra}"), "t", Path::new("/")).unwrap_err();
        assert!(e.to_string().contains(wants), "{extra:?}: {e}");
    }
}

#[test]
fn cluster_settings_are_checked() {
    let base = "[server]\nhostname = \"relay.test\"\n[delivery]\nenabled = false\n[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:25\"\n[cluster]\n";
    let ok = parse(
        &format!("{base}redis = \"redis://127.0.0.1:6379/0\"\nnode_id = \"edge-1\"\n"),
        "t",
        Path::new("/"),
    )
    .unwrap();
    let c = ok.file.cluster.unwrap();
    assert_eq!(c.node_id(), "edge-1");
    assert_eq!(c.deadline.0, Duration::from_millis(5));
    for (extra, field) in [
        ("redis = \"http://x\"\n", "cluster.redis"),
        (
            "redis = \"redis://h/0\"\npool_size = 0\n",
            "cluster.pool_size",
        ),
        (
            "redis = \"redis://h/0\"\ndeadline = \"5s\"\n",
            "cluster.deadline",
        ),
        (
            "redis = \"redis://h/0\"\nnode_id = \"a b\"\n",
            "cluster.node_id",
        ),
    ] {
        let e = parse(&format!("{base}{extra}"), "t", Path::new("/")).unwrap_err();
        assert_eq!(e.0[0].field, field, "{extra:?}: {e}");
    }
}

#[test]
fn auth_needs_a_users_file() {
    let text = "[server]\nhostname = \"relay.test\"\n[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:25\"\nauth = true\nallow_insecure_auth = true\n";
    let e = parse(text, "t", Path::new("/")).unwrap_err();
    assert_eq!(e.0[0].field, "auth.users_file");
}

#[test]
fn tls_groups_and_ticket_lifetimes_are_checked() {
    let base = "[server]\nhostname = \"relay.test\"\n[delivery]\nenabled = false\n[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:25\"\n";
    let ok = parse(
        &format!(
            "{base}[tls]\nkx_groups = [\"x25519\", \"SECP256R1\"]\nticket_lifetime = \"off\"\n"
        ),
        "t",
        Path::new("/"),
    )
    .unwrap();
    assert_eq!(
        ok.file.tls.kx_groups(),
        [
            amtp_actors::tls::KxGroup::X25519,
            amtp_actors::tls::KxGroup::Secp256r1
        ]
    );
    assert_eq!(ok.file.tls.ticket_lifetime.get(), None);
    let defaults = parse(base, "t", Path::new("/")).unwrap();
    assert_eq!(
        defaults.file.tls.kx_groups()[0],
        amtp_actors::tls::KxGroup::X25519MlKem768,
        "the post-quantum hybrid first by default"
    );
    assert_eq!(
        defaults.file.tls.ticket_lifetime.get(),
        Some(Duration::from_secs(3600))
    );
    for (extra, field, line, wants) in [
        (
            "[tls]\nkx_groups = [\"x25519\", \"ffdhe2048\"]\n",
            "kx_groups",
            Some(10),
            "unknown key-exchange group \"ffdhe2048\"; allowed: X25519MLKEM768, x25519, secp256r1, secp384r1, SecP256r1MLKEM768",
        ),
        (
            "[tls]\nkx_groups = []\n",
            "tls.kx_groups",
            Some(10),
            "lists no key-exchange group",
        ),
        (
            "[tls]\nticket_lifetime = \"30d\"\n",
            "ticket_lifetime",
            Some(10),
            "longer than 7 days",
        ),
        (
            "[tls]\nticket_lifetime = \"soon\"\n",
            "ticket_lifetime",
            Some(10),
            "must start with a whole number, or \"off\" for no tickets",
        ),
        (
            "[amtp]\npublic_ca = \"ca.pem\"\nticket_lifetime = \"8d\"\n",
            "ticket_lifetime",
            Some(11),
            "longer than 7 days",
        ),
        (
            "[amtp]\npublic_ca = \"ca.pem\"\nresumption_kx = \"pq\"\n",
            "resumption_kx",
            Some(11),
            "unknown variant `pq`, expected `classical` or `as-full`",
        ),
    ] {
        let all = parse(&format!("{base}{extra}"), "t", Path::new("/")).unwrap_err();
        let e = &all.0[0];
        assert!(
            e.field.ends_with(field) && e.line == line && e.message.contains(wants),
            "{extra:?}: {all}"
        );
    }
}
