//! A corpus of bad inputs, run through the real binary the way a runtime runs it. Every case
//! must fail with the spec's error JSON, the right code and a message that names the field
//! or variable at fault, and must leave nothing behind: no link, no bridge address, no IPAM
//! record, no nft element, nothing in the pod's namespace. A few cases must succeed (DEL of
//! an unknown container) or must leave an earlier attachment intact.

mod common;
use common::*;
use serde_json::{json, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use twill_testkit::TestNetns;

/// What the case feeds the plugin on stdin.
enum Stdin {
    /// The node's valid config, changed by this function.
    Conf(fn(&mut Value)),
    /// These bytes, as they are.
    Raw(&'static [u8]),
}

/// What exists before the case runs; checked intact and removed after it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    Nothing,
    /// The case's own container + ifname was ADDed (successfully) in the case's pod.
    SameAttachment,
    /// Two other pods hold both addresses of the 2-address range the case's config gives.
    RangeFull,
}

struct Case {
    name: &'static str,
    /// `None`: CNI_COMMAND is not set at all.
    command: Option<&'static str>,
    /// Overrides of the defaults (CNI_CONTAINERID, CNI_NETNS = the pod, CNI_IFNAME=eth0);
    /// `None` unsets. Values "{file}" and "{missing}" stand for a regular file and a path
    /// that does not exist.
    env: &'static [(&'static str, Option<&'static str>)],
    stdin: Stdin,
    setup: Setup,
    /// The CNI error code; 0 means the command must succeed and print nothing.
    code: u64,
    /// Each must appear in `msg`.
    needles: &'static [&'static str],
}

/// An ADD whose config is the node's valid one changed by `patch`.
fn add(
    name: &'static str,
    patch: fn(&mut Value),
    code: u64,
    needles: &'static [&'static str],
) -> Case {
    Case {
        name,
        command: Some("ADD"),
        env: &[],
        stdin: Stdin::Conf(patch),
        setup: Setup::Nothing,
        code,
        needles,
    }
}

/// An ADD with a valid config and these environment overrides.
fn add_env(
    name: &'static str,
    env: &'static [(&'static str, Option<&'static str>)],
    code: u64,
    needles: &'static [&'static str],
) -> Case {
    Case {
        name,
        command: Some("ADD"),
        env,
        stdin: Stdin::Conf(|_| {}),
        setup: Setup::Nothing,
        code,
        needles,
    }
}

fn with(command: Option<&'static str>, case: Case) -> Case {
    Case { command, ..case }
}

fn valid_prev_result() -> Value {
    json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 0}],
    })
}

/// A /29 whose range allows exactly two addresses (.2 and .3; .1 is the gateway).
fn two_address_range(c: &mut Value) {
    c["ipam"]["subnet"] = json!("10.244.1.0/29");
    c["ipam"]["rangeStart"] = json!("10.244.1.2");
    c["ipam"]["rangeEnd"] = json!("10.244.1.3");
}

fn remove(c: &mut Value, key: &str) {
    c.as_object_mut().unwrap().remove(key);
}

fn ports(c: &mut Value, list: Value) {
    c["runtimeConfig"] = json!({ "portMappings": list });
}

