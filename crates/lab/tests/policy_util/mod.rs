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

use twill_lab::netpol::{self, PortProto, Reachability};
use twill_lab::netpol_probe::{self, ModelPod, Servers};
use twill_lab::plan::PodWiring;
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
        let name = format!("twl{tag}{:04x}", std::process::id() & 0xffff);
        let (twill, cni, twilld) = bins();
        let spec = netpol::model_spec(&name, 2, wiring);
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

    /// `twill ARGS` against the lab's store.
    pub fn twill(&self, args: &[&str]) -> Output {
        Command::new(&self.twill)
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

    /// Every table as expected (within [`TABLE_DEADLINE`]), or a panic with the diffs.
    pub fn expect(&self, case: &str, tables: &[(PortProto, &Reachability)]) {
        if let Some(f) = netpol_probe::check_tables(&self.pods, tables, TABLE_DEADLINE) {
            panic!("case {case:?} on lab {}:\n{f}", self.name());
        }
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

impl Drop for PolicyLab {
    fn drop(&mut self) {
        self.servers.take();
        if let Err(e) = twill_lab::down(&self.state.plan.name, &|_| {}) {
            eprintln!("lab down {}: {e}", self.state.plan.name);
        }
    }
}
