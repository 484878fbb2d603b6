//! twill-cni under a real runtime: podman 4.3 with its CNI backend runs two containers
//! that ping each other and a third whose `-p` host port answers HTTP, then removes them;
//! the plugin's DEL must leave no veth, IPAM record or nft element behind. Once with each
//! pod wiring (bridge, l3).
//!
//! Podman runs with `nsenter --net=<test netns>` (its mount namespace stays the host's, so
//! overlay and netns bind mounts are shared between podman calls): the plugin is podman's
//! child, so the bridge, the host veths and the `ip twill` table land in the test
//! namespace, never in the root one. Everything else podman writes goes under a `twl…`
//! TempDir, except `/var/lib/cni/results` (libcni's cache) and
//! `/var/lib/containers/cache` (the blob-info cache), which the guard cleans.
//!
//! Needs `podman`, `runc`, `conmon` and `busybox-static` (crun, podman's default, fails on
//! this kernel's hybrid cgroups).

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use twill_netlink::netns::{run_in, Netns};
use twill_testkit::{sh, try_sh, unique_name, TempDir, TestNetns};

const PLUGIN: &str = env!("CARGO_BIN_EXE_twill-cni");
const HOST_PORT: u16 = 30080;
const PAGE: &str = "twill-podman-ok";
const SYSTEM_STATE: [&str; 2] = ["/var/lib/cni", "/var/lib/containers"];

/// One podman "installation" in a TempDir, bound to a test namespace, and what it made.
/// Dropping it removes the containers, the image, overlay mounts and podman's state.
struct Podman {
    dir: TempDir,
    ns: TestNetns,
    net: String,
    bridge: String,
    /// Third octet of our pod subnet 10.244.<octet>.0/24.
    octet: u8,
    image: String,
    containers: Vec<String>,
    /// System folders podman creates on first use; removed at the end if absent at start.
    system_state_existed: Vec<bool>,
    /// `podWiring` in the conflist: "bridge" or "l3".
    wiring: &'static str,
    /// For l3: the node's uplink peer (l3 pods need the node to route 169.254.1.1).
    _outside: Option<TestNetns>,
}

/// The node's uplink address in the l3 case.
const NODE_IP: &str = "192.0.2.11";

