//! What the NetworkPolicy proofs share: a lab holding the upstream model (namespaces x, y,
//! z × pods a, b, c on 2 nodes, VXLAN between them, real twilld and twill-cni), its servers
//! on 80/81 TCP+UDP, `twill` pointed at the lab's store (`apply -f`, `delete`), and table
//! checks that print expected, observed and the comparison on failure. The lab is taken
//! down however the test ends. Lab names are `twl` + a letter per test + 4 hex digits of
//! the PID.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use twill_lab::netpol::{self, PortProto, Reachability, TruthTable};
use twill_lab::netpol_probe::{self, ModelPod, Servers};
use twill_lab::plan::{PodWiring, StoreKind};
use twill_lab::LabState;

/// How long a case waits for the dataplane to agree with its table (policies apply
/// asynchronously; upstream polls too).
pub const TABLE_DEADLINE: Duration = Duration::from_secs(15);

pub fn bins() -> (PathBuf, PathBuf, PathBuf) {
    (
        twill_testkit::workspace_bin("twill", "twill"),
        twill_testkit::workspace_bin("twill-cni", "twill-cni"),
        twill_testkit::workspace_bin("twilld", "twilld"),
    )
}

pub fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A case: its name and what it does on the lab.
pub type Case = (&'static str, fn(&PolicyLab));

pub struct PolicyLab {
    pub state: LabState,
    pub pods: Vec<ModelPod>,
    pub twill: PathBuf,
    servers: Option<Servers>,
    dir: twill_testkit::TempDir,
}

impl PolicyLab {
    /// The model on 2 nodes with `wiring`, its servers started.
    pub fn up(tag: char, wiring: PodWiring) -> PolicyLab {
        PolicyLab::up_with(tag, wiring, StoreKind::Embedded)
    }

    /// The same with the store of `store`'s kind (embedded or etcd).
    pub fn up_with(tag: char, wiring: PodWiring, store: StoreKind) -> PolicyLab {
        let name = format!("twl{tag}{:04x}", std::process::id() & 0xffff);
        let (twill, cni, twilld) = bins();
        let mut spec = netpol::model_spec(&name, 2, wiring);
        spec.store = store;
        let state = twill_lab::up(&spec, &cni, &twilld, &|_| {})
            .unwrap_or_else(|e| panic!("lab up {name} ({wiring:?}): {e}"));
        let mut lab = PolicyLab {
            pods: Vec::new(),
            state,
            twill,
            servers: None,
            dir: twill_testkit::TempDir::new("policy"),
        };
        lab.pods = netpol_probe::model_pods(&lab.state).unwrap();
        lab.servers = Some(netpol_probe::start_servers(&lab.pods).unwrap());
        lab
    }

    pub fn name(&self) -> &str {
        &self.state.plan.name
    }

    pub fn pod(&self, key: &str) -> &ModelPod {
        self.pods.iter().find(|p| p.key == key).unwrap()
    }

    /// `twill ARGS` against the lab's store, run on node n1 (as `twill lab exec n1 --
    /// twill ARGS`: an etcd store is reachable only on the underlay).
    pub fn twill(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.state.plan.nodes[0].netns])
            .arg(&self.twill)
            .args(args)
            .envs(self.state.plan.store_env())
            .output()
            .expect("run twill")
    }

    /// `twill apply -f` of `yaml`; panics with the output if it fails.
    pub fn apply(&self, yaml: &str) {
        let file = self.dir.path.join("apply.yaml");
        std::fs::write(&file, yaml).unwrap();
        let out = self.twill(&["apply", "-f", file.to_str().unwrap()]);
        assert!(out.status.success(), "apply:\n{yaml}\n{}", text(&out));
    }

    /// The store's keys under `prefix` (relative, e.g. `networkpolicies/`).
    pub fn store_list(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let prefix = format!("{}{prefix}", twill_store::PREFIX);
        twill_lab::daemons::with_store(&self.state.plan, move |store| {
            let (kvs, _) = store.list(&prefix).map_err(|e| e.to_string())?;
            Ok(kvs.into_iter().map(|kv| (kv.key, kv.value)).collect())
        })
        .unwrap()
    }

    /// The store as the model sees it (endpoints, labels, namespaces, policies).
    pub fn cluster(&self) -> twill_policy::cluster::Cluster {
        let mut entries = Vec::new();
        for p in twill_policy::cluster::PREFIXES {
            entries.extend(self.store_list(p));
        }
        twill_policy::cluster::Cluster::from_entries(entries.iter().map(|(k, v)| (k, v)))
    }

    /// What the model says on `pp` for the store as it is now.
    pub fn model_table(&self, pp: PortProto) -> TruthTable {
        netpol::model_table(&self.cluster(), &netpol::model_items(), pp)
    }

    /// Every table as expected (within [`TABLE_DEADLINE`]), or a panic with the diffs;
    /// the written-out expectation is first checked against the reference model on the
    /// lab's own store, so the test, the model and the dataplane agree three ways.
    pub fn expect(&self, case: &str, tables: &[(PortProto, &Reachability)]) {
        // The store converges too (twilld publishes endpoints as pods come): poll it.
        let start = std::time::Instant::now();
        loop {
            let cluster = self.cluster();
            let problems: Vec<String> = cluster.problems().map(|p| p.to_string()).collect();
            let disagree: Vec<String> = tables
                .iter()
                .filter_map(|(pp, r)| {
                    let model = netpol::model_table(&cluster, &netpol::model_items(), *pp);
                    r.report(*pp, &model)
                })
                .collect();
            if problems.is_empty() && disagree.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < TABLE_DEADLINE,
                "case {case:?}: the test's table and the model on the lab's store disagree \
                 (observed = the model's); bad store entries: {problems:?}\n{}",
                disagree.join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        if let Some(f) = netpol_probe::check_tables(&self.pods, tables, TABLE_DEADLINE) {
            panic!("case {case:?} on lab {}:\n{f}", self.name());
        }
    }

    /// Deletes every NetworkPolicy and GlobalNetworkPolicy (straight from the store: the
    /// agents see the same watch events as for `twill delete`) and waits for all-open.
    pub fn reset(&self, case: &str) {
        let keys: Vec<String> = ["networkpolicies/", "globalnetworkpolicies/", "podlabels/"]
            .iter()
            .flat_map(|p| self.store_list(p))
            .map(|(k, _)| k)
            .collect();
        twill_lab::daemons::with_store(&self.state.plan, move |store| {
            for k in &keys {
                store.delete(k).map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .unwrap();
        self.expect_all(
            &format!("{case}: all open again after its policies went"),
            &Reachability::new(true),
        );
    }

    /// [`PolicyLab::expect`] on all four ports/protocols with one table.
    pub fn expect_all(&self, case: &str, r: &Reachability) {
        let all = [
            PortProto::tcp(80),
            PortProto::tcp(81),
            PortProto::udp(80),
            PortProto::udp(81),
        ];
        let tables: Vec<(PortProto, &Reachability)> = all.iter().map(|pp| (*pp, r)).collect();
        self.expect(case, &tables);
    }
}

impl PolicyLab {
    /// Runs every case on this lab; each case's failure is collected (with its tables),
    /// its policies removed, and the next case runs; then fails with all of them.
    pub fn run(&self, cases: &[Case]) {
        let mut failures = Vec::new();
        for (name, case) in cases {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(self)));
            if let Err(e) = r {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("=== {name}\n{msg}"));
            }
            self.reset(name);
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
}

impl Drop for PolicyLab {
    fn drop(&mut self) {
        self.servers.take();
        if let Err(e) = twill_lab::down(&self.state.plan.name, &|_| {}) {
            eprintln!("lab down {}: {e}", self.state.plan.name);
        }
    }
}
