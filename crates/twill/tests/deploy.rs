//! deploy/kubernetes: the base and its overlays (vxlan, bgp, host-gw), rendered by
//! scripts/kustomize.py (kustomize's strategic merge for the fields they patch; kubectl is
//! not installed here), validated offline with kubernetes-validate --strict against the
//! Kubernetes 1.30 to 1.34 schemas (PyPI, in /opt/twill-venv: scripts/install-deps.sh). A
//! typo planted in a rendered manifest, and one in an overlay's patch, must be rejected. The
//! DaemonSet is read back for what the agent needs, and each overlay's network config is
//! applied with the real `twill apply` to a temporary store and read back.
//! About 8 s: a kubernetes-validate run is about 1 s. No root needed.

mod common;
use common::{text, TWILL};

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VENV: &str = "/opt/twill-venv/bin";
const OVERLAYS: &[&str] = &["base", "overlays/vxlan", "overlays/bgp", "overlays/host-gw"];
const VERSIONS: &[&str] = &["1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn venv(prog: &str) -> PathBuf {
    let p = Path::new(VENV).join(prog);
    assert!(
        p.is_file(),
        "NOT RUN: {} is missing: run scripts/install-deps.sh (a venv with kubernetes-validate)",
        p.display()
    );
    p
}

/// scripts/kustomize.py [--json] DIR, from the tree under `root` (the repo's or a copy).
fn render(root: &Path, dir: &str, json: bool) -> Output {
    let mut c = Command::new(venv("python"));
    c.arg(repo().join("scripts/kustomize.py"));
    if json {
        c.arg("--json");
    }
    c.arg(root.join(dir)).output().expect("run kustomize.py")
}

