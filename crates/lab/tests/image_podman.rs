//! Twill's image under a real runtime: podman runs it inside lab node namespaces the way the
//! DaemonSet (deploy/kubernetes) runs it on a node. The image is built by scripts/image.sh
//! (from the debug binaries the tests already built: no second build), into a podman
//! storage of the test's own (/tmp/twl…, runc, cgroupfs, file locks, as RUNBOOK says).
//!
//! Each lab node's `twilld` is a wrapper the lab starts as it starts any agent: it runs the
//! init step `twill install-cni` in a container (host network = the node's namespace, the
//! host folders bound at the same paths, no capability), which installs twill-cni into the
//! host's CNI bin dir and writes the node's 10-twill.conflist; then `exec`s podman running
//! twilld from the image (NET_ADMIN and NET_RAW only). The lab waits for each agent's
//! /readyz, then wires its pods with the installed plugin and conflist, and `lab check`
//! must pass (pods across nodes over vxlan, etcd store).
//!
//! Upgrade: under a ping flood both ways between pods of n1 and n2, n1's agent container is
//! replaced by a second image (another tag, another ID): the init step runs again, the new
//! agent becomes ready, the pods keep connectivity; the gap (lost pings × 10 ms) is printed.
//! The lab's nodes share one host CNI bin dir, so their init steps run in the host's PID
//! namespace (install-cni names its temp file by PID; as PID 1 of their own, two would
//! collide).
//!
//! Needs root, podman, runc, etcd. Stages are timed on stderr (images, lab up, the agent's
//! replacement); on this machine shared with other builds: about 30 + 45 + 25 s.

#[path = "bgp_util/mod.rs"]
mod bgp_util;
use bgp_util::*;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A podman of the test's own: config, storage, run and tmp dirs, locks and events all in
/// one /tmp/twl… folder. Dropping it removes every container and image in that storage,
/// unmounts what the overlay driver mounted there, removes the folder, and the one folder
/// podman writes outside it (/var/lib/containers/cache) if the test made it.
struct Podman {
    dir: PathBuf,
    made_var_lib_containers: bool,
}

impl Podman {
    fn new() -> Podman {
        let dir = std::env::temp_dir().join(twill_testkit::unique_name("pod", 40));
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\n\
                 default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
                 [engine]\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 events_logfile_path = \"{d}/events.log\"\n\
                 runtime = \"runc\"\n\
                 lock_type = \"file\"\n\
                 tmp_dir = \"{d}/tmp\"\n\
                 static_dir = \"{d}/libpod\"\n\
                 volume_path = \"{d}/volumes\"\n\
                 [network]\n\
                 network_backend = \"cni\"\n\
                 network_config_dir = \"{d}/cni\"\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/storage\"\nrunroot = \"{d}/run\"\n"
            ),
        )
        .unwrap();
        Podman {
            made_var_lib_containers: !Path::new("/var/lib/containers").exists(),
            dir,
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let p = |f: &str| self.dir.join(f).display().to_string();
        vec![
            ("CONTAINERS_CONF", p("containers.conf")),
            ("CONTAINERS_STORAGE_CONF", p("storage.conf")),
            ("TMPDIR", p("tmp")),
        ]
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.envs(self.env());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd("podman").args(args).output().expect("run podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "podman {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.run(&["rmi", "--all", "--force"]);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.dir.display().to_string();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.made_var_lib_containers {
            let _ = std::fs::remove_dir_all("/var/lib/containers");
        }
    }
}

/// Shell lines that mount, at the same places, the cgroup hierarchies this process sees
/// under /sys/fs/cgroup (from /proc/self/mountinfo: the tmpfs above them, each v1
/// controller set, the v2 tree).
fn cgroup_mounts() -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut sh = String::new();
    for line in info.lines() {
        let (pre, post) = line.split_once(" - ").unwrap();
        let point = pre.split(' ').nth(4).unwrap();
        let f: Vec<&str> = post.split(' ').collect();
        let (fstype, opts) = (f[0], f.get(2).copied().unwrap_or("rw"));
        if !(point == "/sys/fs/cgroup" || point.starts_with("/sys/fs/cgroup/")) {
            continue;
        }
        match fstype {
            "tmpfs" => sh += &format!("mount -t tmpfs -o mode=755 tmpfs {point}\n"),
            "cgroup" | "cgroup2" => {
                sh += &format!("mkdir -p {point}; mount -t {fstype} -o {opts} {fstype} {point}\n")
            }
            _ => {}
        }
    }
    assert!(
        sh.contains("cgroup"),
        "no cgroup hierarchy under /sys/fs/cgroup:\n{info}"
    );
    sh
}

