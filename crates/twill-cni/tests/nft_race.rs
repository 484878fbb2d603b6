//! Networks set up their nftables state at the same moment (issue 7): the first ADDs of two
//! networks on one node, forced to interleave, both succeed and leave correct sets; and a
//! set already left broken (by a writer that raced) gets an error that names the set and
//! the command that repairs it.
//!
//! The interleave is forced, not hoped for: a wrapper `nft` first on PATH runs the real nft
//! under strace, which holds its commit (nft's only `sendmsg`; its cache reads use `sendto`)
//! for HOLD after nft has read the sets, while the other network's ADD runs in full. Without
//! a lock around twill's read-check-apply, the held commit lands on a state it never read,
//! and auto-merge leaves `local_subnets` unmerged: from then on the next neighbouring
//! subnet fails with bare "No such file or directory" / "File exists", retries included.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use twill_testkit::{require_program, require_root, TestNetns};

/// How long the wrapper holds the first nft's commit; the other ADD starts WAIT after the
/// wrapper did, which leaves it ample time to finish (it takes ~30 ms) inside the window.
const HOLD_US: u32 = 1_500_000;
const WAIT: Duration = Duration::from_millis(300);

fn real_nft() -> String {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("nft is installed")
        .to_string()
}

/// A directory holding a wrapper `nft` that touches `started` and then runs the real nft
/// with its commit held for HOLD_US.
fn slow_nft_dir(node: &Node) -> std::path::PathBuf {
    let dir = node.data.path.join("slowbin");
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "#!/bin/sh\ntouch '{started}'\nexec strace -f -qq -o /dev/null -e trace=sendmsg \
         -e inject=sendmsg:delay_enter={HOLD_US} {nft} \"$@\"\n",
        started = dir.join("started").display(),
        nft = real_nft(),
    );
    let path = dir.join("nft");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Network `name` on bridge `bridge` with this node's block `subnet`.
fn network(node: &Node, name: &str, bridge: &str, subnet: &str) -> Value {
    let mut c = node.conf();
    c["name"] = json!(name);
    c["bridge"] = json!(bridge);
    c["ipam"]["subnet"] = json!(subnet);
    c
}