impl Podman {
    fn new(wiring: &'static str) -> Podman {
        let dir = TempDir::new("podman");
        let ns = TestNetns::new("podman");
        let outside = (wiring == "l3").then(|| {
            let out = TestNetns::new("podmanout");
            sh(&[
                "ip", "link", "add", "uplink", "netns", &ns.name, "type", "veth", "peer", "name",
                "eth0", "netns", &out.name,
            ]);
            ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{NODE_IP}/24"),
                "dev",
                "uplink",
            ]);
            ns.exec(&["ip", "link", "set", "uplink", "up"]);
            ns.exec(&["ip", "route", "add", "default", "via", "192.0.2.100"]);
            out.exec(&["ip", "addr", "add", "192.0.2.100/24", "dev", "eth0"]);
            out.exec(&["ip", "link", "set", "eth0", "up"]);
            out
        });
        let net = unique_name("pod", 40);
        let bridge = unique_name("pb", 15);
        let octet = 200 + (std::process::id() % 51) as u8;
        let image = format!("localhost/{}", unique_name("bb", 40));
        let system_state_existed = SYSTEM_STATE.iter().map(|p| Path::new(p).exists()).collect();
        let p = Podman {
            dir,
            ns,
            net,
            bridge,
            octet,
            image,
            containers: Vec::new(),
            system_state_existed,
            wiring,
            _outside: outside,
        };
        p.write_configs();
        p
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path.join(rel)
    }

    fn write_configs(&self) {
        let d = self.dir.path.display();
        for sub in ["cnibin", "cni", "tmp", "storage", "run", "ipam"] {
            std::fs::create_dir_all(self.path(sub)).unwrap();
        }
        std::os::unix::fs::symlink(PLUGIN, self.path("cnibin/twill-cni")).unwrap();
        let containers_conf = format!(
            r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
runtime = "runc"
tmp_dir = "{d}/tmp"
image_copy_tmp_dir = "{d}/tmp"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{d}/cnibin"]
network_config_dir = "{d}/cni"
"#
        );
        std::fs::write(self.path("containers.conf"), containers_conf).unwrap();
        let storage_conf = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/storage\"\nrunroot = \"{d}/run\"\n"
        );
        std::fs::write(self.path("storage.conf"), storage_conf).unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.net,
            "plugins": [{
                "type": "twill-cni",
                "podWiring": self.wiring,
                "bridge": self.bridge,
                "ipMasq": true,
                "clusterCIDR": "10.244.0.0/16",
                "capabilities": {"portMappings": true},
                "ipam": {"type": "twill", "subnet": self.subnet(), "dataDir": self.path("ipam")},
            }],
        });
        std::fs::write(
            self.path(&format!("cni/{}.conflist", self.net)),
            conflist.to_string(),
        )
        .unwrap();
    }

    fn subnet(&self) -> String {
        format!("10.244.{}.0/24", self.octet)
    }

    /// An address of the node the pods reach: the bridge's gateway, or in l3 (where no
    /// interface holds the pods' gateway 169.254.1.1) the node's uplink address.
    fn node_address(&self) -> String {
        match self.wiring {
            "l3" => NODE_IP.to_string(),
            _ => format!("10.244.{}.1", self.octet),
        }
    }

    fn prefix_len(&self) -> u8 {
        match self.wiring {
            "l3" => 32,
            _ => 24,
        }
    }

    /// `podman ARGS` inside the test namespace, with our configs in its environment only.
    fn try_run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.ns.path()))
            .arg("podman")
            .args(args)
            .env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
            .stdin(Stdio::null())
            .output()
            .expect("cannot run podman: apt-get install -y podman runc busybox-static")
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A busybox image made from /bin/busybox, imported without any registry.
    fn import_image(&self) {
        let root = self.path("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("www")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("/bin/busybox is missing: apt-get install -y busybox-static");
        for applet in ["sh", "ip", "ping", "sleep", "httpd", "nc", "wget", "cat"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(root.join("www/index.html"), PAGE).unwrap();
        let tar = self.path("rootfs.tar");
        sh(&[
            "tar",
            "-C",
            root.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ]);
        self.run(&["import", tar.to_str().unwrap(), &self.image]);
    }

    /// `podman run -d` on our network; the name is remembered for the guard.
    fn start(&mut self, tag: &str, extra: &[&str], cmd: &[&str]) -> String {
        let name = unique_name(tag, 40);
        self.containers.push(name.clone());
        let mut args = vec!["run", "-d", "--name", &name, "--network", &self.net];
        args.extend_from_slice(extra);
        args.push(&self.image);
        args.extend_from_slice(cmd);
        self.run(&args);
        name
    }

    /// The container's address as podman reports it, checked against the kernel inside it.
    fn ip_of(&self, container: &str) -> String {
        let inspect: Value = serde_json::from_str(&self.run(&["inspect", container])).unwrap();
        let ip = inspect[0]["NetworkSettings"]["Networks"][&self.net]["IPAddress"]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "no address of {container} on {} in podman inspect: {inspect}",
                    self.net
                )
            })
            .to_string();
        let inside = self.run(&["exec", container, "ip", "-4", "-o", "addr", "show", "eth0"]);
        let prefix = self.prefix_len();
        assert!(
            inside.contains(&format!("inet {ip}/{prefix}")),
            "eth0 in {container} lacks {ip}/{prefix}: {inside}"
        );
        ip
    }

    /// Host-side links in the test namespace other than lo and our bridge: the pods' veths.
    fn veths(&self) -> Vec<String> {
        let out = self.ns.exec(&["ip", "-j", "link", "show"]);
        let links: Value = serde_json::from_slice(&out.stdout).unwrap();
        links
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| !["lo", "uplink", self.bridge.as_str()].contains(n))
            .map(str::to_string)
            .collect()
    }

    /// Addresses the plugin's IPAM holds for our network.
    fn records(&self) -> Vec<String> {
        std::fs::read_dir(self.path(&format!("ipam/{}/ips", self.net)))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Elements of `ip twill`'s per-pod sets and maps that point into our subnet.
    fn nft_elements(&self) -> Vec<String> {
        let (ok, out, _) = self
            .ns
            .try_exec(&["nft", "-j", "list", "table", "ip", "twill"]);
        if !ok {
            return Vec::new();
        }
        let ours = format!("10.244.{}.", self.octet);
        let v: Value = serde_json::from_str(&out).unwrap();
        let mut found = Vec::new();
        for item in v["nftables"].as_array().unwrap() {
            for kind in ["set", "map"] {
                let Some(s) = item.get(kind) else { continue };
                let name = s["name"].as_str().unwrap_or("");
                if !["masq_pods", "hostports_ip", "hostports_any"].contains(&name) {
                    continue;
                }
                for e in s
                    .get("elem")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if e.to_string().contains(&ours) {
                        found.push(format!("{name}: {e}"));
                    }
                }
            }
        }
        found
    }

    /// libcni's cached results for our network.
    fn cni_cache(&self) -> Vec<String> {
        std::fs::read_dir("/var/lib/cni/results")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("{}-", self.net)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Mount points under our TempDir, deepest first.
    fn mounts_under_dir(&self) -> Vec<String> {
        let prefix = format!("{}/", self.dir.path.display());
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
            .map(str::to_string)
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        points
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Only what this test made: our containers and image, never `podman system reset`.
        if !self.containers.is_empty() {
            let mut args = vec!["rm", "-f", "-t", "0"];
            args.extend(self.containers.iter().map(String::as_str));
            let _ = self.try_run(&args);
        }
        let _ = self.try_run(&["rmi", "-f", &self.image]);
        for point in self.mounts_under_dir() {
            let _ = try_sh(&["umount", "-l", &point]);
        }
        // The bridge and `ip twill` belong to our test namespace (it is this test's "node"),
        // and would die with it; removed first anyway in case something holds it open.
        let _ = self.ns.try_exec(&["ip", "link", "del", &self.bridge]);
        let _ = self.ns.try_exec(&["nft", "delete", "table", "ip", "twill"]);
        for name in self.cni_cache() {
            let _ = std::fs::remove_file(Path::new("/var/lib/cni/results").join(name));
        }
        for (path, existed) in SYSTEM_STATE.iter().zip(&self.system_state_existed) {
            if !existed {
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }
}

/// GET / on `addr` from inside `ns`; the body, retried until `patience` runs out.
fn http_get(ns: &TestNetns, addr: &str, patience: Duration) -> Result<String, String> {
    let netns = Netns::open(ns.path()).unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    let deadline = Instant::now() + patience;
    loop {
        let attempt = run_in(&netns, move || -> Result<String, String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\nHost: twill\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut reply = String::new();
            s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
            match reply.split_once("\r\n\r\n") {
                Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
                    Ok(body.to_string())
                }
                _ => Err(format!("not an HTTP 200 reply: {reply:?}")),
            }
        })
        .unwrap();
        match attempt {
            Ok(body) => return Ok(body),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn podman_runs_pods_on_twill_cni_and_del_cleans_up() {
    twill_testkit::require_root("podman");
    podman_scenario("bridge");
}

#[test]
fn podman_runs_pods_on_an_l3_conflist_and_del_cleans_up() {
    twill_testkit::require_root("podman_l3");
    podman_scenario("l3");
}

fn podman_scenario(wiring: &'static str) {
    let started = Instant::now();
    let mut pm = Podman::new(wiring);
    pm.import_image();

    let a = pm.start("pa", &[], &["sleep", "60"]);
    let b = pm.start("pb", &[], &["sleep", "60"]);
    let (ip_a, ip_b) = (pm.ip_of(&a), pm.ip_of(&b));
    assert_ne!(ip_a, ip_b);
    for ip in [&ip_a, &ip_b] {
        assert!(
            ip.starts_with(&format!("10.244.{}.", pm.octet)),
            "{ip} is outside {}",
            pm.subnet()
        );
    }
    pm.run(&["exec", &a, "ping", "-c1", "-W2", &ip_b]);
    pm.run(&["exec", &b, "ping", "-c1", "-W2", &ip_a]);
    pm.run(&["exec", &a, "ping", "-c1", "-W2", &pm.node_address()]);
    if wiring == "l3" {
        let routes = pm.run(&["exec", &a, "ip", "-4", "route"]);
        assert!(
            routes.contains("default via 169.254.1.1 dev eth0"),
            "{routes}"
        );
        let node_routes = String::from_utf8_lossy(
            &pm.ns
                .exec(&["ip", "-4", "route", "show", "proto", "84"])
                .stdout,
        )
        .into_owned();
        assert!(
            node_routes.contains(&format!("{ip_a} dev "))
                && node_routes.contains(&format!("{ip_b} dev ")),
            "{node_routes}"
        );
    }

    let port = format!("{HOST_PORT}:8080");
    let web = pm.start(
        "pw",
        &["-p", &port],
        &["httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    let ip_web = pm.ip_of(&web);

    // The plugin's own state agrees with podman: three records, masquerade and the mapping.
    let mut held = pm.records();
    held.sort();
    let mut expected = vec![ip_a.clone(), ip_b.clone(), ip_web.clone()];
    expected.sort();
    assert_eq!(held, expected, "IPAM records");
    assert_eq!(
        pm.veths().len(),
        3,
        "one host veth per container: {:?}",
        pm.veths()
    );
    let elements = pm.nft_elements().join("\n");
    assert!(
        elements.contains("hostports_any")
            && elements.contains(&ip_web)
            && elements.contains(&HOST_PORT.to_string()),
        "no host-port element for {ip_web}:8080 <- {HOST_PORT}:\n{elements}"
    );

    // The host port answers on the node, through 127.0.0.1 and a node address.
    // (Podman's conmon holds a listening socket on the port but never accepts: the page can
    // only come from httpd in the container, through Twill's DNAT.)
    for addr in [
        format!("127.0.0.1:{HOST_PORT}"),
        format!("{}:{HOST_PORT}", pm.node_address()),
    ] {
        assert_eq!(
            http_get(&pm.ns, &addr, Duration::from_secs(5)).as_deref(),
            Ok(PAGE),
            "GET http://{addr}/"
        );
    }
    // And a pod reaches the web pod directly, pod to pod.
    let page = pm.run(&[
        "exec",
        &a,
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{ip_web}:8080/"),
    ]);
    assert_eq!(page, PAGE);

    // podman rm runs the plugin's DEL for each container.
    let mut rm = vec!["rm", "-f", "-t", "0"];
    rm.extend(pm.containers.iter().map(String::as_str));
    pm.run(&rm);
    assert!(pm.veths().is_empty(), "leaked veths {:?}", pm.veths());
    let routes = pm.ns.exec(&["ip", "-4", "route", "show", "proto", "84"]);
    assert!(
        routes.stdout.is_empty(),
        "leaked routes {}",
        String::from_utf8_lossy(&routes.stdout)
    );
    assert!(
        pm.records().is_empty(),
        "leaked IPAM records {:?}",
        pm.records()
    );
    assert!(
        pm.nft_elements().is_empty(),
        "leaked nft elements {:?}",
        pm.nft_elements()
    );
    assert!(
        pm.cni_cache().is_empty(),
        "podman kept CNI results {:?}",
        pm.cni_cache()
    );
    assert!(
        http_get(&pm.ns, &format!("127.0.0.1:{HOST_PORT}"), Duration::ZERO).is_err(),
        "mapping gone"
    );
    pm.containers.clear();
    eprintln!("podman test took {:?}", started.elapsed());
}