/// What the lab runs as each node's twilld: the DaemonSet's two steps with podman.
fn wrapper(pm: &Podman, cni_bin_dir: &Path, network_config: &Path) -> String {
    let env: String = pm
        .env()
        .iter()
        .map(|(k, v)| format!("export {k}={v}\n"))
        .collect();
    let image_file = pm.dir.join("agent-image").display().to_string();
    let cgroups = cgroup_mounts();
    format!(
        r#"#!/bin/bash
# Started by the lab as `ip netns exec NODE twilld ARGS`: the init step, then the agent,
# each in a container with the node's network and the host folders at their own paths.
set -euo pipefail
# `ip netns exec` gave this process its own mount namespace with a fresh /sys: put the
# host's cgroup hierarchies back there (only here) for runc.
{cgroups}{env}ns=$(ip netns identify $$)
image=$(cat {image_file})
arg() {{ local want=$1; shift; while [ $# -gt 1 ]; do [ "$1" = "$want" ] && {{ echo "$2"; return; }}; shift; done; }}
handoff=$(arg --handoff-file "$@")
node_dir=$(dirname "$handoff")
lab_dir=$(dirname "$node_dir")
common=(--rm --network "ns:/run/netns/$ns" --cap-drop all -v "$lab_dir:$lab_dir")
# The lab's nodes share this host's CNI bin dir (real nodes each have their own): the init
# steps see the host's PIDs, so their temp files (named by PID) differ.
podman run "${{common[@]}}" --pid host -v {bin}:{bin} -v {nc}:/etc/twill/network-config.yaml:ro \
  -e TWILL_CNI_BIN_DIR={bin} -e TWILL_CNI_NET_DIR="$node_dir" \
  -e TWILL_NETWORK_CONFIG_FILE=/etc/twill/network-config.yaml \
  -e TWILL_HANDOFF_FILE="$handoff" -e TWILL_CNI_DATA_DIR="$(arg --cni-data-dir "$@")" \
  -e TWILL_CNI_NETWORK="$(arg --cni-network "$@")" \
  --entrypoint /usr/local/bin/twill "$image" install-cni
exec -a twilld podman run "${{common[@]}}" --replace --name "$ns-agent" \
  --cap-add NET_ADMIN,NET_RAW "$image" "$@"
"#,
        bin = cni_bin_dir.display(),
        nc = network_config.display(),
    )
}

fn pod_ip(lab: &Lab, pod: &str) -> String {
    let st = lab.state();
    st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["short"] == pod)
        .and_then(|p| p["address"].as_str())
        .unwrap_or_else(|| panic!("no address for {pod} in {st}"))
        .to_string()
}

/// `N packets transmitted, M received` of ping's summary.
fn ping_counts(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {out}"));
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

#[test]
fn podman_runs_the_image_as_the_daemonset_does_and_an_upgrade_keeps_pod_traffic() {
    twill_testkit::require_root(
        "podman_runs_the_image_as_the_daemonset_does_and_an_upgrade_keeps_pod_traffic",
    );
    for (p, pkg) in [
        ("podman", "podman"),
        ("runc", "runc"),
        ("etcd", "etcd-server"),
    ] {
        twill_testkit::require_program("image_podman", p, pkg);
    }
    let twill_exe = twill_bin();
    let bin_dir = twill_exe.parent().unwrap().to_path_buf();
    let pm = Podman::new();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let name = pm.dir.file_name().unwrap().to_string_lossy().into_owned();
    let (v1, v2) = (format!("localhost/{name}:1"), format!("localhost/{name}:2"));

    // The image, then a second one on top of it (another ID) for the upgrade.
    let t0 = std::time::Instant::now();
    let build = pm
        .cmd(repo.join("scripts/image.sh").to_str().unwrap())
        .args(["--bin-dir", bin_dir.to_str().unwrap(), "--tag", &v1])
        .output()
        .unwrap();
    assert!(build.status.success(), "image.sh: {}", text(&build));
    let id1 = pm.ok(&["image", "inspect", "--format", "{{.Id}}", &v1]);
    let ctx = pm.dir.join("upgrade");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Containerfile"),
        format!("FROM {v1}\nLABEL org.opencontainers.image.revision=upgrade-test\n"),
    )
    .unwrap();
    pm.ok(&[
        "build",
        "--quiet",
        "--pull=never",
        "--tag",
        &v2,
        ctx.to_str().unwrap(),
    ]);
    let id2 = pm.ok(&["image", "inspect", "--format", "{{.Id}}", &v2]);
    assert_ne!(id1, id2);
    let version = pm.ok(&["run", "--rm", "--network", "none", &v1, "--version"]);
    assert!(version.starts_with("twilld "), "{version}");
    eprintln!("images built: {:.1} s", t0.elapsed().as_secs_f64());
    let t0 = std::time::Instant::now();

    // The host's CNI bin dir (empty: the init step fills it), the network config the
    // ConfigMap would hold, the wrapper.
    let cni_bin_dir = pm.dir.join("opt-cni-bin");
    std::fs::create_dir_all(&cni_bin_dir).unwrap();
    let nc = pm.dir.join("network-config.yaml");
    std::fs::write(
        &nc,
        "kind: NetworkConfig\nspec:\n  clusterCIDR: 10.244.0.0/16\n  backend: vxlan\n",
    )
    .unwrap();
    std::fs::write(pm.dir.join("agent-image"), &v1).unwrap();
    let agent = pm.dir.join("bin/twilld");
    std::fs::create_dir_all(agent.parent().unwrap()).unwrap();
    std::fs::write(&agent, wrapper(&pm, &cni_bin_dir, &nc)).unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let plugin = cni_bin_dir.join("twill-cni");

    let lab = Lab::up(
        'i',
        &[
            "--store",
            "etcd",
            "--nodes",
            "2",
            "--pods-per-node",
            "1",
            "--twilld-bin",
            agent.to_str().unwrap(),
            "--cni-bin",
            plugin.to_str().unwrap(),
        ],
    );
    eprintln!(
        "lab up with podman agents: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // The init step installed the plugin (the image's, byte for byte) and each node's
    // conflist; the pods were wired with them.
    let probe = pm.ok(&["create", "--name", &format!("{name}-cp"), &v1]);
    let from_image = pm.dir.join("image-twill-cni");
    pm.ok(&[
        "cp",
        &format!("{probe}:/usr/local/bin/twill-cni"),
        from_image.to_str().unwrap(),
    ]);
    pm.ok(&["rm", &probe]);
    assert_eq!(
        std::fs::read(&plugin).unwrap(),
        std::fs::read(&from_image).unwrap(),
        "the installed plugin is not the image's twill-cni"
    );
    for n in ["n1", "n2"] {
        let dir = PathBuf::from("/run").join(&lab.name).join(n);
        let log = std::fs::read_to_string(dir.join("twilld.log")).unwrap();
        let conflist = dir.join("10-twill.conflist");
        assert!(
            log.contains(&format!("installed {}", conflist.display())),
            "{n}: install-cni did not write {}:\n{log}",
            conflist.display()
        );
        let c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
        assert_eq!(c["plugins"][0]["type"], "twill-cni", "{c}");
        assert_eq!(
            c["plugins"][0]["ipam"]["handoffFile"],
            dir.join("node.json").display().to_string(),
            "{c}"
        );
        let running = pm.ok(&[
            "inspect",
            "--format",
            "{{.Image}} {{.HostConfig.CapAdd}}",
            &format!("{}-agent", lab.ns(n)),
        ]);
        assert!(running.starts_with(&id1), "{n}: {running}");
    }
    lab.check_all_pass();

    // Upgrade n1's agent to v2 under a ping flood both ways (10 ms apart), from before the
    // old agent stops until after the new one is ready (SIGINT ends it with its summary).
    let (a, b) = (pod_ip(&lab, "n1-p1"), pod_ip(&lab, "n2-p1"));
    let flood = |from: &str, to: &str| {
        Command::new("ip")
            .args(["netns", "exec", &lab.ns(from), "ping", "-n", "-q"])
            .args(["-i", "0.01", "-w", "120", "-W", "1", to])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (out, back) = (flood("n1-p1", &b), flood("n2-p1", &a));
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(pm.dir.join("agent-image"), &v2).unwrap();
    let t1 = std::time::Instant::now();
    let restart = twill(&["lab", "restart-agent", "--name", &lab.name, "n1"]);
    assert!(
        restart.status.success(),
        "restart-agent: {}",
        text(&restart)
    );
    eprintln!(
        "n1's agent container replaced and ready again in {:.1} s",
        t1.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(1000));
    for p in [&out, &back] {
        // SAFETY: kill(2) on our own child (ip netns exec execs ping in place).
        unsafe { libc::kill(p.id() as libc::pid_t, libc::SIGINT) };
    }
    let (out, back) = (
        out.wait_with_output().unwrap(),
        back.wait_with_output().unwrap(),
    );
    let running = pm.ok(&[
        "inspect",
        "--format",
        "{{.Image}}",
        &format!("{}-agent", lab.ns("n1")),
    ]);
    assert!(running.starts_with(&id2), "n1 runs {running}, not {v2}");
    let other = pm.ok(&[
        "inspect",
        "--format",
        "{{.Image}}",
        &format!("{}-agent", lab.ns("n2")),
    ]);
    assert!(other.starts_with(&id1), "n2 runs {other}");
    let mut lost_total = 0;
    for (what, o) in [("n1-p1 -> n2-p1", &out), ("n2-p1 -> n1-p1", &back)] {
        let (sent, got) = ping_counts(&String::from_utf8_lossy(&o.stdout));
        let lost = sent - got;
        lost_total += lost;
        eprintln!(
            "upgrade of n1's agent container ({v1} -> {v2}) under a ping flood {what}: \
             {sent} sent, {got} received, {lost} lost (gap about {} ms)",
            lost * 10
        );
        assert!(sent > 100 && got > 0, "{what}: {}", text(o));
    }
    // The datapath stays while the agent is replaced: a handful of pings at most.
    assert!(
        lost_total <= 20,
        "{lost_total} pings lost across the upgrade"
    );
    lab.check_all_pass();
}
