//! The deployment files in docs/deploy are real: the systemd unit passes
//! `systemd-analyze verify` (syntax, known directives, executable commands).

use std::path::Path;
use std::process::Command;

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/deploy/amtp-relay.service"
    ));
    let text = std::fs::read_to_string(unit).unwrap();
    for needed in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/amtp-relay",
        "PrivateTmp=yes",
        "LimitNOFILE=",
    ] {
        assert!(text.contains(needed), "the unit lacks {needed}");
    }
    // verify also checks that ExecStart's binary exists and is executable: point it at the
    // binary under test instead of the install location, and change nothing else.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("amtp-relay.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/amtp-relay", crate::harness::BIN),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze not found: install the Debian package `systemd` (.ci/run does)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify:\n{said}");
    assert!(
        !said.contains("Unknown key") && !said.contains("Unknown section"),
        "{said}"
    );
}