fn finish(child: Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The elements of one of Twill's sets, as `nft -j list set` prints them.
fn set_elements(node: &Node, set: &str) -> Vec<Value> {
    let out = node
        .ns
        .exec(&["nft", "-j", "list", "set", "ip", "twill", set]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nftables"][1]["set"]["elem"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn range(first: &str, last: &str) -> Value {
    json!({"range": [first, last]})
}

/// Waits (bounded) for the wrapper's `started` file.
fn wait_started(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("started").exists() {
        assert!(Instant::now() < deadline, "the wrapper nft never started");
        std::thread::sleep(Duration::from_millis(5));
    }
}

const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

#[test]
fn first_adds_of_two_networks_forced_to_interleave_leave_correct_sets() {
    require_root("first_adds_of_two_networks_forced_to_interleave_leave_correct_sets");
    require_program("nft_race", "strace", "strace");
    let node = Node::new("nrace");
    let slow = slow_nft_dir(&node);
    let a = network(&node, "twlneta", "twl0", "10.244.1.0/24");
    let b = network(&node, "twlnetb", "twl1", "10.244.2.0/24");
    let c = network(&node, "twlnetc", "twl2", "10.244.3.0/24");
    let (pa, pb, pc) = (
        TestNetns::new("nracea"),
        TestNetns::new("nraceb"),
        TestNetns::new("nracec"),
    );

    // A's nft reads the (empty) sets and is held before its commit; B runs meanwhile.
    let held = node.spawn_add(&a, "a", &pa, &format!("{}:{PATH}", slow.display()));
    wait_started(&slow);
    std::thread::sleep(WAIT);
    let started = Instant::now();
    let rb = node.cni_raw(
        "ADD",
        &[
            ("CNI_CONTAINERID", "b"),
            ("CNI_NETNS", &pb.path()),
            ("CNI_IFNAME", "eth0"),
        ],
        b.to_string().as_bytes(),
    );
    let b_took = started.elapsed();
    let (a_ok, a_out) = finish(held);
    assert!(a_ok, "ADD on network A failed: {a_out}");
    assert!(rb.ok, "ADD on network B failed: {}", rb.stdout);
    println!("B's ADD took {b_took:?} while A's nft commit was held");

    // Both blocks, merged into one range (they are adjacent); both networks marked.
    assert_eq!(
        set_elements(&node, "local_subnets"),
        [range("10.244.1.0", "10.244.2.255")],
        "local_subnets after the interleaved first ADDs"
    );
    assert_eq!(
        set_elements(&node, "cluster_cidrs"),
        [json!({"prefix": {"addr": "10.244.0.0", "len": 16}})]
    );
    assert_eq!(set_elements(&node, "network_blocks").len(), 2);

    // The failure the race used to cause: the next neighbouring block's first ADD.
    let rc = node.cni("ADD", "c", &pc.path(), "eth0", &c);
    assert!(rc.ok, "ADD on network C failed: {}", rc.stdout);
    assert_eq!(
        set_elements(&node, "local_subnets"),
        [range("10.244.1.0", "10.244.3.255")]
    );

    for (cid, pod, conf) in [("a", &pa, &a), ("b", &pb, &b), ("c", &pc, &c)] {
        let d = node.cni("DEL", cid, &pod.path(), "eth0", conf);
        assert!(d.ok, "DEL {cid}: {}", d.stdout);
    }
}

/// A set already broken (here by two raw nft runs forced to interleave, as an older
/// twill-cni or another tool could leave it) cannot be cured by retrying: the error says
/// which set is broken and the command that resets it, and that command works.
#[test]
fn a_broken_interval_set_is_named_with_its_repair() {
    require_root("a_broken_interval_set_is_named_with_its_repair");
    require_program("nft_race", "strace", "strace");
    let node = Node::new("nbroken");
    let slow = slow_nft_dir(&node);
    let script = |block: &str| {
        format!(
            "add table ip twill\nadd set ip twill local_subnets {{ type ipv4_addr; flags interval; auto-merge; }}\nadd element ip twill local_subnets {{ {block} }}\n"
        )
    };
    let run = |path: &str, block: &str| {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &node.ns.name, "nft", "-f", "-"])
            .env("PATH", path)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), script(block).as_bytes())
            .unwrap();
        child
    };
    let held = run(&format!("{}:{PATH}", slow.display()), "10.244.1.0/24");
    wait_started(&slow);
    std::thread::sleep(WAIT);
    assert!(run(PATH, "10.244.2.0/24").wait().unwrap().success());
    assert!(held.wait_with_output().unwrap().status.success());
    // Broken: two adjacent blocks left unmerged.
    assert_eq!(set_elements(&node, "local_subnets").len(), 2);

    let c = network(&node, "twlnetc", "twl2", "10.244.3.0/24");
    let pc = TestNetns::new("nbrokenc");
    let r = node.cni("ADD", "c", &pc.path(), "eth0", &c);
    assert!(!r.ok, "ADD on a broken set should fail: {}", r.stdout);
    assert_eq!(r.json["code"], 103, "{}", r.stdout);
    let msg = r.json["msg"].as_str().unwrap_or_default();
    let details = r.json["details"].as_str().unwrap_or_default();
    assert!(msg.contains("local_subnets"), "names the set: {}", r.stdout);
    let repair = "flush set ip twill local_subnets";
    assert!(details.contains(repair), "gives the repair: {}", r.stdout);
    // Retrying does not cure it ...
    let again = node.cni("ADD", "c", &pc.path(), "eth0", &c);
    assert_eq!(again.json["code"], 103, "{}", again.stdout);
    // ... the repair does, and nothing of the failed ADDs was left behind.
    let cmd = details
        .split('`')
        .find(|s| s.starts_with("nft "))
        .expect("the repair is quoted in backticks");
    let mut args: Vec<&str> = vec!["sh", "-c"];
    args.push(cmd);
    let (ok, _, err) = node.ns.try_exec(&args);
    assert!(ok, "the repair command {cmd:?} failed: {err}");
    let fixed = node.cni("ADD", "c", &pc.path(), "eth0", &c);
    assert!(fixed.ok, "ADD after the repair: {}", fixed.stdout);
    assert!(
        set_elements(&node, "local_subnets")
            .contains(&json!({"prefix": {"addr": "10.244.3.0", "len": 24}})),
        "{:?}",
        set_elements(&node, "local_subnets")
    );
    let d = node.cni("DEL", "c", &pc.path(), "eth0", &c);
    assert!(d.ok, "{}", d.stdout);
}
