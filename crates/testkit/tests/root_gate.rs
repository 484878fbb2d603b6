//! A root-gated test that cannot run is reported as failed, never as passed: this test runs
//! its own test binary again as the unprivileged user `nobody` (setpriv), the way `cargo
//! test` runs it (every test of the binary) and the way cargo nextest and scripts/test.sh
//! run it (one test per process: `--exact NAME --nocapture`), and reads what libtest reports.

use std::process::Command;
use twill_testkit::{not_root_message, require_root, TempDir};

const NAME: &str = "a_gated_test_run_as_a_user_is_reported_failed_with_how_to_run_it";
/// nobody/nogroup on Debian.
const NOBODY: u32 = 65534;

#[test]
fn a_gated_test_run_as_a_user_is_reported_failed_with_how_to_run_it() {
    require_root(NAME);
    // The binary under target/ may sit in folders `nobody` cannot enter: run a copy.
    let dir = TempDir::new("rootgate");
    let exe = dir.path.join("gate-test");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for (p, mode) in [(&dir.path, 0o755), (&exe, 0o755)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let runs: [&[&str]; 2] = [&[], &["--exact", NAME, "--nocapture"]];
    for args in runs {
        let out = Command::new("setpriv")
            .args([
                "--reuid",
                &NOBODY.to_string(),
                "--regid",
                &NOBODY.to_string(),
            ])
            .args(["--clear-groups", "--"])
            .arg(&exe)
            .args(args)
            .current_dir(&dir.path)
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run setpriv (util-linux)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let all = format!("{stdout}{stderr}");
        assert!(
            !out.status.success(),
            "as nobody, {args:?} exited 0:\n{all}"
        );
        assert_eq!(
            out.status.code(),
            Some(101),
            "libtest's failure code:\n{all}"
        );
        assert!(
            all.contains("test result: FAILED.") && !all.contains(&format!("{NAME} ... ok")),
            "not reported failed:\n{all}"
        );
        if args.is_empty() {
            assert!(all.contains(&format!("test {NAME} ... FAILED")), "{all}");
        } else {
            assert!(
                all.contains("test result: FAILED. 0 passed; 1 failed"),
                "{all}"
            );
        }
        // The reason and the way to run it, with the uid it saw.
        assert!(all.contains(&not_root_message(NAME, NOBODY)), "{all}");
    }
}

#[test]
fn the_message_says_why_and_how_to_run_it() {
    let m = not_root_message("t", 1000);
    for part in [
        "t: NOT RUN: needs root",
        "uid 1000",
        "cargo nextest run -p <crate>",
        "scripts/test.sh",
    ] {
        assert!(m.contains(part), "{part:?} missing from {m}");
    }
}
