//! The real `twill` binary builds a one-node lab whose pods are wired by the real twill-cni,
//! proves it with `twill lab check`, inspects it, runs a command in it, and removes it; the
//! kernel must then hold nothing of it. Needs root.

use std::path::PathBuf;
use std::process::{Command, Output};

const TWILL: &str = env!("CARGO_BIN_EXE_twill");

fn twill(args: &[&str]) -> Output {
    Command::new(TWILL).args(args).output().expect("run twill")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A lab name unique to this run: `twl` + 5 hex digits of the pid (8 characters, the limit).
fn lab_name() -> String {
    format!("twl{:05x}", std::process::id() & 0xfffff)
}

/// Removes the lab however the test ends.
struct LabGuard(String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = twill(&["lab", "down", "--name", &self.0]);
    }
}

/// twill-cni next to twill (where the lab looks by default), built first if this test run did
/// not build it (`cargo test -p twill` builds only this package's binary).
fn ensure_plugin() -> PathBuf {
    if let Some(p) = std::env::var_os("TWILL_CNI_BIN") {
        return PathBuf::from(p);
    }
    let dir = PathBuf::from(TWILL).parent().unwrap().to_path_buf();
    let plugin = dir.join("twill-cni");
    if !plugin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "twill-cni"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build -p twill-cni");
        assert!(status.success(), "cargo build -p twill-cni failed");
    }
    assert!(
        plugin.is_file(),
        "{} is missing: run `cargo build -p twill-cni` first",
        plugin.display()
    );
    plugin
}

#[test]
fn lab_up_check_status_exec_down() {
    if !twill_testkit::root_or_skip("lab_up_check_status_exec_down") {
        return;
    }
    let plugin = ensure_plugin();
    let name = lab_name();
    let guard = LabGuard(name.clone());
    let plugin_arg = plugin.to_str().unwrap();

    let up = twill(&[
        "lab",
        "up",
        "--name",
        &name,
        "--pods-per-node",
        "3",
        "--cni-bin",
        plugin_arg,
    ]);
    assert!(up.status.success(), "up failed:\n{}", text(&up));

    // A second `up` refuses and says how to fix it.
    let again = twill(&["lab", "up", "--name", &name, "--cni-bin", plugin_arg]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains(&format!(
            "lab {name} exists; run twill lab down --name {name}"
        )),
        "{err}"
    );

    let check = twill(&["lab", "check", "--name", &name]);
    assert!(check.status.success(), "check failed:\n{}", text(&check));
    let check_json = twill(&["lab", "check", "--name", &name, "-o", "json"]);
    assert!(
        check_json.status.success(),
        "check -o json failed:\n{}",
        text(&check_json)
    );
    let report: serde_json::Value = serde_json::from_slice(&check_json.stdout).unwrap();
    let checks = report["checks"].as_array().unwrap();
    assert!(report["passed"].as_bool().unwrap());
    // 3 pods: 2 pairs × 4, 3 pods × 4, 6 per node.
    assert_eq!(checks.len(), 26, "{report:#}");
    for name in [
        "pod→outside via masquerade",
        "hairpin to itself via host port",
        "outside→host port udp",
    ] {
        assert!(checks.iter().any(|c| c["name"] == name), "no {name} check");
    }

    let status = twill(&["lab", "status", "--name", &name, "-o", "json"]);
    assert!(status.status.success(), "status failed:\n{}", text(&status));
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let node = &st["nodes"][0];
    assert_eq!(node["name"], "n1");
    assert_eq!(node["pod_subnet"], "10.244.1.0/24");
    let pods = node["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 3);
    let pod_ips: Vec<&str> = pods
        .iter()
        .map(|p| p["address"].as_str().unwrap())
        .collect();
    for ip in &pod_ips {
        assert!(ip.starts_with("10.244.1."), "{ip}");
    }
    // The addresses status reports are the kernel's: pod 2's eth0 holds its address.
    let ns_of = |ns: &str| {
        st["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["netns"] == ns)
            .unwrap()
            .clone()
    };
    let pod2 = ns_of(&format!("{name}-n1-p2"));
    let eth0 = pod2["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "eth0")
        .unwrap();
    assert!(
        eth0["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == &format!("{}/24", pod_ips[1])),
        "{pod2:#}"
    );
    let rt = ns_of(&format!("{name}-rt"));
    let rt_addrs: Vec<&serde_json::Value> = rt["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["addresses"].as_array().unwrap())
        .collect();
    assert!(
        rt_addrs.iter().any(|a| *a == "192.0.2.1/24")
            && rt_addrs.iter().any(|a| *a == "203.0.113.1/24"),
        "{rt:#}"
    );

    // exec runs inside the member and passes the exit code through.
    let exec = twill(&[
        "lab", "exec", "--name", &name, "n1-p3", "--", "ip", "-4", "-o", "addr", "show", "dev",
        "eth0",
    ]);
    assert!(exec.status.success(), "exec failed:\n{}", text(&exec));
    assert!(
        String::from_utf8_lossy(&exec.stdout).contains(&format!("{}/24", pod_ips[2])),
        "{}",
        text(&exec)
    );
    let exit = twill(&[
        "lab", "exec", "--name", &name, "out", "--", "sh", "-c", "exit 7",
    ]);
    assert_eq!(exit.status.code(), Some(7), "{}", text(&exit));

    let down = twill(&["lab", "down", "--name", &name]);
    assert!(down.status.success(), "down failed:\n{}", text(&down));
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let prefix = format!("{name}-");
    assert!(
        left.iter().all(|n| !n.starts_with(&prefix)),
        "namespaces left: {left:?}"
    );
    assert!(
        !PathBuf::from("/run").join(&name).exists(),
        "/run/{name} left behind"
    );
    drop(guard);
}

#[test]
fn down_of_an_unknown_lab_is_a_no_op_and_bad_names_are_refused() {
    if !twill_testkit::root_or_skip("down_of_an_unknown_lab_is_a_no_op_and_bad_names_are_refused") {
        return;
    }
    // `z` is not a hex digit: this name can never be a lab the other test made.
    let name = format!("twlz{:04x}", std::process::id() & 0xffff);
    let down = twill(&["lab", "down", "--name", &name]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(
        String::from_utf8_lossy(&down.stdout).contains("nothing to remove"),
        "{}",
        text(&down)
    );
    let bad = twill(&["lab", "up", "--name", "mylab"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("must start with \"twl\""),
        "{}",
        text(&bad)
    );
}
