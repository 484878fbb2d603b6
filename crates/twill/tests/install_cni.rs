//! `twill install-cni` on real folders: what it writes (atomically, with the modes a
//! runtime needs), what it leaves alone, what bad input leaves behind (nothing), and what
//! `--uninstall` removes (exactly what install wrote).

mod common;

use common::{text, TWILL};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use twill_testkit::{workspace_bin, TempDir};

fn plugin() -> PathBuf {
    workspace_bin("twill-cni", "twill-cni")
}

struct Dirs {
    tmp: TempDir,
}

impl Dirs {
    fn new(tag: &str) -> Dirs {
        Dirs {
            tmp: TempDir::new(tag),
        }
    }
    fn bin(&self) -> PathBuf {
        self.tmp.path.join("opt/cni/bin")
    }
    fn net(&self) -> PathBuf {
        self.tmp.path.join("etc/cni/net.d")
    }
    fn handoff(&self) -> PathBuf {
        self.tmp.path.join("run/node.json")
    }
    fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.tmp.path.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        p
    }
    /// twill install-cni into these dirs, with `extra` flags.
    fn install(&self, extra: &[&str]) -> Output {
        let (bin, net, handoff) = (self.bin(), self.net(), self.handoff());
        let mut args = vec![
            "install-cni",
            "--cni-bin-dir",
            bin.to_str().unwrap(),
            "--cni-net-dir",
            net.to_str().unwrap(),
            "--handoff-file",
            handoff.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        clean_env(Command::new(TWILL).args(&args))
            .output()
            .expect("run twill")
    }
    fn conflist(&self) -> Value {
        serde_json::from_slice(&fs::read(self.net().join("10-twill.conflist")).unwrap()).unwrap()
    }
}