fn cases() -> Vec<Case> {
    vec![
        // Missing and mistyped fields.
        add(
            "cniVersion is a number",
            |c| c["cniVersion"] = json!(1.1),
            7,
            &["cniVersion"],
        ),
        add(
            "cniVersion missing",
            |c| remove(c, "cniVersion"),
            7,
            &["cniVersion"],
        ),
        add("name missing", |c| remove(c, "name"), 7, &["\"name\""]),
        add(
            "name with a slash",
            |c| c["name"] = json!("../etc"),
            7,
            &["\"name\""],
        ),
        // '~' marks a shortened network key in Twill's nft markers (twill_nft::ruleset::
        // network_key): a real name never holds one.
        add(
            "name with a tilde",
            |c| c["name"] = json!("twl~0123abcd"),
            7,
            &["\"name\""],
        ),
        add(
            "name longer than 200 bytes",
            |c| c["name"] = json!("n".repeat(201)),
            7,
            &["\"name\""],
        ),
        // A data dir that cannot be made (under a regular file): an I/O error, nothing made.
        add(
            "ipam.dataDir under a regular file",
            |c| c["ipam"]["dataDir"] = json!("/proc/version/ipam"),
            5,
            &["/proc/version/ipam"],
        ),
        add("ipam missing", |c| remove(c, "ipam"), 7, &["\"ipam\""]),
        add(
            "ipam a string",
            |c| c["ipam"] = json!("twill"),
            7,
            &["\"ipam\""],
        ),
        add(
            "mtu a string",
            |c| c["mtu"] = json!("1500"),
            7,
            &["\"mtu\""],
        ),
        add(
            "mtu too small",
            |c| c["mtu"] = json!(10),
            7,
            &["\"mtu\"", "out of range"],
        ),
        add(
            "mtu too large",
            |c| c["mtu"] = json!(70000),
            7,
            &["\"mtu\"", "out of range"],
        ),
        add("mtu negative", |c| c["mtu"] = json!(-1), 7, &["\"mtu\""]),
        add(
            "ipMasq a string",
            |c| c["ipMasq"] = json!("yes"),
            7,
            &["\"ipMasq\""],
        ),
        add(
            "bridge name too long",
            |c| c["bridge"] = json!("twlbridgetoolong0"),
            7,
            &["\"bridge\"", "15 bytes"],
        ),
        add(
            "podWiring in capitals",
            |c| c["podWiring"] = json!("L3"),
            7,
            &["\"podWiring\"", "\"L3\"", "use bridge or l3"],
        ),
        add(
            "podWiring empty",
            |c| c["podWiring"] = json!(""),
            7,
            &["\"podWiring\"", "use bridge or l3"],
        ),
        add(
            "podWiring a boolean",
            |c| c["podWiring"] = json!(true),
            7,
            &["\"podWiring\"", "a string"],
        ),
        add(
            "podWiring l3 with a route via another gateway",
            |c| {
                c["podWiring"] = json!("l3");
                c["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]);
            },
            7,
            &["ipam.routes[0].gw", "169.254.1.1"],
        ),
        add(
            "podWiring l3 on a node with no route to 169.254.1.1",
            |c| c["podWiring"] = json!("l3"),
            103,
            &["no route to 169.254.1.1"],
        ),
        // Addresses and ranges.
        add(
            "subnet /33",
            |c| c["ipam"]["subnet"] = json!("10.244.1.0/33"),
            7,
            &["ipam.subnet"],
        ),
        add(
            "subnet with host bits",
            |c| c["ipam"]["subnet"] = json!("10.244.1.5/24"),
            7,
            &["ipam", "subnet", "host bits"],
        ),
        add(
            "subnet IPv6",
            |c| c["ipam"]["subnet"] = json!("fd00:10:244::/64"),
            2,
            &["ipam.subnet", "IPv6"],
        ),
        add(
            "subnet garbage",
            |c| c["ipam"]["subnet"] = json!("banana"),
            7,
            &["ipam.subnet", "banana"],
        ),
        add(
            "subnet /31",
            |c| c["ipam"]["subnet"] = json!("10.244.1.0/31"),
            7,
            &["ipam", "subnet", "too small"],
        ),
        add(
            "rangeStart outside subnet",
            |c| c["ipam"]["rangeStart"] = json!("10.244.2.10"),
            7,
            &["rangeStart", "outside"],
        ),
        add(
            "rangeStart not an address",
            |c| c["ipam"]["rangeStart"] = json!("10.244.1.300"),
            7,
            &["ipam.rangeStart"],
        ),
        add(
            "rangeStart after rangeEnd",
            |c| {
                c["ipam"]["rangeStart"] = json!("10.244.1.100");
                c["ipam"]["rangeEnd"] = json!("10.244.1.50");
            },
            7,
            &["rangeStart", "rangeEnd"],
        ),
        add(
            "gateway outside subnet",
            |c| c["ipam"]["gateway"] = json!("10.244.9.1"),
            7,
            &["gateway", "outside"],
        ),
        add(
            "gateway is the broadcast",
            |c| c["ipam"]["gateway"] = json!("10.244.1.255"),
            7,
            &["gateway", "broadcast"],
        ),
        add(
            "reserved garbage",
            |c| c["ipam"]["reserved"] = json!(["banana"]),
            7,
            &["ipam.reserved[0]", "banana"],
        ),
        add(
            "reserved span reversed",
            |c| c["ipam"]["reserved"] = json!(["10.244.1.9-10.244.1.5"]),
            7,
            &["ipam.reserved[0]"],
        ),
        add(
            "reserved not a list",
            |c| c["ipam"]["reserved"] = json!("10.244.1.5"),
            7,
            &["ipam.reserved"],
        ),
        add(
            "reserved entry a number",
            |c| c["ipam"]["reserved"] = json!([5]),
            7,
            &["ipam.reserved[0]"],
        ),
        add(
            "route dst garbage",
            |c| c["ipam"]["routes"] = json!([{"dst": "everywhere"}]),
            7,
            &["ipam.routes[0].dst"],
        ),
        add(
            "clusterCIDR garbage",
            |c| c["clusterCIDR"] = json!("10.0.0.0/99"),
            7,
            &["clusterCIDR"],
        ),
        // Versions and plugin types.
        add(
            "cniVersion 0.1.0",
            |c| c["cniVersion"] = json!("0.1.0"),
            1,
            &["cniVersion", "0.1.0"],
        ),
        add(
            "cniVersion 9.9.9",
            |c| c["cniVersion"] = json!("9.9.9"),
            1,
            &["cniVersion", "9.9.9"],
        ),
        add(
            "ipam.type host-local",
            |c| c["ipam"]["type"] = json!("host-local"),
            2,
            &["ipam.type", "host-local"],
        ),
        // Undecodable stdin.
        Case {
            stdin: Stdin::Raw(b"cniVersion: 1.1.0\n"),
            ..add("stdin not JSON", |_| {}, 6, &["JSON"])
        },
        Case {
            stdin: Stdin::Raw(b""),
            ..add("stdin empty", |_| {}, 6, &["stdin", "empty"])
        },
        Case {
            stdin: Stdin::Raw(b"[{\"cniVersion\":\"1.1.0\"}]"),
            ..add("stdin a JSON array", |_| {}, 6, &["object", "array"])
        },
        add(
            "prevResult garbage on ADD",
            |c| c["prevResult"] = json!({"ips": "x"}),
            6,
            &["prevResult"],
        ),
        // The environment.
        // No command: the plugin says what it is on stderr (tests/about.rs) and exits 0,
        // printing nothing on stdout and touching nothing, as the reference plugins do.
        with(None, add_env("CNI_COMMAND missing", &[], 0, &[])),
        with(Some(""), add_env("CNI_COMMAND empty", &[], 0, &[])),
        with(
            Some("FROB"),
            add_env("CNI_COMMAND unknown", &[], 4, &["CNI_COMMAND", "FROB"]),
        ),
        add_env(
            "CNI_CONTAINERID missing",
            &[("CNI_CONTAINERID", None)],
            4,
            &["CNI_CONTAINERID"],
        ),
        add_env(
            "CNI_IFNAME missing",
            &[("CNI_IFNAME", None)],
            4,
            &["CNI_IFNAME"],
        ),
        add_env(
            "CNI_NETNS missing",
            &[("CNI_NETNS", None)],
            4,
            &["CNI_NETNS"],
        ),
        add_env(
            "CNI_NETNS does not exist",
            &[("CNI_NETNS", Some("{missing}"))],
            3,
            &["CNI_NETNS"],
        ),
        add_env(
            "CNI_NETNS a regular file",
            &[("CNI_NETNS", Some("{file}"))],
            4,
            &["CNI_NETNS"],
        ),
        add_env(
            "CNI_IFNAME 16 bytes",
            &[("CNI_IFNAME", Some("eth0123456789abc"))],
            4,
            &["CNI_IFNAME", "15 bytes"],
        ),
        add_env(
            "CNI_IFNAME with a slash",
            &[("CNI_IFNAME", Some("eth/0"))],
            4,
            &["CNI_IFNAME"],
        ),
        add_env(
            "CNI_CONTAINERID with a slash",
            &[("CNI_CONTAINERID", Some("../../etc"))],
            4,
            &["CNI_CONTAINERID"],
        ),
        add_env(
            "CNI_ARGS not KEY=VALUE",
            &[("CNI_ARGS", Some("IgnoreUnknown"))],
            4,
            &["CNI_ARGS"],
        ),
        // The pod's identity: refused before anything is made.
        add_env(
            "K8S_POD_NAMESPACE not a DNS name",
            &[(
                "CNI_ARGS",
                Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=Bad_NS;K8S_POD_NAME=a"),
            )],
            4,
            &["CNI_ARGS K8S_POD_NAMESPACE", "Bad_NS"],
        ),
        add_env(
            "K8S_POD_NAME not a DNS name",
            &[("CNI_ARGS", Some("K8S_POD_NAMESPACE=x;K8S_POD_NAME=a b"))],
            4,
            &["CNI_ARGS K8S_POD_NAME"],
        ),
        add_env(
            "TWILL_POD_LABELS not k=v",
            &[("CNI_ARGS", Some("TWILL_POD_LABELS=app=web,tier"))],
            4,
            &["CNI_ARGS TWILL_POD_LABELS", "\"tier\""],
        ),
        add_env(
            "TWILL_POD_LABELS with a bad value",
            &[("CNI_ARGS", Some("TWILL_POD_LABELS=app=-web"))],
            4,
            &["CNI_ARGS TWILL_POD_LABELS.app", "not a label value"],
        ),
        add(
            "runtimeConfig.labels not a map",
            |c| c["runtimeConfig"] = json!({"labels": "app=web"}),
            7,
            &["\"runtimeConfig.labels\"", "an object"],
        ),
        add(
            "runtimeConfig.labels with a bad key",
            |c| c["runtimeConfig"] = json!({"labels": {"app web": "x"}}),
            7,
            &["\"runtimeConfig.labels.app web\"", "not a label key"],
        ),
        add(
            "runtimeConfig.labels with a number",
            |c| c["runtimeConfig"] = json!({"labels": {"app": 1}}),
            7,
            &["\"runtimeConfig.labels.app\"", "a string"],
        ),
        add(
            "runtimeConfig.namedPorts with a bad name",
            |c| c["runtimeConfig"] = json!({"namedPorts": [{"name": "Serve_80", "port": 80}]}),
            7,
            &["\"runtimeConfig.namedPorts[0].name\"", "not a port name"],
        ),
        add(
            "runtimeConfig.namedPorts without a port",
            |c| c["runtimeConfig"] = json!({"namedPorts": [{"name": "http"}]}),
            7,
            &["\"runtimeConfig.namedPorts[0].port\" is required"],
        ),
        add(
            "runtimeConfig.namedPorts with a name twice",
            |c| c["runtimeConfig"] = json!({"namedPorts": [{"name": "http", "port": 80}, {"name": "http", "port": 8080}]}),
            7,
            &["\"runtimeConfig.namedPorts[1].name\"", "already"],
        ),
        // Attachments that exist, do not exist, or cannot exist.
        Case {
            setup: Setup::SameAttachment,
            ..add(
                "duplicate ADD of the same container and ifname",
                |_| {},
                101,
                &["already holds"],
            )
        },
        Case {
            setup: Setup::RangeFull,
            ..add(
                "range exhausted",
                two_address_range,
                100,
                &["10.244.1.2-10.244.1.3"],
            )
        },
        with(
            Some("DEL"),
            add("DEL of an unknown container succeeds", |_| {}, 0, &[]),
        ),
        with(
            Some("DEL"),
            add(
                "DEL with a garbage prevResult",
                |c| c["prevResult"] = json!({"ips": 7}),
                6,
                &["prevResult"],
            ),
        ),
        with(
            Some("CHECK"),
            add("CHECK without prevResult", |_| {}, 7, &["prevResult"]),
        ),
        with(
            Some("CHECK"),
            add(
                "CHECK on cniVersion 0.3.1",
                |c| {
                    c["cniVersion"] = json!("0.3.1");
                    c["prevResult"] = valid_prev_result();
                },
                1,
                &["CHECK", "0.3.1"],
            ),
        ),
        with(
            Some("STATUS"),
            add(
                "STATUS on cniVersion 1.0.0",
                |c| c["cniVersion"] = json!("1.0.0"),
                1,
                &["STATUS", "1.0.0"],
            ),
        ),
        with(
            Some("GC"),
            add(
                "GC on cniVersion 1.0.0",
                |c| c["cniVersion"] = json!("1.0.0"),
                1,
                &["GC", "1.0.0"],
            ),
        ),
        // Port mappings.
        add(
            "hostPort 0",
            |c| ports(c, json!([{"hostPort": 0, "containerPort": 80}])),
            7,
            &["hostPort"],
        ),
        add(
            "hostPort 70000",
            |c| ports(c, json!([{"hostPort": 70000, "containerPort": 80}])),
            7,
            &["hostPort", "70000"],
        ),
        add(
            "hostPort a string",
            |c| ports(c, json!([{"hostPort": "80", "containerPort": 80}])),
            7,
            &["hostPort"],
        ),
        add(
            "containerPort missing",
            |c| ports(c, json!([{"hostPort": 30080}])),
            7,
            &["containerPort"],
        ),
        add(
            "protocol icmp",
            |c| {
                ports(
                    c,
                    json!([{"hostPort": 30080, "containerPort": 80, "protocol": "icmp"}]),
                )
            },
            7,
            &["protocol", "icmp"],
        ),
        add(
            "hostPort listed twice",
            |c| {
                ports(
                    c,
                    json!([{"hostPort": 30080, "containerPort": 80}, {"hostPort": 30080, "containerPort": 81}]),
                )
            },
            7,
            &["portMappings", "30080"],
        ),
        add(
            "portMappings not a list",
            |c| ports(c, json!({"hostPort": 30080})),
            7,
            &["runtimeConfig.portMappings"],
        ),
        // GC's list of valid attachments; the existing attachment must survive a bad list.
        Case {
            setup: Setup::SameAttachment,
            ..with(
                Some("GC"),
                add(
                    "GC valid-attachments not a list",
                    |c| c["cni.dev/valid-attachments"] = json!("all"),
                    7,
                    &["cni.dev/valid-attachments"],
                ),
            )
        },
        Case {
            setup: Setup::SameAttachment,
            ..with(
                Some("GC"),
                add(
                    "GC valid-attachments entry without ifname",
                    |c| c["cni.dev/valid-attachments"] = json!([{"containerID": "x"}]),
                    7,
                    &["cni.dev/valid-attachments[0]", "ifname"],
                ),
            )
        },
        Case {
            setup: Setup::SameAttachment,
            ..with(
                Some("GC"),
                add(
                    "GC valid-attachments containerID a number",
                    |c| {
                        c["cni.dev/valid-attachments"] =
                            json!([{"containerID": 5, "ifname": "eth0"}])
                    },
                    7,
                    &["cni.dev/valid-attachments[0]", "containerID"],
                ),
            )
        },
    ]
}

/// Runs one case on its own node and checks everything; panics on the first problem.
fn run_case(index: usize, case: &Case) {
    let node = Node::new("mf");
    let pod = TestNetns::new("mfp");
    let cid = format!("mf{index}");
    let not_a_netns = node.data.path.join("not-a-netns");
    std::fs::write(&not_a_netns, b"plain file").unwrap();

    let mut conf = node.conf();
    let stdin = match &case.stdin {
        Stdin::Conf(patch) => {
            patch(&mut conf);
            conf.to_string().into_bytes()
        }
        Stdin::Raw(bytes) => bytes.to_vec(),
    };
    // Set-up runs with the case's own config minus whatever makes it bad: the valid base,
    // or for RangeFull the same 2-address range.
    let mut good = node.conf();
    if case.setup == Setup::RangeFull {
        two_address_range(&mut good);
    }
    let mut earlier = Vec::new();
    match case.setup {
        Setup::Nothing => {}
        Setup::SameAttachment => {
            let r = node.cni("ADD", &cid, &pod.path(), "eth0", &good);
            assert!(r.ok, "set-up ADD failed: {} {}", r.stdout, r.stderr);
            earlier.push((cid.clone(), None, r.json));
        }
        Setup::RangeFull => {
            for k in 0..2 {
                let other = TestNetns::new("mfr");
                let id = format!("{cid}r{k}");
                let r = node.cni("ADD", &id, &other.path(), "eth0", &good);
                assert!(r.ok, "set-up ADD {k} failed: {} {}", r.stdout, r.stderr);
                earlier.push((id, Some(other), r.json));
            }
        }
    }
    let links = node.links();
    let addrs = node.bridge_addrs();
    let records = node.records();
    let nft = node.nft_elements();
    let pod_links = link_names(&pod);

    let missing = format!("/run/netns/{}-missing", pod.name);
    let file = not_a_netns.display().to_string();
    let pod_path = pod.path();
    let mut vars: Vec<(&str, Option<&str>)> = vec![
        ("CNI_CONTAINERID", Some(&cid)),
        ("CNI_NETNS", Some(&pod_path)),
        ("CNI_IFNAME", Some("eth0")),
    ];
    for (k, v) in case.env {
        let v = v.map(|v| match v {
            "{missing}" => missing.as_str(),
            "{file}" => file.as_str(),
            other => other,
        });
        match vars.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v,
            None => vars.push((k, v)),
        }
    }
    vars.push(("CNI_COMMAND", case.command));
    let r = node.run_plugin(&vars, &stdin);
    eprintln!(
        "[{index}] {}: exit ok={} stdout={}",
        case.name,
        r.ok,
        r.stdout.trim()
    );

    if case.code == 0 {
        assert!(r.ok, "must succeed: {} {}", r.stdout, r.stderr);
        assert!(
            r.stdout.trim().is_empty(),
            "must print nothing: {}",
            r.stdout
        );
    } else {
        assert!(!r.ok, "must fail, exited 0: {}", r.stdout);
        let obj = r
            .json
            .as_object()
            .unwrap_or_else(|| panic!("stdout is not a JSON object: {:?}", r.stdout));
        for k in obj.keys() {
            assert!(
                ["cniVersion", "code", "msg", "details"].contains(&k.as_str()),
                "stray key {k}: {}",
                r.stdout
            );
        }
        assert!(
            obj.get("cniVersion").is_some_and(Value::is_string),
            "cniVersion: {}",
            r.stdout
        );
        assert_eq!(
            obj.get("code").and_then(Value::as_u64),
            Some(case.code),
            "code: {}",
            r.stdout
        );
        let msg = obj
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no msg: {}", r.stdout));
        for needle in case.needles {
            assert!(msg.contains(needle), "msg {msg:?} does not name {needle:?}");
        }
        if let Some(d) = obj.get("details") {
            assert!(
                d.as_str().is_some_and(|d| !d.is_empty()),
                "details must be a non-empty string: {}",
                r.stdout
            );
        }
    }

    assert_eq!(node.links(), links, "links in the node namespace changed");
    assert_eq!(
        node.bridge_addrs(),
        addrs,
        "addresses on the bridge changed"
    );
    assert_eq!(node.records(), records, "IPAM records changed");
    assert_eq!(node.nft_elements(), nft, "nft elements changed");
    assert_eq!(
        link_names(&pod),
        pod_links,
        "links in the pod namespace changed"
    );

    // What existed before is intact and still works; then it goes, and nothing is left.
    for (id, own_ns, result) in &earlier {
        let ns = own_ns.as_ref().unwrap_or(&pod);
        let gateway = result["ips"][0]["gateway"].as_str().unwrap();
        assert!(
            ping(ns, gateway),
            "the earlier pod {id} cannot ping its gateway {gateway}"
        );
        let mut check = good.clone();
        check["prevResult"] = result.clone();
        let c = node.cni("CHECK", id, &ns.path(), "eth0", &check);
        assert!(c.ok, "CHECK of the earlier pod {id}: {}", c.stdout);
        let d = node.cni("DEL", id, &ns.path(), "eth0", &check);
        assert!(d.ok, "DEL of the earlier pod {id}: {}", d.stdout);
    }
    // DEL's reaper removes the veth pair just after DEL returns.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while link_names(&pod) != ["lo"] && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(link_names(&pod), ["lo"], "the pod namespace holds only lo");
    node.assert_clean(case.name);
}

#[test]
fn every_bad_input_fails_cleanly_with_the_right_code() {
    twill_testkit::require_root("malformed");
    let cases = cases();
    assert!(cases.len() >= 35, "the corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| run_case(i, case))) {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("[{i}] {}: {why}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
