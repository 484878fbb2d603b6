//! `twill policy explain` end to end: the real `twill` binary against a real embedded
//! store (a `twl…` temp dir), written through the `Store` API where twilld (endpoints),
//! `twill label` (podlabels) and `twill apply` (namespaces, policies) would write.

use serde_json::{json, Value};
use std::process::Command;
use twill_api::policy::{
    endpoint_key, global_network_policy_key, namespace_key, network_policy_key, pod_labels_key,
};
use twill_store::embedded::EmbeddedStore;
use twill_store::{Store, PREFIX};
use twill_testkit::TempDir;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn twill(store_dir: &str, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_twill"))
        .args(["--store", "embedded", "--store-dir", store_dir])
        .args(args)
        .env_remove("TWILL_STORE")
        .env_remove("TWILL_ETCD_ENDPOINTS")
        .output()
        .expect("run twill");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn put(store: &EmbeddedStore, rel: &str, v: Value) {
    store
        .put(
            &format!("{PREFIX}{rel}"),
            &serde_json::to_vec(&v).unwrap(),
            None,
        )
        .unwrap();
}

fn endpoint(node: &str, ns: &str, pod: &str, ip: &str) -> Value {
    json!({
        "namespace": ns, "pod": pod, "node": node, "containerID": format!("c{ns}{pod}"),
        "ifname": "eth0", "hostVeth": format!("twl{ns}{pod}"), "ips": [ip], "wiring": "bridge",
        "labels": {"pod": pod},
        "namedPorts": [{"name": "serve-81-tcp", "port": 81, "protocol": "TCP"}],
    })
}

#[test]
fn explain_reads_the_store_and_names_the_deciding_policy_and_rule() {
    let dir = TempDir::new("explain");
    let path = dir.path.join("store");
    let store = EmbeddedStore::open(&path).expect("open embedded store");
    let sd = path.display().to_string();

    put(
        &store,
        &endpoint_key("n1", "x", "a"),
        endpoint("n1", "x", "a", "10.244.1.2"),
    );
    put(
        &store,
        &endpoint_key("n1", "x", "b"),
        endpoint("n1", "x", "b", "10.244.1.3"),
    );
    put(
        &store,
        &endpoint_key("n2", "y", "a"),
        endpoint("n2", "y", "a", "10.244.2.2"),
    );
    put(
        &store,
        &namespace_key("y"),
        json!({"labels": {"team": "blue"}}),
    );
    put(
        &store,
        &network_policy_key("x", "from-blue"),
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}], "ports": [{"port": "serve-81-tcp"}]}
        ]}),
    );

    // Allowed by the namespace selector on the named port, given by number.
    let r = twill(&sd, &["policy", "explain", "y/a", "x/a", "81/tcp"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.starts_with("y/a -> x/a 81/tcp: ALLOWED\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("from pod y/a (10.244.2.2, node n2)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("allowed by NetworkPolicy x/from-blue ingress rule 0"),
        "{}",
        r.stdout
    );
    // Port 80: selected, no rule allows.
    let r = twill(&sd, &["policy", "explain", "y/a", "x/a", "80/tcp"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.starts_with("y/a -> x/a 80/tcp: DENIED\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("selected by x/from-blue, and no rule of it allows 80/tcp from y/a: denied"),
        "{}",
        r.stdout
    );
    // The same in JSON, the source given by address, the port by name.
    let r = twill(
        &sd,
        &[
            "policy",
            "explain",
            "10.244.2.2",
            "x/a",
            "serve-81-tcp/tcp",
            "-o",
            "json",
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let j: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["allowed"], json!(true));
    assert_eq!(j["port"], json!(81));
    assert_eq!(j["source"]["pod"], json!("y/a"));
    assert_eq!(j["ingress"]["reason"]["kind"], json!("allowedBy"));
    assert_eq!(
        j["ingress"]["reason"]["rules"],
        json!([{"policy": "x/from-blue", "rule": 0}])
    );
    assert_eq!(j["egress"]["reason"], json!({"kind": "open"}));
    assert_eq!(j["problems"], json!([]));

    // Namespace y relabelled out of team blue: no longer allowed.
    put(
        &store,
        &namespace_key("y"),
        json!({"labels": {"team": "red"}}),
    );
    let r = twill(&sd, &["policy", "explain", "y/a", "x/a", "81/tcp"]);
    assert!(
        r.stdout.starts_with("y/a -> x/a 81/tcp: DENIED\n"),
        "{}",
        r.stdout
    );
    // A pod relabelled by hand leaves the policy's podSelector: open again.
    put(
        &store,
        &pod_labels_key("x", "a"),
        json!({"labels": {"pod": "not-a"}}),
    );
    let r = twill(&sd, &["policy", "explain", "y/a", "x/a", "81/tcp"]);
    assert!(
        r.stdout.starts_with("y/a -> x/a 81/tcp: ALLOWED\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("no NetworkPolicy of its namespace selects x/a for ingress: open"),
        "{}",
        r.stdout
    );

    // A global Deny over everything into x, logged first; the host still gets through.
    put(
        &store,
        &global_network_policy_key("deny-into-x"),
        json!({"order": 10, "namespaceSelector": "kubernetes.io/metadata.name == 'x'", "ingress": [
            {"action": "Log"}, {"action": "Deny", "protocol": "TCP"}
        ]}),
    );
    let r = twill(&sd, &["policy", "explain", "x/b", "x/a", "81/tcp"]);
    assert!(
        r.stdout.starts_with("x/b -> x/a 81/tcp: DENIED\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("denied by GlobalNetworkPolicy deny-into-x ingress rule 1 (Deny): {\"action\":\"Deny\",\"protocol\":\"tcp\"}"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("logged by deny-into-x rule 0"),
        "{}",
        r.stdout
    );
    let r = twill(&sd, &["policy", "explain", "x/b", "x/a", "81/udp"]);
    assert!(
        r.stdout
            .contains("denied at the end of the global tier: deny-into-x applied to x/a"),
        "{}",
        r.stdout
    );
    let r = twill(&sd, &["policy", "explain", "host", "x/a", "81/tcp"]);
    assert!(
        r.stdout.starts_with("host -> x/a 81/tcp: ALLOWED\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("from the pod's own node: always allowed"),
        "{}",
        r.stdout
    );

    // A bad entry is left out and said, not fatal.
    store
        .put(
            &format!("{PREFIX}{}", network_policy_key("x", "broken")),
            b"{not json",
            None,
        )
        .unwrap();
    let r = twill(
        &sd,
        &["policy", "explain", "x/b", "198.51.100.7", "443/tcp"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .starts_with("x/b -> 198.51.100.7 443/tcp: ALLOWED\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("ingress: not judged (the destination is not a pod)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("networkpolicies/x/broken: not a readable"),
        "{}",
        r.stdout
    );

    // Mistakes: a clear error, exit 1.
    for (args, want) in [
        (
            vec!["x/ghost", "x/a", "80/tcp"],
            "pod x/ghost is not in the store",
        ),
        (vec!["x/b", "x/a", "80/icmp"], "none of tcp, udp, sctp"),
        (
            vec!["x/b", "x/a", "serve-80-tcp/tcp"],
            "has no tcp port named serve-80-tcp",
        ),
        (vec!["xb", "x/a", "80/tcp"], "give a pod as NAMESPACE/NAME"),
    ] {
        let mut a = vec!["policy", "explain"];
        a.extend(args);
        let r = twill(&sd, &a);
        assert_eq!(r.code, 1, "{a:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(want), "{a:?}: {}", r.stderr);
    }
    // No store there: said, nothing created.
    let missing = dir.path.join("nowhere");
    let r = twill(
        &missing.display().to_string(),
        &["policy", "explain", "x/b", "x/a", "80/tcp"],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no store at"), "{}", r.stderr);
    assert!(!missing.exists());
}