/// No TWILL_* setting of the caller's reaches the command.
fn clean_env(c: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TWILL_") {
            c.env_remove(k);
        }
    }
    c
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn installs_the_plugin_and_a_conflist_that_sorts_first_leaving_the_rest() {
    let d = Dirs::new("twlicA");
    let plugin = plugin();
    let other = d.file("etc/cni/net.d/87-podman-bridge.conflist", "{\"x\":1}\n");
    let other_bin = d.file("opt/cni/bin/bridge", "not ours");
    let o = d.install(&["--plugin", plugin.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let (bin, conf) = (d.bin().join("twill-cni"), d.net().join("10-twill.conflist"));
    assert_eq!(
        stdout(&o),
        format!(
            "installed {}\ninstalled {}\n",
            bin.display(),
            conf.display()
        )
    );
    assert!(stderr(&o).is_empty(), "no warning: {}", text(&o));
    assert_eq!(fs::read(&bin).unwrap(), fs::read(&plugin).unwrap());
    assert_eq!((mode(&bin), mode(&conf)), (0o755, 0o644));
    // No hand-off, no network config: twill-cni takes everything from the hand-off at ADD.
    let c = d.conflist();
    assert_eq!(c["name"], "twill");
    let p = &c["plugins"][0];
    assert_eq!(p["type"], "twill-cni");
    assert_eq!(p["ipam"]["handoffFile"], d.handoff().display().to_string());
    assert_eq!(p["ipam"]["dataDir"], "/var/lib/twill/ipam");
    assert_eq!(p["capabilities"]["portMappings"], true);
    for pinned in ["mtu", "podWiring", "clusterCIDR", "ipMasq"] {
        assert!(p.get(pinned).is_none(), "{pinned} is left to the hand-off");
    }
    // The others are untouched, and no temporary is left.
    assert_eq!(fs::read_to_string(&other).unwrap(), "{\"x\":1}\n");
    assert_eq!(fs::read_to_string(&other_bin).unwrap(), "not ours");
    assert_eq!(
        tree(&d.tmp.path),
        [
            "etc/cni/net.d/10-twill.conflist",
            "etc/cni/net.d/87-podman-bridge.conflist",
            "opt/cni/bin/bridge",
            "opt/cni/bin/twill-cni"
        ]
    );
    // Again: nothing changes, not even the files' inodes.
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let before = (inode(&bin), inode(&conf));
    let o = d.install(&["--plugin", plugin.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        stdout(&o),
        format!(
            "unchanged {}\nunchanged {}\n",
            bin.display(),
            conf.display()
        )
    );
    assert_eq!((inode(&bin), inode(&conf)), before);
    // A config that sorts first is named (the runtime would use it), and left alone.
    let first = d.file("etc/cni/net.d/05-first.conf", "{}");
    let o = d.install(&["--plugin", plugin.to_str().unwrap(), "--no-host-ports"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stderr(&o).contains(&format!(
            "warning: {} sorts before 10-twill.conflist",
            first.display()
        )),
        "{}",
        text(&o)
    );
    assert_eq!(
        stdout(&o),
        format!(
            "unchanged {}\ninstalled {}\n",
            bin.display(),
            conf.display()
        )
    );
    assert!(d.conflist()["plugins"][0]["capabilities"]
        .get("portMappings")
        .is_none());
    assert!(first.exists());
}

#[test]
fn takes_its_dirs_from_the_environment_and_the_plugin_from_next_to_twill() {
    let d = Dirs::new("twlicB");
    // A twill with a twill-cni beside it, as in an image.
    let usr = d.tmp.path.join("usr/bin");
    fs::create_dir_all(&usr).unwrap();
    fs::copy(TWILL, usr.join("twill")).unwrap();
    fs::copy(plugin(), usr.join("twill-cni")).unwrap();
    let o = clean_env(&mut Command::new(usr.join("twill")))
        .arg("install-cni")
        .env("TWILL_CNI_BIN_DIR", d.bin())
        .env("TWILL_CNI_NET_DIR", d.net())
        .env("TWILL_HANDOFF_FILE", d.handoff())
        .env("TWILL_CNI_DATA_DIR", "/var/lib/twl-ic/ipam")
        .env("TWILL_CNI_NETWORK", "pods")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fs::read(d.bin().join("twill-cni")).unwrap(),
        fs::read(usr.join("twill-cni")).unwrap()
    );
    let c = d.conflist();
    assert_eq!(c["name"], "pods");
    assert_eq!(c["plugins"][0]["ipam"]["dataDir"], "/var/lib/twl-ic/ipam");
}

const HANDOFF: &str = r#"{"node":"n1","clusterCIDR":"10.244.0.0/16","blocks":["10.244.3.0/24"],
  "mtu":1450,"ipMasq":false,"podWiring":"bridge"}"#;

#[test]
fn the_network_config_and_the_hand_off_fill_the_conflist() {
    let d = Dirs::new("twlicC");
    let plugin = plugin();
    let plugin = plugin.to_str().unwrap();
    // The hand-off alone: its wiring, CIDR and masquerade; the MTU stays the hand-off's.
    d.file("run/node.json", HANDOFF);
    let o = d.install(&["--plugin", plugin]);
    assert!(o.status.success(), "{}", text(&o));
    let p = d.conflist()["plugins"][0].clone();
    assert_eq!(
        (
            &p["podWiring"],
            &p["bridge"],
            &p["clusterCIDR"],
            &p["ipMasq"]
        ),
        (
            &"bridge".into(),
            &"twl0".into(),
            &"10.244.0.0/16".into(),
            &false.into()
        )
    );
    assert!(p.get("mtu").is_none());
    // The network config (a resource file, as `twill apply -f` takes) wins.
    let cfg = d.file(
        "cfg.yaml",
        "kind: NetworkConfig\nmetadata:\n  name: default\nspec:\n  clusterCIDR: 10.245.0.0/16\n  podWiring: l3\n  masquerade: true\n",
    );
    let o = d.install(&[
        "--plugin",
        plugin,
        "--network-config",
        cfg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let p = d.conflist()["plugins"][0].clone();
    assert_eq!(
        (&p["podWiring"], &p["clusterCIDR"], &p["ipMasq"]),
        (&"l3".into(), &"10.245.0.0/16".into(), &true.into())
    );
    assert!(p.get("bridge").is_none(), "l3 has no bridge");
    // A template gets the hand-off's MTU, and keeps a chained plugin.
    let t = d.file(
        "t.json",
        r#"{"cniVersion":"1.0.0","name":"{{CNI_NETWORK}}","plugins":[
          {"type":"twill-cni","mtu":{{MTU}},"podWiring":"{{POD_WIRING}}",
           "ipam":{"type":"twill","handoffFile":"{{HANDOFF_FILE}}"}},
          {"type":"bandwidth","capabilities":{"bandwidth":true}}]}"#,
    );
    let o = d.install(&["--plugin", plugin, "--template", t.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let c = d.conflist();
    assert_eq!(c["cniVersion"], "1.0.0");
    assert_eq!(c["plugins"][0]["mtu"], 1450);
    assert_eq!(c["plugins"][0]["podWiring"], "bridge");
    assert_eq!(c["plugins"][1]["type"], "bandwidth");
}

#[test]
fn bad_input_is_refused_naming_the_cause_and_writes_nothing() {
    let d = Dirs::new("twlicD");
    let plugin = plugin();
    let plugin = plugin.to_str().unwrap();
    let bad_field = d.file(
        "bad-field.json",
        r#"{"cniVersion":"1.1.0","name":"twill","plugins":[{"type":"twill-cni","mtu":10,"ipam":{}}]}"#,
    );
    let unknown = d.file("unknown.json", "{\"name\": \"{{NODE}}\"}");
    let mtu = d.file(
        "mtu.json",
        r#"{"cniVersion":"1.1.0","name":"twill","plugins":[{"type":"twill-cni","mtu":{{MTU}},"ipam":{}}]}"#,
    );
    let no_twill = d.file(
        "no-twill.json",
        r#"{"cniVersion":"1.1.0","name":"twill","plugins":[{"type":"bridge"}]}"#,
    );
    let not_elf = d.file("not-elf", "#!/bin/sh\n");
    let no_config = d.file("nocfg.yaml", "kind: Namespace\nmetadata:\n  name: a\n");
    let bad_config = d.file(
        "badcfg.yaml",
        "kind: NetworkConfig\nmetadata:\n  name: default\nspec:\n  clusterCIDR: 10.244.0.0/33\n",
    );
    let t = |p: &PathBuf| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--template".into(), t(&bad_field)],
            format!(
                "template {}: field \"plugins[0]\": field \"mtu\"",
                bad_field.display()
            ),
        ),
        (
            vec!["--template".into(), t(&unknown)],
            "line 1: {{NODE}} is not a placeholder".into(),
        ),
        (
            vec!["--template".into(), t(&mtu)],
            "{{MTU}} has no value here".into(),
        ),
        (
            vec!["--template".into(), t(&no_twill)],
            "no plugin has \"type\": \"twill-cni\"".into(),
        ),
        (
            vec![
                "--template".into(),
                d.tmp.path.join("absent.json").display().to_string(),
            ],
            "reading the template".into(),
        ),
        (
            vec!["--plugin".into(), t(&not_elf)],
            "is not an executable (no ELF header)".into(),
        ),
        (
            vec![
                "--plugin".into(),
                d.tmp.path.join("absent").display().to_string(),
            ],
            "cannot open the plugin".into(),
        ),
        (
            vec!["--network-config".into(), t(&no_config)],
            "holds no NetworkConfig".into(),
        ),
        (
            vec!["--network-config".into(), t(&bad_config)],
            "clusterCIDR".into(),
        ),
        (
            vec!["--cni-data-dir".into(), "relative/ipam".into()],
            "field \"plugins[0]\": field \"ipam.dataDir\": relative/ipam must be an absolute path"
                .into(),
        ),
    ];
    let check_all = |expect_tree: &[String]| {
        for (extra, want) in &cases {
            let mut args: Vec<&str> = extra.iter().map(String::as_str).collect();
            if !args.contains(&"--plugin") {
                args.extend(["--plugin", plugin]);
            }
            let o = d.install(&args);
            assert_eq!(o.status.code(), Some(1), "{extra:?}: {}", text(&o));
            let err = stderr(&o);
            assert!(
                err.contains(want) && err.contains("nothing was written"),
                "{extra:?}: wanted {want:?}; {}",
                text(&o)
            );
            assert!(stdout(&o).is_empty(), "{}", text(&o));
            assert_eq!(tree(&d.tmp.path), expect_tree, "{extra:?} left something");
        }
    };
    // On a fresh node: not even the folders are made.
    let inputs = tree(&d.tmp.path);
    check_all(&inputs);
    assert!(!d.bin().exists() && !d.net().exists());
    // Over a good install: it stays as it was.
    assert!(d.install(&["--plugin", plugin]).status.success());
    let good = fs::read(d.net().join("10-twill.conflist")).unwrap();
    check_all(&tree(&d.tmp.path));
    assert_eq!(fs::read(d.net().join("10-twill.conflist")).unwrap(), good);
    // A hand-off that is there but not one (every ADD would fail on it too).
    d.file("run/node.json", "{\"node\":");
    let o = d.install(&["--plugin", plugin]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("is not a Twill hand-off file"),
        "{}",
        text(&o)
    );
    // A usage error is exit 2.
    let o = d.install(&["--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn uninstall_removes_exactly_what_install_wrote() {
    let d = Dirs::new("twlicE");
    let plugin = plugin();
    let other = d.file("etc/cni/net.d/87-podman-bridge.conflist", "{}");
    let other_bin = d.file("opt/cni/bin/bridge", "x");
    assert!(d
        .install(&["--plugin", plugin.to_str().unwrap()])
        .status
        .success());
    // A temporary of an install killed before its rename (nobody holds its flock), and one
    // of an install still running (its flock held, here by this test): only the first goes.
    let stale = d.file("opt/cni/bin/.twill-cni.tmp-0123456789abcdef", "partial");
    let live = d.file(
        "etc/cni/net.d/.10-twill.conflist.tmp-fedcba9876543210",
        "partial",
    );
    let held = fs::File::open(&live).unwrap();
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) },
        0
    );
    let o = d.install(&["--uninstall"]);
    assert!(o.status.success(), "{}", text(&o));
    let (bin, conf) = (d.bin().join("twill-cni"), d.net().join("10-twill.conflist"));
    assert_eq!(
        stdout(&o),
        format!(
            "removed {}\nremoved {}\nremoved {}\n",
            conf.display(),
            bin.display(),
            stale.display()
        )
    );
    assert!(other.exists() && other_bin.exists() && live.exists());
    assert!(d.bin().is_dir() && d.net().is_dir(), "the folders stay");
    let o = d.install(&["--uninstall"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stdout(&o), "nothing to remove\n");
    // A file of the same name that is not Twill's is left, with a word.
    let users = d.file(
        "etc/cni/net.d/10-twill.conflist",
        r#"{"cniVersion":"1.0.0","name":"mine","plugins":[{"type":"bridge"}]}"#,
    );
    let o = d.install(&["--uninstall"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(users.exists());
    assert!(
        stderr(&o).contains("is not Twill's conflist (no twill-cni plugin in it): left in place"),
        "{}",
        text(&o)
    );
}

/// Two init containers installing into the same host folders at once (two pods of the
/// DaemonSet during a rollout), each PID 1 in its own PID namespace: with temporaries named
/// by PID they shared one, and one install failed or renamed the other's half-written file.
#[test]
fn two_installs_at_once_each_pid_1_in_its_namespace_both_succeed() {
    twill_testkit::require_root("two_installs_at_once_each_pid_1_in_its_namespace_both_succeed");
    twill_testkit::require_program(
        "two_installs_at_once_each_pid_1_in_its_namespace_both_succeed",
        "unshare",
        "util-linux",
    );
    let d = Dirs::new("twlicP");
    let plugin = plugin();
    let (bin, conf) = (d.bin().join("twill-cni"), d.net().join("10-twill.conflist"));
    let want = fs::read(&plugin).unwrap();
    for round in 0..4 {
        let _ = fs::remove_file(&bin);
        let _ = fs::remove_file(&conf);
        let (b, n, h) = (d.bin(), d.net(), d.handoff());
        let start = || {
            clean_env(Command::new("unshare").args(["--pid", "--fork", "--kill-child"]))
                .arg(TWILL)
                .args(["install-cni", "--cni-bin-dir", b.to_str().unwrap()])
                .args(["--cni-net-dir", n.to_str().unwrap()])
                .args(["--handoff-file", h.to_str().unwrap()])
                .args(["--plugin", plugin.to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (first, second) = (start(), start());
        for o in [first.wait_with_output(), second.wait_with_output()] {
            let o = o.unwrap();
            assert!(o.status.success(), "round {round}: {}", text(&o));
        }
        assert_eq!(
            fs::read(&bin).unwrap(),
            want,
            "round {round}: the plugin is whole"
        );
        assert!(
            fs::read(&conf).is_ok_and(|c| c.starts_with(b"{")),
            "round {round}"
        );
        for dir in [d.bin(), d.net()] {
            let left: Vec<_> = fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().contains(".tmp-"))
                .collect();
            assert!(left.is_empty(), "round {round}: temporaries left: {left:?}");
        }
    }
}
