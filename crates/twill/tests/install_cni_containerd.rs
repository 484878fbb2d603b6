//! A real container runtime reads what `twill install-cni` wrote: containerd 1.6 (started
//! by hand, all its state in a `twl…` folder) runs two busybox containers with
//! `ctr run --cni` on the conflist and plugin that install-cni put into temporary CNI
//! dirs, against a real twilld on an embedded store. Both containers get addresses from
//! the blocks twilld holds and ping each other. Everything runs in a test namespace (the
//! bridge and veths land where ctr runs: CNI runs in ctr itself), and everything outside
//! the test folder (shim sockets, cgroups, libcni's result cache) is removed on every
//! exit, failures included. See RUNBOOK "4. containerd 1.6 + ctr run --cni".

mod common;

use common::{text, TWILL};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use twill_api::resources::HandOff;
use twill_testkit::{require_program, require_root, workspace_bin, TempDir, TestNetns};

const IMAGE: &str = "docker.io/library/twlic-bb:latest";

/// RUNBOOK's mkoci.py: an OCI layout archive of one uncompressed layer holding busybox.
const MKOCI: &str = r#"
import hashlib, io, json, sys, tarfile
def ent(tf, fn, data=b'', **kw):
    ti = tarfile.TarInfo(fn); ti.size = len(data)
    for k, v in kw.items(): setattr(ti, k, v)
    tf.addfile(ti, io.BytesIO(data))
def blob(tf, mt, obj):
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    d = 'sha256:' + hashlib.sha256(data).hexdigest(); ent(tf, 'blobs/sha256/' + d[7:], data)
    return {'mediaType': mt, 'digest': d, 'size': len(data)}
lb = io.BytesIO()
with tarfile.open(fileobj=lb, mode='w') as lt:
    for d in ('bin', 'etc', 'tmp', 'proc', 'sys', 'dev', 'sync'): ent(lt, d, type=tarfile.DIRTYPE, mode=0o755)
    lt.add('/bin/busybox', 'bin/busybox')
    for a in ('sh', 'ip', 'ping', 'sleep', 'cat', 'ls'):
        ent(lt, 'bin/' + a, type=tarfile.SYMTYPE, linkname='busybox')
V, name = 'application/vnd.oci.image.', sys.argv[2]
with tarfile.open(sys.argv[1], 'w') as tf:
    L = blob(tf, V + 'layer.v1.tar', lb.getvalue())
    C = blob(tf, V + 'config.v1+json', {'architecture': 'amd64', 'os': 'linux', 'config': {
        'Cmd': ['/bin/sh'], 'Env': ['PATH=/bin']}, 'rootfs': {'type': 'layers', 'diff_ids': [L['digest']]}})
    M = blob(tf, V + 'manifest.v1+json', {'schemaVersion': 2, 'mediaType': V + 'manifest.v1+json',
                                          'config': C, 'layers': [L]})
    M['annotations'] = {'io.containerd.image.name': name, 'org.opencontainers.image.ref.name': name}
    ent(tf, 'oci-layout', b'{"imageLayoutVersion":"1.0.0"}')
    ent(tf, 'index.json', json.dumps({'schemaVersion': 2, 'manifests': [M]}).encode())
"#;

/// Everything the test made, torn down in order on drop: the containers (through
/// containerd, while it runs), containerd, twilld, mounts left under the folder, the shim
/// sockets, the cgroups and libcni's cache entries of the test's ctr namespace and CNI
/// network; then the namespace (its bridge, veths and nft tables) and the folder.
struct Rig {
    dir: TempDir,
    ns: TestNetns,
    /// ctr's namespace and the CNI network name: `twlic<hex>`.
    name: String,
    containerd: Option<Child>,
    twilld: Option<Child>,
    /// Background `ctr run` processes.
    runs: Vec<Child>,
    /// /run/containerd/s existed before the test (else it is removed when empty).
    had_shim_dir: bool,
    had_run_containerd: bool,
    had_var_lib_cni: bool,
}

