//! A full disk seen from the wire: the relay's data directory on a small real tmpfs, filled
//! to `ENOSPC` while mail arrives, then freed. Every message gets `451 4.3.0` while the disk
//! is full (never `250` for something not on disk), refused messages leave no body files, and
//! once space returns the relay answers `250` again by itself — no restart.
//!
//! Mounting needs root (CI runs as root and sets `AMTP_TEST_REQUIRE_TMPFS=1`, which turns
//! "cannot mount" into a failure); elsewhere the test says so and skips.

use crate::harness::{Client, Relay, wait_until};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A tmpfs mounted on a temporary directory for the life of the value.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: u64) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Some(Self { dir }),
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            std::env::var_os("AMTP_TEST_REQUIRE_TMPFS").is_none(),
            "AMTP_TEST_REQUIRE_TMPFS is set but a tmpfs cannot be mounted: {why}"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root): {why}");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fill the file system with one file until `ENOSPC`; delete the file to free the space.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5au8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    while let Ok(1) = f.write(&chunk[..1]) {}
    path
}

/// One message over mx; the final reply code.
fn send(relay: &Relay, n: usize) -> u16 {
    let mut c = Client::connect(relay.addr("mx"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@sender.test>", 250);
    c.expect("RCPT TO:<b@example.test>", 250);
    c.expect("DATA", 354);
    let body = format!("{}\r\n", "x".repeat(98)).repeat(200);
    c.write(format!("Subject: {n}\r\n\r\n{body}.\r\n").as_bytes());
    let code = c.read_reply().expect("a reply to DATA").code;
    c.expect("QUIT", 221);
    code
}

fn spool_files(data: &Path) -> usize {
    std::fs::read_dir(data.join("queue/spool")).unwrap().count()
}

#[test]
fn a_full_disk_answers_451_and_the_relay_recovers_by_itself() {
    let Some(fs) = Tmpfs::mount(16 << 20) else {
        return;
    };
    let data = fs.dir.path().join("data");
    let config = crate::harness::SERVER.replace(
        "data_dir = \"data\"",
        &format!("data_dir = \"{}\"", data.display()),
    ) + "\n[delivery]\nenabled = false\n";
    let relay = Relay::start_config(&config);
    assert_eq!(send(&relay, 1), 250);
    let accepted_before = spool_files(&data);

    let filler = fill(fs.dir.path());
    let codes: Vec<u16> = (2..6).map(|n| send(&relay, n)).collect();
    assert!(codes.iter().all(|&c| c == 451), "while full: {codes:?}");
    assert_eq!(
        spool_files(&data),
        accepted_before,
        "refused messages left body files behind"
    );
    // The harness reads the relay's log on a thread of its own: the line may trail the reply.
    assert!(
        wait_until(10, || relay
            .logged(&["queue commit failed", "No space left on device"])),
        "no `queue commit failed` line naming ENOSPC"
    );

    std::fs::remove_file(filler).unwrap();
    // No restart: storage notices by itself and the next message is accepted.
    assert!(
        wait_until(20, || relay.logged(&["queue storage works again"])),
        "storage did not recover"
    );
    assert_eq!(send(&relay, 7), 250);
    assert_eq!(spool_files(&data), accepted_before + 1);
    relay.assert_serving();
    drop(relay);
}
