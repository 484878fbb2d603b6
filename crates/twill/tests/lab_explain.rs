//! `twill lab explain` on a real lab: the upstream model's namespaces x, y, z × pods a, b,
//! c on 2 nodes (VXLAN, bridge wiring, real twilld enforcing policy and twill-cni, the
//! pods' endpoints published to the embedded store), the model's answer from that store, and a real probe
//! the command makes itself (its own server in the destination pod) to say whether the
//! dataplane agrees. Bound: one lab (~5-10 s to build), a handful of single probes (each
//! at most 1 s, a disagreement retried 3 times). Needs root.

mod common;
use common::*;

use serde_json::{json, Value};
use twill_api::policy::network_policy_key;
use twill_lab::netpol;
use twill_lab::plan::PodWiring;
use twill_store::PREFIX;

struct Lab(String);

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = twill_lab::down(&self.0, &|_| {}) {
            eprintln!("lab down {}: {e}", self.0);
        }
    }
}

fn explain(name: &str, args: &[&str]) -> (i32, Value, String) {
    let mut a = vec!["lab", "explain", "--name", name];
    a.extend_from_slice(args);
    let text_out = twill(&a);
    let code = text_out.status.code().unwrap_or(-1);
    a.extend_from_slice(&["-o", "json"]);
    let o = twill(&a);
    assert_eq!(
        o.status.code(),
        Some(code),
        "text and json agree on the exit status:\n{}",
        text(&o)
    );
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}:\n{}", text(&o)));
    (
        code,
        v,
        String::from_utf8_lossy(&text_out.stdout).into_owned(),
    )
}

#[test]
fn lab_explain_says_the_model_and_probes_the_dataplane() {
    twill_testkit::require_root("lab_explain_says_the_model_and_probes_the_dataplane");
    let (cni, twilld) = ensure_binaries();
    let name = lab_name('e');
    let mut spec = netpol::model_spec(&name, 2, PodWiring::Bridge);
    // The agents enforce policy (twilld --policy true), so the probe can confirm a deny.
    spec.policy = true;
    let _lab = Lab(name.clone());
    let state = twill_lab::up(&spec, &cni, &twilld, &|_| {})
        .unwrap_or_else(|e| panic!("lab up {name}: {e}"));

    // Every pod's endpoint reaches the store (twilld publishes them at once; bounded wait).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let n = twill_lab::daemons::with_store(&state.plan, |s| {
            s.list(&format!("{PREFIX}endpoints/"))
                .map(|(kvs, _)| kvs.len())
                .map_err(|e| e.to_string())
        })
        .unwrap();
        if n == 9 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {n} of 9 endpoints in the store"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // No policy: open, and the probe (across nodes: x/a on n1, x/b on n2) connects.
    let (code, v, out) = explain(&name, &["x/a", "x/b", "80/tcp"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("x/a -> x/b 80/tcp: ALLOWED\n"), "{out}");
    assert!(
        out.contains("probe: connected (x/b answered 80/TCP from x/a in "),
        "{out}"
    );
    assert!(out.contains("the dataplane agrees"), "{out}");
    assert_eq!(v["model"]["allowed"], json!(true));
    assert_eq!(v["model"]["ingress"]["reason"], json!({"kind": "open"}));
    assert_eq!(v["probe"]["connected"], json!(true));
    assert_eq!(v["probe"]["agrees"], json!(true));

    // UDP, by the pod's address, to a named port of the destination.
    let ya = state
        .plan
        .pods()
        .find(|p| p.identity.as_ref().is_some_and(|i| i.key() == "y/a"))
        .map(|p| state.pod(&p.short).unwrap().address.unwrap())
        .unwrap();
    let (code, v, out) = explain(&name, &[&ya.to_string(), "z/c", "serve-81-udp/udp"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["model"]["source"]["pod"], json!("y/a"));
    assert_eq!(v["model"]["port"], json!(81));
    assert_eq!(v["probe"]["connected"], json!(true), "{out}");

    // From the destination's own node.
    let (code, v, out) = explain(&name, &["host", "x/c", "81/tcp"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("from the pod's own node: always allowed"),
        "{out}"
    );
    assert_eq!(v["probe"]["agrees"], json!(true), "{out}");

    // To an address no pod holds: the model judges egress alone, no probe is made.
    let (code, v, out) = explain(&name, &["x/a", "203.0.113.9", "443/tcp"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("probe: none made: the destination is 203.0.113.9"),
        "{out}"
    );
    assert_eq!(v["probe"]["connected"], Value::Null);

    // A policy in the store: x/b takes 80/tcp from y only. The model says so per pod.
    twill_lab::daemons::with_store(&state.plan, |s| {
        let spec = json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]}
        ]});
        s.put(
            &format!("{PREFIX}{}", network_policy_key("x", "b-from-y")),
            &serde_json::to_vec(&spec).unwrap(),
            None,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    })
    .unwrap();
    let (code, v, out) = explain(&name, &["y/c", "x/b", "80/tcp"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("allowed by NetworkPolicy x/b-from-y ingress rule 0"),
        "{out}"
    );
    assert_eq!(v["probe"]["agrees"], json!(true), "{out}");
    let (code, v, out) = explain(&name, &["z/a", "x/b", "80/tcp"]);
    assert_eq!(v["model"]["allowed"], json!(false), "{out}");
    assert!(
        out.contains("selected by x/b-from-y, and no rule of it allows 80/tcp from z/a"),
        "{out}"
    );
    // The agents enforce it: the probe gets no answer, the dataplane agrees (a
    // disagreement would be probed 3 times before being reported, exit 1).
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["probe"]["connected"], json!(false), "{out}");
    assert_eq!(v["probe"]["agrees"], json!(true), "{out}");
    assert!(out.contains("probe: no answer ("), "{out}");
    assert!(
        out.contains("the model denies it: the dataplane agrees"),
        "{out}"
    );
    // And the allowed one still connects through the policy.
    let (code, v, out) = explain(&name, &["y/b", "x/b", "80/tcp"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["probe"]["connected"], json!(true), "{out}");

    // Mistakes are said: an unknown pod, an unknown lab.
    let o = twill(&["lab", "explain", "--name", &name, "x/nope", "x/b", "80/tcp"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("pod x/nope is not in the store"),
        "{}",
        text(&o)
    );
    let o = twill(&[
        "lab", "explain", "--name", "twlnone", "x/a", "x/b", "80/tcp",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}