impl Rig {
    fn d(&self, rel: &str) -> PathBuf {
        self.dir.path.join(rel)
    }
    fn sock(&self) -> PathBuf {
        self.d("ctrd.sock")
    }
    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(self.sock())
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("run ctr")
    }
    /// `ctr run --rm --cni` inside the test namespace, in a private mount namespace where
    /// the CNI dirs install-cni wrote are bound over the ones ctr reads (ctr 1.6 has no
    /// flags for them: /etc/cni/net.d, and CNI_PATH=/opt/cni/bin:/usr/lib/cni).
    fn run_cmd(&self, id: &str, script: &str) -> Command {
        let mut binds = format!("mount --bind {} /etc/cni/net.d", self.d("net.d").display());
        for plugin_dir in ["/opt/cni/bin", "/usr/lib/cni"] {
            if Path::new(plugin_dir).is_dir() {
                binds += &format!(" && mount --bind {} {plugin_dir}", self.d("bin").display());
            }
        }
        let ctr = format!(
            "exec ctr -a {} -n {} run --rm --cni --runc-root {} --fifo-dir {} --mount type=bind,src={},dst=/sync,options=rbind:rw {IMAGE} {id} sh -c \"{script}\"",
            self.sock().display(),
            self.name,
            self.d("runc").display(),
            self.d("fifo").display(),
            self.d("sync").display(),
        );
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.ns.name,
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
        ])
        .arg(format!("{binds} && {ctr}"));
        c
    }
    /// The shim socket containerd 1.6 makes for container `id`:
    /// /run/containerd/s/<sha256(address/namespace/id)>.
    fn shim_socket(&self, id: &str) -> PathBuf {
        let key = format!("{}/{}/{id}", self.sock().display(), self.name);
        let out = Command::new("sh")
            .args(["-c", "printf %s \"$1\" | sha256sum", "sh", &key])
            .output()
            .expect("run sha256sum");
        let hex = String::from_utf8_lossy(&out.stdout);
        Path::new("/run/containerd/s").join(hex.split_whitespace().next().unwrap_or("none"))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if self.containerd.is_some() {
            for id in ["c1", "c2"] {
                let _ = self.ctr(&["task", "kill", "-s", "KILL", id]);
            }
            std::thread::sleep(Duration::from_millis(200));
            for id in ["c1", "c2"] {
                let _ = self.ctr(&["task", "delete", "-f", id]);
                let _ = self.ctr(&["container", "rm", id]);
            }
        }
        for mut c in self.runs.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for c in [self.containerd.take(), self.twilld.take()]
            .into_iter()
            .flatten()
        {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        // Rootfs and snapshot mounts containerd left under the folder, deepest first.
        let prefix = self.dir.path.display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        for id in ["c1", "c2"] {
            let _ = std::fs::remove_file(self.shim_socket(id));
        }
        if !self.had_shim_dir {
            let _ = std::fs::remove_dir("/run/containerd/s");
        }
        if !self.had_run_containerd {
            let _ = std::fs::remove_dir("/run/containerd");
        }
        // cgroups v1 (every controller) and v2: /<ctr namespace>/<container>.
        for ctl in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let ns_dir = ctl.path().join(&self.name);
            for id in ["c1", "c2"] {
                let _ = std::fs::remove_dir(ns_dir.join(id));
            }
            let _ = std::fs::remove_dir(&ns_dir);
        }
        // libcni's result cache: /var/lib/cni/results/<network>-<container id>-<ifname>.
        let results = Path::new("/var/lib/cni/results");
        for e in std::fs::read_dir(results).into_iter().flatten().flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{}-", self.name))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
        if !self.had_var_lib_cni {
            let _ = std::fs::remove_dir(results);
            let _ = std::fs::remove_dir("/var/lib/cni");
        }
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The address of `eth0` in `ip -4 addr show eth0` output.
fn inet(out: &str) -> Option<(Ipv4Addr, u8)> {
    let cidr = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("inet "))?
        .split_whitespace()
        .next()?;
    let (a, len) = cidr.split_once('/')?;
    Some((a.parse().ok()?, len.parse().ok()?))
}

