//! The twilld binary's command line, run for real: usage errors exit 2 with one line that
//! names the flag (or variable, or file line) and the fix, and no backtrace even with
//! RUST_BACKTRACE set; an agent that cannot run exits 1, also with one line. Not
//! root-gated: nothing here needs privileges, and nothing is left behind.

use std::net::TcpListener;
use std::process::{Command, Output};
use twill_testkit::TempDir;

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");

fn twilld(args: &[&str], env: &[(&str, &str)], dir: &TempDir) -> Output {
    let mut c = Command::new(TWILLD);
    c.args(args)
        .env("RUST_BACKTRACE", "full")
        .env("HOME", &dir.path);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TWILL_")) {
        c.env_remove(k);
    }
    // Settings that would touch the machine point into the test's folder.
    for (k, v) in [
        ("TWILL_STORE_DIR", "store"),
        ("TWILL_STATE_DIR", "state"),
        ("TWILL_HANDOFF_FILE", "node.json"),
        ("TWILL_CNI_DATA_DIR", "ipam"),
    ] {
        c.env(k, dir.path.join(v));
    }
    c.envs(env.iter().copied());
    c.output().expect("run twilld")
}

/// Exit code 2 and a single `twilld: …` line containing every one of `wanted`.
fn usage_error(args: &[&str], env: &[(&str, &str)], wanted: &[&str]) {
    let dir = TempDir::new("cli");
    let out = twilld(args, env, &dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?}: stdout {:?}", out.stdout);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line, got {stderr:?}");
    assert!(lines[0].starts_with("twilld: "), "{stderr}");
    for w in wanted {
        assert!(
            lines[0].contains(w),
            "{args:?}: {w:?} missing in {stderr:?}"
        );
    }
    for noise in ["panicked", "backtrace", "Error {", "Caused by"] {
        assert!(!stderr.contains(noise), "{args:?}: {stderr}");
    }
    // Nothing was started or created.
    assert_eq!(
        std::fs::read_dir(&dir.path).unwrap().count(),
        0,
        "{args:?} left files in {}",
        dir.path.display()
    );
}

#[test]
fn a_bad_flag_names_it_and_the_likely_one() {
    usage_error(
        &["--nod-name", "n1"],
        &[],
        &[
            "unknown flag --nod-name",
            "did you mean --node-name?",
            "twilld --help",
        ],
    );
    usage_error(
        &["--colour"],
        &[],
        &["unknown flag --colour", "twilld --help"],
    );
    usage_error(
        &["run"],
        &[],
        &["unexpected argument \"run\"", "--node-name"],
    );
    usage_error(&["--node-name"], &[], &["flag --node-name needs a value"]);
}

#[test]
fn a_bad_value_names_where_it_came_from_and_what_fits() {
    usage_error(
        &["--listen", "9099"],
        &[],
        &["flag --listen", "127.0.0.1:9099"],
    );
    usage_error(
        &["--min-free-addresses=lots"],
        &[],
        &["flag --min-free-addresses", "whole number"],
    );
    usage_error(
        &[],
        &[("TWILL_LOG_FORMAT", "xml")],
        &["environment TWILL_LOG_FORMAT", "use text or json"],
    );
    usage_error(
        &["--store", "cassandra"],
        &[],
        &["flag --store", "use one of embedded, etcd, static"],
    );
}

#[test]
fn a_missing_setting_names_the_flag_that_sets_it() {
    usage_error(
        &["--store", "etcd"],
        &[],
        &["etcdEndpoints is empty", "set --etcd-endpoints"],
    );
    usage_error(&["--store", "static"], &[], &["set --static-file"]);
    usage_error(
        &["--etcd-cert-file", "/c.pem"],
        &[],
        &["set both or neither"],
    );
    usage_error(
        &["--config", "/nonexistent/twl-twilld.yaml"],
        &[],
        &[
            "cannot read config file /nonexistent/twl-twilld.yaml",
            "--config",
        ],
    );
}

#[test]
fn a_bad_config_file_names_its_line() {
    let dir = TempDir::new("clif");
    let file = dir.path.join("twilld.yaml");
    std::fs::write(&file, "nodeName: n1\nnodename: n2\n").unwrap();
    let file = file.display().to_string();
    let out = twilld(&["--config", &file], &[], &TempDir::new("clig"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("line 2: nodename: unknown setting; did you mean nodeName?"),
        "{stderr}"
    );
}

#[test]
fn help_and_version_exit_0_on_stdout() {
    let dir = TempDir::new("clih");
    for flag in ["--help", "-h"] {
        let out = twilld(&[flag], &[], &dir);
        assert_eq!(out.status.code(), Some(0));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("--node-name") && text.contains("TWILL_STORE"),
            "{text}"
        );
        assert!(out.stderr.is_empty());
    }
    let out = twilld(&["--version"], &[], &dir);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("twilld "));
}

#[test]
fn an_agent_that_cannot_run_exits_1_with_one_line() {
    // The HTTP port is taken: the agent fails before it touches anything.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let dir = TempDir::new("clir");
    let out = twilld(&["--listen", &addr, "--node-name", "twlcli"], &[], &dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("twilld: cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("set listen to a free address:port"),
        "{stderr}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");
}