fn render_ok(root: &Path, dir: &str, json: bool) -> String {
    let o = render(root, dir, json);
    assert!(o.status.success(), "render {dir}: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

fn validate(version: &str, files: &[PathBuf]) -> Output {
    Command::new(venv("kubernetes-validate"))
        .args(["-k", version, "--strict"])
        .args(files)
        .output()
        .expect("run kubernetes-validate")
}

fn docs(dir: &str) -> Vec<Value> {
    serde_json::from_str(&render_ok(&repo().join("deploy/kubernetes"), dir, true)).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {docs:#?}"))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn every_manifest_and_overlay_validates_against_kubernetes_1_30_to_1_34() {
    let tmp = twill_testkit::TempDir::new("deploy");
    let files: Vec<PathBuf> = OVERLAYS
        .iter()
        .map(|o| {
            let f = tmp.path.join(format!("{}.yaml", o.replace('/', "-")));
            std::fs::write(&f, render_ok(&repo().join("deploy/kubernetes"), o, false)).unwrap();
            f
        })
        .collect();
    for v in VERSIONS {
        let o = validate(v, &files);
        let out = String::from_utf8_lossy(&o.stdout);
        let passed = out.lines().filter(|l| l.contains(" passed for ")).count();
        // Namespace, ServiceAccount, ConfigMap, DaemonSet in each of the four renderings.
        assert!(
            o.status.success() && passed == 4 * OVERLAYS.len(),
            "Kubernetes {v}: {passed} passed\n{}",
            text(&o)
        );
    }
}

#[test]
fn a_planted_typo_in_a_manifest_or_an_overlay_is_rejected() {
    let tmp = twill_testkit::TempDir::new("deploytypo");
    // A rendered manifest with a misspelt field.
    let good = render_ok(&repo().join("deploy/kubernetes"), "overlays/vxlan", false);
    assert!(good.contains("hostNetwork: true"), "{good}");
    let bad = tmp.path.join("typo.yaml");
    std::fs::write(&bad, good.replace("hostNetwork:", "hostNetwrk:")).unwrap();
    let o = validate("1.30.0", std::slice::from_ref(&bad));
    assert!(
        o.status.code() == Some(1) && text(&o).contains("'hostNetwrk' was unexpected"),
        "a misspelt hostNetwork passed: {}",
        text(&o)
    );
    // The same tree with a typo in the bgp overlay's DaemonSet patch: the rendering carries
    // it and validation refuses it.
    let copy = tmp.path.join("kubernetes");
    let cp = Command::new("cp")
        .arg("-r")
        .arg(repo().join("deploy/kubernetes"))
        .arg(&copy)
        .output()
        .unwrap();
    assert!(cp.status.success(), "{}", text(&cp));
    let patch = copy.join("overlays/bgp/bind-bgp-port.yaml");
    let p = std::fs::read_to_string(&patch).unwrap();
    assert!(p.contains("capabilities:"), "{p}");
    std::fs::write(&patch, p.replace("capabilities:", "capabilitis:")).unwrap();
    let rendered = tmp.path.join("bgp-typo.yaml");
    std::fs::write(&rendered, render_ok(&copy, "overlays/bgp", false)).unwrap();
    let o = validate("1.34.0", std::slice::from_ref(&rendered));
    assert!(
        o.status.code() == Some(1) && text(&o).contains("'capabilitis' was unexpected"),
        "a misspelt field in an overlay passed: {}",
        text(&o)
    );
    // A patch for a resource the base does not have is an error of the renderer.
    std::fs::write(&patch, p.replace("name: twilld", "name: twilld-x")).unwrap();
    let o = render(&copy, "overlays/bgp", false);
    assert!(
        !o.status.success() && text(&o).contains("matches no resource"),
        "{}",
        text(&o)
    );
}

#[test]
fn the_daemonset_runs_the_agent_the_way_the_design_says() {
    for o in OVERLAYS {
        let d = docs(o);
        let ns = find(&d, "Namespace");
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
            "{o}"
        );
        let sa = find(&d, "ServiceAccount");
        assert_eq!(sa["automountServiceAccountToken"], false, "{o}");
        assert!(
            !d.iter()
                .any(|x| x["kind"].as_str().unwrap().contains("Role")),
            "{o}: twilld reads nothing from the API: no RBAC"
        );
        let ds = find(&d, "DaemonSet");
        let spec = &ds["spec"]["template"]["spec"];
        assert_eq!(spec["hostNetwork"], true, "{o}");
        assert_eq!(spec["priorityClassName"], "system-node-critical", "{o}");
        // Cluster DNS needs the pod network this agent brings: the node's resolver.
        assert_eq!(spec["dnsPolicy"], "Default", "{o}");
        assert_eq!(spec["serviceAccountName"], sa["metadata"]["name"], "{o}");
        assert_eq!(
            spec["tolerations"],
            serde_json::json!([{"operator": "Exists"}]),
            "{o}"
        );
        let inits: Vec<&str> = spec["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(inits, ["apply-config", "install-cni"], "{o}");
        let install = &spec["initContainers"][1];
        assert_eq!(
            strs(&install["command"]),
            ["/usr/local/bin/twill", "install-cni"],
            "{o}"
        );
        let agent = &spec["containers"][0];
        assert_eq!(agent["name"], "twilld", "{o}");
        let all = spec["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(spec["containers"].as_array().unwrap());
        for c in all {
            let sc = &c["securityContext"];
            assert!(
                sc["privileged"].is_null(),
                "{o}: {} is privileged",
                c["name"]
            );
            assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"], "{o}");
        }
        let mut caps = strs(&agent["securityContext"]["capabilities"]["add"]);
        caps.sort();
        let want: &[&str] = if *o == "overlays/bgp" {
            &["NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW"]
        } else {
            &["NET_ADMIN", "NET_RAW"]
        };
        assert_eq!(caps, want, "{o}");
        let env = |name: &str| -> Value {
            agent["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{o}: twilld has no {name}"))
        };
        assert_eq!(
            env("TWILL_NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.nodeName"
        );
        assert_eq!(env("TWILL_STORE")["value"], "etcd");
        let listen = env("TWILL_LISTEN")["value"].as_str().unwrap().to_string();
        let (host, port) = listen.rsplit_once(':').unwrap();
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let g = &agent[probe]["httpGet"];
            assert_eq!(g["path"], path, "{o} {probe}");
            assert_eq!(g["host"], host, "{o} {probe}");
            assert_eq!(g["port"].to_string(), port, "{o} {probe}");
        }
        // hostPath folders, and who mounts them where (the same path on both sides).
        let host_paths: Vec<(&str, &str)> = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| Some((v["name"].as_str()?, v["hostPath"]["path"].as_str()?)))
            .collect();
        let mounts = |c: &Value| -> Vec<String> {
            c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|m| {
                    let (_, p) = host_paths.iter().find(|(n, _)| m["name"] == *n)?;
                    (m["mountPath"] == *p).then(|| p.to_string())
                })
                .collect()
        };
        assert_eq!(mounts(install), ["/opt/cni/bin", "/etc/cni/net.d"], "{o}");
        assert_eq!(mounts(agent), ["/run/twill", "/var/lib/twill"], "{o}");
    }
}

#[test]
fn each_overlays_network_config_is_what_twill_apply_stores() {
    let want = [
        ("base", "\"vxlan\"", "bridge"),
        (
            "overlays/vxlan",
            "{\"directRouting\":true,\"port\":8472,\"type\":\"vxlan\",\"vni\":1}",
            "bridge",
        ),
        ("overlays/bgp", "\"bgp\"", "l3"),
        ("overlays/host-gw", "\"host-gw\"", "bridge"),
    ];
    for (o, backend, wiring) in want {
        let tmp = twill_testkit::TempDir::new("deployapply");
        let d = docs(o);
        let cm = find(&d, "ConfigMap");
        let file = tmp.path.join("network-config.yaml");
        std::fs::write(&file, cm["data"]["network-config.yaml"].as_str().unwrap()).unwrap();
        let store = tmp.path.join("store");
        let store_args = [
            "--store",
            "embedded",
            "--store-dir",
            store.to_str().unwrap(),
        ];
        let apply = Command::new(TWILL)
            .args(store_args)
            .args(["apply", "-f", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(apply.status.success(), "{o}: {}", text(&apply));
        let get = Command::new(TWILL)
            .args(store_args)
            .args(["get", "config", "-o", "json"])
            .output()
            .unwrap();
        assert!(get.status.success(), "{o}: {}", text(&get));
        let got: Value = serde_json::from_slice(&get.stdout).unwrap();
        let spec = &got["spec"];
        assert_eq!(spec["backend"].to_string(), backend, "{o}: {got}");
        assert_eq!(
            spec["podWiring"].as_str().unwrap_or("bridge"),
            wiring,
            "{o}: {got}"
        );
        // What the README's `kubeadm init --pod-network-cidr` says.
        assert_eq!(spec["clusterCIDR"], "10.244.0.0/16", "{o}: {got}");
        // The etcd settings the agents and the init step read.
        assert!(
            cm["data"]["etcd_endpoints"]
                .as_str()
                .unwrap()
                .starts_with("https://"),
            "{o}"
        );
    }
}
