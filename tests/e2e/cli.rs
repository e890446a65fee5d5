//! The command line: check-config exit codes and messages, queue commands without a relay.

use crate::harness::BIN;
use std::process::Command;

#[test]
fn check_config_names_the_field_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nhostname = \"relay.test\"\n\n[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:25\"\nmax_conections = 5\n").unwrap();
    let out = check_config(&bad);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 8") && err.contains("max_conections") && err.contains("unknown field"),
        "{err}"
    );

    // Delivery on (the default) with nothing to verify next hops: refused, naming the fix.
    let no_roots = dir.path().join("no-roots.toml");
    std::fs::write(&no_roots, "[server]\nhostname = \"relay.test\"\n\n[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:25\"\n").unwrap();
    let out = check_config(&no_roots);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("delivery.server_ca") && err.contains("trust anchors"),
        "{err}"
    );

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[server]\nhostname = \"relay.test\"\n\n[[listener]]\nname = \"mx\"\nrole = \"mx\"\naddress = \"127.0.0.1:25\"\n\n[delivery]\nenabled = false\n").unwrap();
    let out = check_config(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // serve refuses a bad config the same way, before binding anything.
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn the_example_config_in_docs_is_valid() {
    // The example names tls/mx1.pem relative to itself: put it beside a real certificate.
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let dir = tempfile::tempdir().unwrap();
    for f in ["amtp-relay.example.toml", "users.example.toml"] {
        std::fs::copy(docs.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    std::fs::create_dir(dir.path().join("trust")).unwrap();
    for (file, name) in [
        ("public-anchors.pem", "Example Public AMTP Root"),
        ("isp-customers-ca.pem", "Example ISP Customer CA"),
    ] {
        std::fs::write(
            dir.path().join("trust").join(file),
            crate::pki::TestCa::new(name).pem,
        )
        .unwrap();
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["mx1.example.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("tls/mx1.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls/mx1-key.pem"), key.serialize_pem()).unwrap();
    let out = check_config(&dir.path().join("amtp-relay.example.toml"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the certificate it is refused, naming the field.
    std::fs::remove_file(dir.path().join("tls/mx1.pem")).unwrap();
    let out = check_config(&dir.path().join("amtp-relay.example.toml"));
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls.certificate"));
}

#[test]
fn queue_commands_without_a_relay_or_queue_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = crate::harness::queue_cli(dir.path(), &["list"]);
    assert!(!ok);
    assert!(err.contains("no relay running and no queue in"), "{err}");
    let (ok, _, _) = crate::harness::queue_cli(dir.path(), &["show", "zz"]);
    assert!(!ok);
}

#[test]
fn hash_password_produces_a_loadable_users_file() {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["hash-password", "--user", "alice", "--cram-md5"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("name = \"alice\"")
            && text.contains("$argon2id$")
            && text.contains("cram_md5 = "),
        "{text}"
    );
    assert!(!text.contains("correct horse"));
}

/// `amtp-relay check-config --config <path>`.
fn check_config(path: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .unwrap()
}