#[test]
fn containerd_runs_pods_on_what_install_cni_wrote() {
    let test = "containerd_runs_pods_on_what_install_cni_wrote";
    require_root(test);
    for (p, pkg) in [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("python3", "python3"),
    ] {
        require_program(test, p, pkg);
    }
    assert!(
        Path::new("/bin/busybox").is_file(),
        "{test}: /bin/busybox missing: apt-get install busybox-static"
    );
    let plugin = workspace_bin("twill-cni", "twill-cni");
    let twilld = workspace_bin("twilld", "twilld");
    let started = Instant::now();
    let dir = TempDir::new("ic");
    let ns = TestNetns::new("ic");
    let name = format!("twlic{:x}", std::process::id() & 0xfffff);
    let mut rig = Rig {
        dir,
        ns,
        name,
        containerd: None,
        twilld: None,
        runs: Vec::new(),
        had_shim_dir: Path::new("/run/containerd/s").exists(),
        had_run_containerd: Path::new("/run/containerd").exists(),
        had_var_lib_cni: Path::new("/var/lib/cni").exists(),
    };
    for sub in ["sync", "runc", "fifo"] {
        std::fs::create_dir_all(rig.d(sub)).unwrap();
    }

    // The network config, as the DaemonSet's ConfigMap holds it.
    let cfg = rig.d("network.yaml");
    std::fs::write(
        &cfg,
        "kind: NetworkConfig\nmetadata:\n  name: default\nspec:\n  clusterCIDR: 10.244.0.0/16\n  blockSize: 26\n",
    )
    .unwrap();
    let store_dir = rig.d("store");
    let o = Command::new(TWILL)
        .args(["--store", "embedded", "--store-dir"])
        .arg(&store_dir)
        .args(["apply", "-f"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "twill apply: {}", text(&o));

    // The init step: before the agent runs, so there is no hand-off yet.
    let handoff = rig.d("run/node.json");
    let o = Command::new(TWILL)
        .arg("install-cni")
        .arg("--cni-bin-dir")
        .arg(rig.d("bin"))
        .arg("--cni-net-dir")
        .arg(rig.d("net.d"))
        .arg("--plugin")
        .arg(&plugin)
        .arg("--network-config")
        .arg(&cfg)
        .arg("--handoff-file")
        .arg(&handoff)
        .arg("--cni-data-dir")
        .arg(rig.d("ipam"))
        .args(["--cni-network", &rig.name])
        .output()
        .unwrap();
    assert!(o.status.success(), "install-cni: {}", text(&o));

    // The agent, in the node's namespace.
    let log = std::fs::File::create(rig.d("twilld.log")).unwrap();
    rig.twilld = Some(
        Command::new("ip")
            .args(["netns", "exec", &rig.ns.name])
            .arg(&twilld)
            .args([
                "--node-name",
                "twlic-n1",
                "--store",
                "embedded",
                "--node-ip",
                "192.0.2.11",
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--store-dir")
            .arg(&store_dir)
            .arg("--handoff-file")
            .arg(&handoff)
            .arg("--state-dir")
            .arg(rig.d("agent"))
            .arg("--cni-data-dir")
            .arg(rig.d("ipam"))
            .args(["--cni-network", &rig.name, "--poll-interval-seconds", "0.2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start twilld"),
    );

    // containerd, by hand (RUNBOOK), everything under the folder.
    let d = rig.dir.path.display().to_string();
    std::fs::write(
        rig.d("config.toml"),
        format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{d}/ctrd.sock\"\n[ttrpc]\n  address = \"{d}/ctrd.sock.ttrpc\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(rig.d("containerd.log")).unwrap();
    rig.containerd = Some(
        Command::new("containerd")
            .arg("--config")
            .arg(rig.d("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd"),
    );
    let containerd_log_file = rig.d("containerd.log");
    let containerd_log = || std::fs::read_to_string(&containerd_log_file).unwrap_or_default();
    wait_for("containerd to answer", Duration::from_secs(10), || {
        rig.ctr(&["version"]).status.success().then_some(())
    });
    let tar = rig.d("bb.tar");
    let o = Command::new("python3")
        .args(["-c", MKOCI])
        .arg(&tar)
        .arg(IMAGE)
        .output()
        .unwrap();
    assert!(o.status.success(), "mkoci: {}", text(&o));
    let o = rig.ctr(&["image", "import", tar.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "ctr image import: {}\n{}",
        text(&o),
        containerd_log()
    );

    let h: HandOff = wait_for(
        "twilld's hand-off with a block",
        Duration::from_secs(15),
        || {
            let h: HandOff = serde_json::from_slice(&std::fs::read(&handoff).ok()?).ok()?;
            (!h.blocks.is_empty()).then_some(h)
        },
    );
    let twilld_log_file = rig.d("twilld.log");
    let twilld_log = || std::fs::read_to_string(&twilld_log_file).unwrap_or_default();

    // Pod 1 stays up until /sync/go appears; its output tells its address.
    let mut c1 = rig
        .run_cmd(
            "c1",
            "ip -4 addr show eth0; while [ ! -e /sync/go ]; do sleep 0.1; done; echo c1 done",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ctr for c1");
    let (tx, rx) = mpsc::channel();
    let out = c1.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut err1 = c1.stderr.take().unwrap();
    rig.runs.push(c1);
    let mut c1_out = String::new();
    let end = Instant::now() + Duration::from_secs(20);
    let a1 = loop {
        if let Some(a) = inet(&c1_out) {
            break a;
        }
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                c1_out.push_str(&line);
                c1_out.push('\n');
            }
            Err(_) => {
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(&mut err1, &mut err);
                panic!(
                    "c1 printed no address: stdout {c1_out:?}, stderr {err:?}\n--- containerd\n{}\n--- twilld\n{}",
                    containerd_log(),
                    twilld_log()
                );
            }
        }
    };

    // Pod 2 pings pod 1, then exits (ctr --rm runs DEL).
    let o = rig
        .run_cmd(
            "c2",
            &format!("ip -4 addr show eth0; ping -c 3 -w 10 {}", a1.0),
        )
        .output()
        .unwrap();
    let out2 = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && out2.contains("3 packets transmitted, 3 packets received"),
        "c2 could not ping c1 ({}): {}\n--- twilld\n{}",
        a1.0,
        text(&o),
        twilld_log()
    );
    let a2 = inet(&out2).expect("c2's address");
    assert_ne!(a1.0, a2.0);
    for (who, (a, _)) in [("c1", a1), ("c2", a2)] {
        assert!(
            h.blocks.iter().any(|b| b.contains(&a)),
            "{who}'s {a} is in none of twilld's blocks {:?}",
            h.blocks
        );
    }
    // The pods' veths are on twill-cni's bridge in the node's namespace.
    let (_, links, _) = rig
        .ns
        .try_exec(&["ip", "-o", "link", "show", "master", "twl0"]);
    assert!(!links.trim().is_empty(), "nothing on twl0");

    // Pod 1 ends; ctr --rm runs DEL for both: their veths are gone.
    std::fs::write(rig.d("sync/go"), "").unwrap();
    let mut c1 = rig.runs.pop().unwrap();
    let status = wait_for("c1 to exit", Duration::from_secs(10), || {
        c1.try_wait().ok().flatten()
    });
    assert!(status.success(), "c1 ctr run: {status}");
    assert!(c1_out.contains("inet"));
    let (_, links, _) = rig
        .ns
        .try_exec(&["ip", "-o", "link", "show", "master", "twl0"]);
    assert!(links.trim().is_empty(), "DEL left veths on twl0: {links}");
    eprintln!(
        "containerd proof: {:.1} s after the binaries were built",
        started.elapsed().as_secs_f64()
    );
}
