//! `check-config` catches what `serve` would refuse or what would silently break mail, by
//! reading the files the configuration names: our certificate and key, the AMTP CA sets, the
//! users file; and it reports every error, in file order, with field and line. `serve`
//! refuses the same configurations (exit 64) before anything starts.

use crate::harness::BIN;
use crate::pki::TestCa;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn run(args: &[&str], config: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A certificate for `names` signed by a fresh key, valid until `not_after` (seconds since
/// the epoch): (certificate PEM, key PEM).
fn certificate(names: &[&str], not_after: u64) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(ToString::to_string).collect::<Vec<_>>())
            .unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_after);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const YEAR: u64 = 365 * 86_400;

/// A relay config using `cert.pem`/`key.pem` in `dir`, plus `extra`.
fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let text = format!(
        r#"[server]
hostname = "relay.test"
data_dir = "data"

[tls]
certificate = "cert.pem"
private_key = "key.pem"

[[listener]]
name = "mx"
role = "mx"
address = "127.0.0.1:0"

[delivery]
enabled = false
{extra}"#
    );
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_command_at_the_top_of_the_example_works_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("docs/amtp-relay.example.toml")).unwrap();
    let command = example
        .lines()
        .find_map(|l| l.strip_prefix("# Validate with: "))
        .expect("the example names its validation command");
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words[0], "amtp-relay", "{command}");
    let out = Command::new(BIN)
        .args(&words[1..])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{command}: {}", stderr(&out));
}

#[test]
fn every_error_is_reported_in_file_order_and_serve_refuses_them_too() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "this is not a certificate\n").unwrap();
    std::fs::write(dir.path().join("key.pem"), "neither is this a key\n").unwrap();
    let ca = TestCa::new("Both Sets CA");
    ca.write(&dir.path().join("ca.pem"));
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/users.example.toml"),
        dir.path().join("users.toml"),
    )
    .unwrap();
    let config = write_config(
        dir.path(),
        r#"
[auth]
users_file = "users.toml"

[[listener]]
name = "amtp"
role = "amtp"
address = "127.0.0.1:0"

[amtp]
public_ca = "ca.pem"
private_ca = ["ca.pem"]
auth_bindings = { ghost = ["laptop.customer.test"] }

[logging]
level = "verbose"
"#,
    );
    let out = run(&["check-config"], &config);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let text = stderr(&out);
    let expect = [
        ("tls.certificate", "our server certificate"),
        ("tls.private_key", "our private key"),
        ("amtp.private_ca", "in both the public set"),
        ("amtp.auth_bindings", "\"ghost\" is not in the users file"),
        ("logging.level", "\"verbose\" is not a log level"),
    ];
    let mut last_line = 0;
    for (field, needle) in expect {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("field `{field}`")) && l.contains(needle))
            .unwrap_or_else(|| panic!("no {field} error ({needle}) in:\n{text}"));
        let number: usize = line
            .split(" line ")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no line number: {line}"));
        assert!(number >= last_line, "not in file order:\n{text}");
        last_line = number;
    }
    assert!(!text.contains("UnsupportedCertVersion"), "{text}");
    // serve refuses it the same way, printing each error once.
    let out = run(&["serve"], &config);
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(stderr(&out), text, "serve and check-config differ");
}

#[test]
fn certificate_problems_are_ours_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let check = |cert: &(String, String), key: Option<&str>| {
        std::fs::write(dir.path().join("cert.pem"), &cert.0).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.unwrap_or(&cert.1)).unwrap();
        let out = run(&["check-config"], &config);
        (out.status.code(), stderr(&out))
    };

    let good = certificate(&["relay.test"], now() + YEAR);
    assert_eq!(check(&good, None), (Some(0), String::new()));

    let other = certificate(&["relay.test"], now() + YEAR);
    let (code, text) = check(&good, Some(&other.1));
    assert_eq!(code, Some(64), "{text}");
    assert!(
        text.contains("field `tls.private_key`")
            && text.contains("does not belong to our server certificate"),
        "{text}"
    );

    let expired = certificate(&["relay.test"], now() - 86_400);
    let (code, text) = check(&expired, None);
    assert_eq!(code, Some(64), "{text}");
    assert!(
        text.contains("our server certificate") && text.contains("expired"),
        "{text}"
    );

    let soon = certificate(&["relay.test"], now() + 7 * 86_400);
    let (code, text) = check(&soon, None);
    assert_eq!(code, Some(0), "a warning only: {text}");
    assert!(
        text.contains("warning") && text.contains("expires on"),
        "{text}"
    );

    let wrong_name = certificate(&["other.test"], now() + YEAR);
    let (code, text) = check(&wrong_name, None);
    assert_eq!(code, Some(0), "a warning only: {text}");
    assert!(
        text.contains("warning")
            && text.contains("\"relay.test\" is not among our certificate's names (other.test)"),
        "{text}"
    );
}

#[test]
fn auth_bindings_need_a_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = certificate(&["relay.test"], now() + YEAR);
    std::fs::write(dir.path().join("cert.pem"), &cert.0).unwrap();
    std::fs::write(dir.path().join("key.pem"), &cert.1).unwrap();
    TestCa::new("Customers").write(&dir.path().join("ca.pem"));
    let config = write_config(
        dir.path(),
        r#"
[[listener]]
name = "amtp"
role = "amtp"
address = "127.0.0.1:0"

[amtp]
private_ca = ["ca.pem"]
auth_bindings = { alice = ["laptop.customer.test"] }
"#,
    );
    let out = run(&["check-config"], &config);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("field `amtp.auth_bindings`")
            && stderr(&out).contains("no users file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_version_1_certificate_is_named_as_ours_not_as_a_library_error() {
    // rcgen only writes v3; openssl's `x509 -req` without extensions writes v1.
    let dir = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl not found (.ci/run installs it)");
        assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
    };
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "key.pem",
    ]);
    openssl(&[
        "req",
        "-new",
        "-key",
        "key.pem",
        "-subj",
        "/CN=relay.test",
        "-out",
        "c.csr",
    ]);
    openssl(&[
        "x509", "-req", "-in", "c.csr", "-signkey", "key.pem", "-days", "30", "-out", "cert.pem",
    ]);
    let config = write_config(dir.path(), "");
    let out = run(&["check-config"], &config);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{text}");
    assert!(
        text.contains("field `tls.certificate`")
            && text.contains("our server certificate")
            && text.contains("X.509 version 1"),
        "{text}"
    );
    assert!(
        !text.contains("UnsupportedCertVersion") && !text.contains("does not belong"),
        "{text}"
    );
}
