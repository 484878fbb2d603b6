//! Open vSwitch in the lab (`--backend ovs`): every node namespace runs its own
//! ovsdb-server and ovs-vswitchd (RUNBOOK "Open vSwitch 3.1"), with their database, sockets,
//! pid files and logs in the node's folder under the lab's state dir, so no two nodes (and
//! no system OVS) share anything. The lab starts them before the node's twilld, records
//! them by PID, and stops them by that PID with the node and the lab (vswitchd first).
//!
//! Pure: [`OvsPaths`] (every path and argument list) and [`parse_tables`] (what
//! `ovs-vsctl --format=json list` prints, into [`OvsView`]); the rest is the I/O edge.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::build::LabError;
use crate::daemons;
use crate::plan::NodePlan;
use crate::state::ProcRecord;

/// The schema Debian's openvswitch-common ships.
pub const OVS_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
/// The OVS the lab is written for (Debian bookworm's openvswitch-switch).
pub const OVS_MAJOR: u32 = 3;
/// The Debian package that has ovsdb-server, ovs-vswitchd, ovs-vsctl and ovs-ofctl.
pub const OVS_PACKAGE: &str = "openvswitch-switch";
/// How long a daemon may take to create its socket.
pub const OVS_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// ovs-vswitchd exits in well under a second on SIGTERM; then SIGKILL.
pub const OVS_STOP_GRACE: Duration = Duration::from_secs(3);
/// Role prefixes of the lab's OVS process records (`ovsdb-n1`, `vswitchd-n1`).
pub const ROLE_OVSDB: &str = "ovsdb";
pub const ROLE_VSWITCHD: &str = "vswitchd";

/// Every path of one node's OVS. Pure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OvsPaths {
    pub netns: String,
    pub node: String,
    /// `<node dir>/ovs`: OVS_RUNDIR, OVS_DBDIR, OVS_LOGDIR, OVS_SYSCONFDIR all point here.
    pub dir: PathBuf,
}

impl OvsPaths {
    pub fn of(node: &NodePlan) -> OvsPaths {
        OvsPaths {
            netns: node.netns.clone(),
            node: node.short.clone(),
            dir: node.dir.join("ovs"),
        }
    }
    pub fn db(&self) -> PathBuf {
        self.dir.join("conf.db")
    }
    /// ovsdb-server's socket: what twilld and ovs-vsctl connect to.
    pub fn db_sock(&self) -> PathBuf {
        self.dir.join("db.sock")
    }
    /// `unix:<db.sock>`, ovs-vsctl's `--db` and ovs-vswitchd's database argument.
    pub fn db_remote(&self) -> String {
        format!("unix:{}", self.db_sock().display())
    }
    /// A daemon's control socket: OVS's own name, `<program>.<pid>.ctl` in OVS_RUNDIR (what
    /// ovs-appctl and twilld look for).
    pub fn vswitchd_ctl(&self, pid: u32) -> PathBuf {
        self.dir.join(format!("ovs-vswitchd.{pid}.ctl"))
    }
    pub fn ovsdb_ctl(&self, pid: u32) -> PathBuf {
        self.dir.join(format!("ovsdb-server.{pid}.ctl"))
    }
    pub fn ovsdb_log(&self) -> PathBuf {
        self.dir.join("ovsdb-server.log")
    }
    pub fn vswitchd_log(&self) -> PathBuf {
        self.dir.join("ovs-vswitchd.log")
    }
    /// The environment every OVS program of this node runs with (ovs-ofctl finds a
    /// bridge's `<bridge>.mgmt` socket in OVS_RUNDIR, ovs-appctl the daemons' ctl files).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let d = self.dir.display().to_string();
        vec![
            ("OVS_RUNDIR", d.clone()),
            ("OVS_DBDIR", d.clone()),
            ("OVS_LOGDIR", d.clone()),
            ("OVS_SYSCONFDIR", d),
        ]
    }
    pub fn ovsdb_args(&self) -> Vec<String> {
        vec![
            self.db().display().to_string(),
            format!("--remote=punix:{}", self.db_sock().display()),
            format!("--pidfile={}", self.dir.join("ovsdb-server.pid").display()),
            format!("--log-file={}", self.ovsdb_log().display()),
        ]
    }
    pub fn vswitchd_args(&self) -> Vec<String> {
        vec![
            self.db_remote(),
            format!("--pidfile={}", self.dir.join("ovs-vswitchd.pid").display()),
            format!("--log-file={}", self.vswitchd_log().display()),
        ]
    }
    pub fn ovsdb_role(&self) -> String {
        format!("{ROLE_OVSDB}-{}", self.node)
    }
    pub fn vswitchd_role(&self) -> String {
        format!("{ROLE_VSWITCHD}-{}", self.node)
    }

    /// `ip netns exec NS <prog>` with this node's OVS environment.
    pub fn command(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, prog]);
        c.envs(self.env());
        c
    }

    /// `ovs-vsctl --db=unix:… --timeout=5 ARGS` in the node; its stdout.
    pub fn vsctl(&self, args: &[&str]) -> Result<String, LabError> {
        let mut c = self.command("ovs-vsctl");
        c.arg(format!("--db={}", self.db_remote()))
            .arg("--timeout=5")
            .args(args);
        run(c)
    }

    /// `ovs-appctl -t ovs-vswitchd ARGS` in the node (found by its pidfile in the run
    /// directory); its stdout.
    pub fn appctl(&self, args: &[&str]) -> Result<String, LabError> {
        let mut c = self.command("ovs-appctl");
        c.args(["--timeout=5", "-t", "ovs-vswitchd"]).args(args);
        run(c)
    }

    /// `ovs-ofctl ARGS` in the node; its stdout.
    pub fn ofctl(&self, args: &[&str]) -> Result<String, LabError> {
        let mut c = self.command("ovs-ofctl");
        c.args(args);
        run(c)
    }
}

fn cmd_err(cmd: impl Into<String>, detail: impl Into<String>) -> LabError {
    LabError::Command {
        cmd: cmd.into(),
        detail: detail.into(),
    }
}

fn run(mut c: Command) -> Result<String, LabError> {
    let shown = format!("{c:?}");
    let out = c.output().map_err(|e| cmd_err(&shown, e.to_string()))?;
    if !out.status.success() {
        return Err(cmd_err(
            shown,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The major version in `ovs-vsctl --version`'s first line (`ovs-vsctl (Open vSwitch)
/// 3.1.0`). Pure.
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.lines().next()?.split_whitespace().last()?;
    let mut it = v.split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Checks that OVS is installed, in a version the lab knows: else a clear error naming
/// the package to install.
pub fn check_installed() -> Result<(), LabError> {
    for bin in [
        "ovsdb-server",
        "ovs-vswitchd",
        "ovs-vsctl",
        "ovs-ofctl",
        "ovsdb-tool",
    ] {
        if daemons::find_program(Path::new(bin)).is_none() {
            return Err(cmd_err(
                "--backend ovs",
                format!("{bin} is not installed: `apt-get install {OVS_PACKAGE}` (scripts/install-deps.sh has it)"),
            ));
        }
    }
    if !Path::new(OVS_SCHEMA).is_file() {
        return Err(cmd_err(
            "--backend ovs",
            format!("{OVS_SCHEMA} is missing: reinstall {OVS_PACKAGE}"),
        ));
    }
    let out = Command::new("ovs-vsctl")
        .arg("--version")
        .output()
        .map_err(|e| cmd_err("ovs-vsctl --version", e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match parse_version(&text) {
        Some((major, _)) if major == OVS_MAJOR => Ok(()),
        other => Err(cmd_err(
            "--backend ovs",
            format!(
                "Open vSwitch {} found, the lab needs {OVS_MAJOR}.x: `apt-get install {OVS_PACKAGE}` from Debian bookworm ({:?})",
                other.map_or("of unknown version".into(), |(a, b)| format!("{a}.{b}")),
                text.lines().next().unwrap_or("")
            ),
        )),
    }
}

fn wait_for(path: &Path, rec: &ProcRecord, log: &Path) -> Result<(), LabError> {
    let end = Instant::now() + OVS_READY_TIMEOUT;
    while !path.exists() {
        let dead = rec.pid.is_some_and(|p| !daemons::is_alive(p));
        if dead || Instant::now() >= end {
            return Err(cmd_err(
                format!("{} in {}", rec.role, rec.netns),
                format!(
                    "{} after {}s without {}; its output {}:\n{}\nits log {}:\n{}",
                    if dead { "exited" } else { "still starting" },
                    OVS_READY_TIMEOUT.as_secs(),
                    path.display(),
                    rec.log.display(),
                    daemons::log_tail(&rec.log),
                    log.display(),
                    daemons::log_tail(log)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Starts one node's OVS: creates the database (first time only), starts ovsdb-server,
/// initialises the database, starts ovs-vswitchd. Returns both records (ovsdb first). On
/// failure what was started is stopped again.
pub fn start(p: &OvsPaths) -> Result<Vec<ProcRecord>, LabError> {
    check_installed()?;
    std::fs::create_dir_all(&p.dir)
        .map_err(|e| cmd_err(format!("create {}", p.dir.display()), e.to_string()))?;
    if !p.db().exists() {
        let mut c = Command::new("ovsdb-tool");
        c.arg("create").arg(p.db()).arg(OVS_SCHEMA);
        run(c)?;
    }
    let ovsdb = start_ovsdb(p)?;
    match start_vswitchd(p) {
        Ok(v) => Ok(vec![ovsdb, v]),
        Err(e) => {
            daemons::stop(&ovsdb, OVS_STOP_GRACE);
            Err(e)
        }
    }
}

/// ovsdb-server, until its socket exists, and `ovs-vsctl --no-wait init`.
pub fn start_ovsdb(p: &OvsPaths) -> Result<ProcRecord, LabError> {
    let _ = std::fs::remove_file(p.db_sock());
    let rec = spawn_ovs(
        p,
        &p.ovsdb_role(),
        "ovsdb-server",
        &p.ovsdb_args(),
        "ovsdb-server.out",
    )?;
    if let Err(e) = wait_for(&p.db_sock(), &rec, &p.ovsdb_log())
        .and_then(|_| p.vsctl(&["--no-wait", "init"]).map(|_| ()))
    {
        daemons::stop(&rec, OVS_STOP_GRACE);
        return Err(e);
    }
    Ok(rec)
}

/// ovs-vswitchd, until its control socket exists.
pub fn start_vswitchd(p: &OvsPaths) -> Result<ProcRecord, LabError> {
    let rec = spawn_ovs(
        p,
        &p.vswitchd_role(),
        "ovs-vswitchd",
        &p.vswitchd_args(),
        "ovs-vswitchd.out",
    )?;
    // Its control socket first, then every bridge of the database up again: each answers
    // OpenFlow on its `<bridge>.mgmt` socket (the old daemon's socket files linger).
    let ctl = p.vswitchd_ctl(rec.pid.unwrap_or(0));
    let applied = wait_for(&ctl, &rec, &p.vswitchd_log()).and_then(|_| {
        let bridges = p.vsctl(&["list-br"])?;
        let end = Instant::now() + OVS_READY_TIMEOUT;
        for br in bridges.lines().map(str::trim).filter(|b| !b.is_empty()) {
            while let Err(e) = p.ofctl(&["show", br]) {
                if Instant::now() >= end {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    });
    if let Err(e) = applied {
        daemons::stop(&rec, OVS_STOP_GRACE);
        return Err(e);
    }
    Ok(rec)
}

fn spawn_ovs(
    p: &OvsPaths,
    role: &str,
    prog: &str,
    args: &[String],
    out: &str,
) -> Result<ProcRecord, LabError> {
    let bin = daemons::find_program(Path::new(prog)).ok_or_else(|| {
        cmd_err(
            format!("start {prog}"),
            format!("{prog} is not installed: `apt-get install {OVS_PACKAGE}`"),
        )
    })?;
    daemons::spawn_with_env(role, &p.netns, &bin, args, &p.dir.join(out), &p.env())
}

/// OVS's datapath types: the userspace one, and the kernel module's.
/// Which datapath this machine's OVS uses, detected as twilld detects it (the backend's
/// contract): the kernel's when its openvswitch module is loaded, else userspace.
pub fn datapath() -> twill_ovs::Datapath {
    twill_ovs::Datapath::detect(Path::new(twill_ovs::MODULE_PATH).exists())
}

/// `ethtool -K DEV tso off gso off tx off` in `netns`: the userspace datapath neither
/// segments nor fills in checksums (RUNBOOK).
pub fn offloads_off(netns: &str, dev: &str) -> Result<(), LabError> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns, "ethtool", "-K", dev])
        .args(["tso", "off", "gso", "off", "tx", "off"]);
    run(c).map(|_| ())
}

/// Stops OVS records by PID: ovs-vswitchd first (it holds the database connection), then
/// ovsdb-server. Returns notes for what had to be killed.
pub fn stop(recs: &[ProcRecord]) -> Vec<String> {
    let mut order: Vec<&ProcRecord> = recs.iter().collect();
    order.sort_by_key(|r| !r.role.starts_with(ROLE_VSWITCHD));
    order
        .into_iter()
        .filter_map(|r| daemons::stop(r, OVS_STOP_GRACE))
        .collect()
}

/// An OVSDB value as ovs-vsctl's JSON prints it, flattened: atoms as strings, sets as
/// lists, maps as maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OvsValue {
    Atom(String),
    Set(Vec<String>),
    Map(BTreeMap<String, String>),
}

fn atom(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        // ["uuid", "…"] or ["named-uuid", "…"]
        Value::Array(a) if a.len() == 2 && a[0].as_str().is_some_and(|t| t.ends_with("uuid")) => {
            a[1].as_str().map(str::to_string)
        }
        _ => None,
    }
}

fn ovs_value(v: &Value) -> Option<OvsValue> {
    if let Value::Array(a) = v {
        match a.first().and_then(Value::as_str) {
            Some("set") => {
                let items = a.get(1)?.as_array()?;
                return Some(OvsValue::Set(items.iter().filter_map(atom).collect()));
            }
            Some("map") => {
                let items = a.get(1)?.as_array()?;
                let m = items
                    .iter()
                    .filter_map(|kv| {
                        let kv = kv.as_array()?;
                        Some((atom(kv.first()?)?, atom(kv.get(1)?)?))
                    })
                    .collect();
                return Some(OvsValue::Map(m));
            }
            _ => {}
        }
    }
    atom(v).map(OvsValue::Atom)
}

/// One row: column → value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row(pub BTreeMap<String, OvsValue>);

impl Row {
    pub fn str(&self, col: &str) -> &str {
        match self.0.get(col) {
            Some(OvsValue::Atom(s)) => s,
            _ => "",
        }
    }
    /// A set column (an atom counts as a set of one; an empty set prints as `["set",[]]`).
    pub fn set(&self, col: &str) -> Vec<String> {
        match self.0.get(col) {
            Some(OvsValue::Set(v)) => v.clone(),
            Some(OvsValue::Atom(s)) => vec![s.clone()],
            _ => Vec::new(),
        }
    }
    pub fn map(&self, col: &str) -> BTreeMap<String, String> {
        match self.0.get(col) {
            Some(OvsValue::Map(m)) => m.clone(),
            _ => BTreeMap::new(),
        }
    }
}

/// Parses one `ovs-vsctl --format=json list TABLE` answer (`{"data": [[…]], "headings":
/// […]}`) into rows. Pure.
pub fn parse_table(text: &str) -> Result<Vec<Row>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let headings: Vec<String> = v["headings"]
        .as_array()
        .ok_or("no headings")?
        .iter()
        .filter_map(|h| h.as_str().map(str::to_string))
        .collect();
    let data = v["data"].as_array().ok_or("no data")?;
    Ok(data
        .iter()
        .filter_map(Value::as_array)
        .map(|cells| {
            Row(headings
                .iter()
                .zip(cells)
                .filter_map(|(h, c)| Some((h.clone(), ovs_value(c)?)))
                .collect())
        })
        .collect())
}

/// A tunnel interface as OVS holds it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TunnelIface {
    pub uuid: String,
    pub name: String,
    /// `gre` or `vxlan` (OVS's interface type).
    pub kind: String,
    /// `options:remote_ip`: an address, or `flow` (one flow-based port for every peer).
    pub remote_ip: String,
    pub local_ip: String,
    pub key: String,
    pub ofport: String,
    pub external_ids: BTreeMap<String, String>,
}

impl TunnelIface {
    pub fn remote(&self) -> Option<Ipv4Addr> {
        self.remote_ip.parse().ok()
    }
}

/// One port of a bridge.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OvsPort {
    pub uuid: String,
    pub name: String,
    /// Its interfaces' types (`internal`, `gre`, `vxlan`, `patch`, "" for a system device).
    pub kinds: Vec<String>,
    pub external_ids: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OvsBridge {
    pub uuid: String,
    pub name: String,
    pub datapath_type: String,
    pub external_ids: BTreeMap<String, String>,
    pub ports: Vec<OvsPort>,
}

/// One node's OVS as its database holds it: bridges with their ports, and the tunnel
/// interfaces.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OvsView {
    pub bridges: Vec<OvsBridge>,
    pub tunnels: Vec<TunnelIface>,
}

impl OvsView {
    pub fn bridge(&self, name: &str) -> Option<&OvsBridge> {
        self.bridges.iter().find(|b| b.name == name)
    }

    /// Every (port name, port uuid, interface uuids) in the database, sorted: what the
    /// churn and restart tests compare before and after.
    pub fn identities(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .bridges
            .iter()
            .flat_map(|b| {
                std::iter::once((format!("bridge {}", b.name), b.uuid.clone())).chain(
                    b.ports
                        .iter()
                        .map(|p| (format!("port {}/{}", b.name, p.name), p.uuid.clone())),
                )
            })
            .chain(
                self.tunnels
                    .iter()
                    .map(|t| (format!("interface {}", t.name), t.uuid.clone())),
            )
            .collect();
        v.sort();
        v
    }

    /// The remote addresses of the per-peer tunnel ports (flow-based ports excluded).
    pub fn remotes(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = self
            .tunnels
            .iter()
            .filter_map(TunnelIface::remote)
            .collect();
        v.sort();
        v
    }
}

/// Builds the view from the Bridge, Port and Interface tables. Pure.
pub fn view_from_tables(bridges: &[Row], ports: &[Row], ifaces: &[Row]) -> OvsView {
    let iface_by_uuid: BTreeMap<&str, &Row> = ifaces.iter().map(|r| (r.str("_uuid"), r)).collect();
    let port_by_uuid: BTreeMap<&str, &Row> = ports.iter().map(|r| (r.str("_uuid"), r)).collect();
    let mut out = OvsView::default();
    for b in bridges {
        let mut bp: Vec<OvsPort> = b
            .set("ports")
            .iter()
            .filter_map(|u| port_by_uuid.get(u.as_str()))
            .map(|p| OvsPort {
                uuid: p.str("_uuid").into(),
                name: p.str("name").into(),
                kinds: p
                    .set("interfaces")
                    .iter()
                    .filter_map(|u| iface_by_uuid.get(u.as_str()))
                    .map(|i| i.str("type").to_string())
                    .collect(),
                external_ids: p.map("external_ids"),
            })
            .collect();
        bp.sort_by(|a, b| a.name.cmp(&b.name));
        out.bridges.push(OvsBridge {
            uuid: b.str("_uuid").into(),
            name: b.str("name").into(),
            datapath_type: b.str("datapath_type").into(),
            external_ids: b.map("external_ids"),
            ports: bp,
        });
    }
    out.bridges.sort_by(|a, b| a.name.cmp(&b.name));
    for i in ifaces {
        let kind = i.str("type");
        if !matches!(kind, "gre" | "vxlan" | "geneve") {
            continue;
        }
        let o = i.map("options");
        out.tunnels.push(TunnelIface {
            uuid: i.str("_uuid").into(),
            name: i.str("name").into(),
            kind: kind.into(),
            remote_ip: o.get("remote_ip").cloned().unwrap_or_default(),
            local_ip: o.get("local_ip").cloned().unwrap_or_default(),
            key: o.get("key").cloned().unwrap_or_default(),
            ofport: i.str("ofport").into(),
            external_ids: i.map("external_ids"),
        });
    }
    out.tunnels.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Reads one node's OVS database (three `ovs-vsctl list` calls in one invocation).
pub fn read_view(p: &OvsPaths) -> Result<OvsView, LabError> {
    let text = p.vsctl(&[
        "--format=json",
        "--",
        "list",
        "Bridge",
        "--",
        "list",
        "Port",
        "--",
        "list",
        "Interface",
    ])?;
    let tables: Vec<Vec<Row>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_table)
        .collect::<Result<_, _>>()
        .map_err(|e| cmd_err(format!("read OVS in {}", p.netns), e))?;
    if tables.len() != 3 {
        return Err(cmd_err(
            format!("read OVS in {}", p.netns),
            format!("ovs-vsctl printed {} tables, not 3", tables.len()),
        ));
    }
    Ok(view_from_tables(&tables[0], &tables[1], &tables[2]))
}

/// Twill's integration bridge, its port into the host, and its tunnel ports (the backend's
/// contract, /work/coord/OVS.md).
pub use twill_ovs::INTEGRATION_BRIDGE;
pub const HOST_PORT: &str = twill_ovs::HOST_DEVICE;
/// The top 16 bits of every flow cookie twilld writes.
pub const TWILL_COOKIE_TOP: u64 = 0x5477;

/// One OpenFlow flow as `ovs-ofctl dump-flows` prints it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Flow {
    pub cookie: u64,
    pub table: u8,
    pub priority: u32,
    pub n_packets: u64,
    /// The match fields (`in_port=1,ip,nw_dst=10.244.2.0/24`).
    pub matches: String,
    pub actions: String,
}

impl Flow {
    pub fn is_twills(&self) -> bool {
        self.cookie >> 48 == TWILL_COOKIE_TOP
    }
    /// The peer a flow sends to (`set_field:IP->tun_dst`) or hears from (`tun_src=IP`).
    /// Both spellings: OpenFlow 1.3's `set_field:IP->tun_dst` and OpenFlow 1.0's (ovs-ofctl's
    /// default) `load:0xHEX->NXM_NX_TUN_IPV4_DST[]`.
    pub fn peer(&self) -> Option<(Ipv4Addr, FlowDir)> {
        if let Some(i) = self.actions.find("->tun_dst") {
            let head = &self.actions[..i];
            let ip = head.rsplit([':', ',']).next()?;
            return Some((ip.parse().ok()?, FlowDir::Out));
        }
        if let Some(i) = self.actions.find("->NXM_NX_TUN_IPV4_DST[]") {
            let head = &self.actions[..i];
            let hex = head.rsplit([':', ',']).next()?.strip_prefix("0x")?;
            let v = u32::from_str_radix(hex, 16).ok()?;
            return Some((Ipv4Addr::from(v), FlowDir::Out));
        }
        self.matches
            .split(',')
            .find_map(|f| f.strip_prefix("tun_src="))
            .and_then(|ip| ip.parse().ok())
            .map(|ip| (ip, FlowDir::In))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowDir {
    /// Into the tunnel, towards the peer.
    Out,
    /// From the peer, out of the tunnel.
    In,
}

/// Parses `ovs-ofctl dump-flows BRIDGE` (any OpenFlow version's header line is skipped).
/// Pure.
pub fn parse_flows(text: &str) -> Vec<Flow> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let (head, actions) = line.split_once(" actions=")?;
            let mut f = Flow {
                cookie: 0,
                table: 0,
                priority: 32768,
                n_packets: 0,
                matches: String::new(),
                actions: actions.trim().to_string(),
            };
            let mut matches = Vec::new();
            for part in head.split([',', ' ']).filter(|p| !p.is_empty()) {
                match part.split_once('=') {
                    Some(("cookie", v)) => {
                        f.cookie = u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()?
                    }
                    Some(("table", v)) => f.table = v.parse().ok()?,
                    Some(("n_packets", v)) => f.n_packets = v.parse().ok()?,
                    Some(("priority", v)) => f.priority = v.parse().ok()?,
                    Some((
                        "duration" | "n_bytes" | "idle_age" | "hard_age" | "idle_timeout"
                        | "hard_timeout",
                        _,
                    )) => {}
                    _ => matches.push(part),
                }
            }
            f.matches = matches.join(",");
            Some(f)
        })
        .collect()
}

/// A node's tunnels as its flows keep them: per peer, the flows out and in (the
/// walk-through's "a GRE port per peer", here one flow-based port and these flows). Pure.
pub fn peer_tunnels(flows: &[Flow]) -> BTreeMap<Ipv4Addr, (usize, usize)> {
    let mut m: BTreeMap<Ipv4Addr, (usize, usize)> = BTreeMap::new();
    for f in flows.iter().filter(|f| f.is_twills()) {
        if let Some((ip, dir)) = f.peer() {
            let e = m.entry(ip).or_default();
            match dir {
                FlowDir::Out => e.0 += 1,
                FlowDir::In => e.1 += 1,
            }
        }
    }
    m
}

/// One node's OVS, read: its database and its integration bridge's flows.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeOvs {
    pub node: String,
    pub netns: String,
    pub view: OvsView,
    /// Empty when the integration bridge does not exist (yet).
    pub flows: Vec<Flow>,
}

impl NodeOvs {
    pub fn peers(&self) -> BTreeMap<Ipv4Addr, (usize, usize)> {
        peer_tunnels(&self.flows)
    }
}

/// Reads one node's OVS database and flows.
pub fn read_node(p: &OvsPaths) -> Result<NodeOvs, LabError> {
    let view = read_view(p)?;
    let flows = if view.bridge(INTEGRATION_BRIDGE).is_some() {
        parse_flows(&p.ofctl(&["dump-flows", INTEGRATION_BRIDGE])?)
    } else {
        Vec::new()
    };
    Ok(NodeOvs {
        node: p.node.clone(),
        netns: p.netns.clone(),
        view,
        flows,
    })
}

/// What one node's OVS holds for its tunnels: per peer node IP its flows (out, in), and
/// with the userspace datapath its tunnel neighbour cache (None: the kernel datapath, which
/// resolves next hops itself).
pub struct TunnelState {
    pub node: String,
    pub peers: BTreeMap<Ipv4Addr, (usize, usize)>,
    pub cache: Option<Vec<twill_ovs::neigh::CacheEntry>>,
}

/// What the nodes' OVS still lack before a pod's first packet to another node gets
/// through: flows both ways to every other node, and (userspace datapath) the next hop's
/// MAC in the cache of the bridge holding the node IP, without which ovs-vswitchd drops
/// the packet while it ARPs (twill_ovs::neigh). Pure.
pub fn tunnel_gaps(plan: &crate::plan::LabPlan, states: &[TunnelState]) -> Vec<String> {
    let mut gaps = Vec::new();
    for s in states {
        let Some(from) = plan.nodes.iter().find(|n| n.short == s.node) else {
            continue;
        };
        for to in plan.nodes.iter().filter(|n| n.short != s.node) {
            let peer = to.address.addr();
            match s.peers.get(&peer) {
                Some((o, i)) if *o > 0 && *i > 0 => {}
                _ => gaps.push(format!(
                    "{} has no flows to and from {} ({peer}) in {INTEGRATION_BRIDGE} yet",
                    from.short, to.short
                )),
            }
            let Some(cache) = &s.cache else { continue };
            let hop = if from.segment == to.segment {
                peer
            } else {
                from.gateway
            };
            let known = cache
                .iter()
                .any(|c| c.ip == hop && c.bridge == crate::plan::OVS_PHY_BRIDGE && !c.stale);
            if !known {
                gaps.push(format!(
                    "{}'s ovs-vswitchd has no MAC for {hop} (next hop to {}) in its tunnel neighbour cache (ovs-appctl tnl/neigh/show)",
                    from.short, to.short
                ));
            }
        }
    }
    gaps
}

/// What `node` still keeps of a tunnel to a node that left (its IP `gone`): flows into
/// it or out of it. None once both are gone. Pure.
pub fn leftover_tunnel(node: &str, state: &TunnelState, gone: Ipv4Addr) -> Option<String> {
    match state.peers.get(&gone) {
        Some((out, inn)) if *out > 0 || *inn > 0 => Some(format!(
            "{node} still has {out} flow(s) into and {inn} out of the tunnel to {gone} in {INTEGRATION_BRIDGE}"
        )),
        _ => None,
    }
}

/// Reads [`TunnelState`] of one node (`ovs-ofctl dump-flows`, and `tnl/neigh/show` when
/// `userspace`).
pub fn read_tunnel_state(p: &OvsPaths, userspace: bool) -> Result<TunnelState, LabError> {
    let peers = peer_tunnels(&parse_flows(&p.ofctl(&["dump-flows", INTEGRATION_BRIDGE])?));
    let cache = if userspace {
        Some(twill_ovs::neigh::parse_cache(
            &p.appctl(&["tnl/neigh/show"])?,
        ))
    } else {
        None
    };
    Ok(TunnelState {
        node: p.node.clone(),
        peers,
        cache,
    })
}

/// Every node's OVS of a lab: the nodes whose OVS database socket exists (none for a lab
/// of another backend); a node whose OVS cannot be read is left out.
pub fn read_lab(plan: &crate::plan::LabPlan) -> Vec<NodeOvs> {
    plan.nodes
        .iter()
        .map(OvsPaths::of)
        .filter(|p| p.db_sock().exists())
        .filter_map(|p| read_node(&p).ok())
        .collect()
}

/// The tunnel a packet to `dst` takes once the kernel routed it into OVS's port `dev`:
/// the Twill flow in from `dev` whose `nw_dst` holds `dst` and sets `tun_dst`, out of the
/// tunnel port (its local_ip the outer source). Pure.
pub fn tunnel_for(o: &NodeOvs, dev: &str, dst: Ipv4Addr) -> Option<crate::trace::path::OvsJump> {
    if dev != HOST_PORT {
        return None;
    }
    let flow = o.flows.iter().filter(|f| f.is_twills()).find(|f| {
        f.peer().is_some_and(|(_, d)| d == FlowDir::Out)
            && f.matches.split(',').any(|m| {
                m.strip_prefix("nw_dst=")
                    .and_then(|n| {
                        n.parse::<ipnet::Ipv4Net>()
                            .ok()
                            .or_else(|| n.parse::<Ipv4Addr>().ok().map(ipnet::Ipv4Net::from))
                    })
                    .is_some_and(|n| n.contains(&dst))
            })
    })?;
    let (remote, _) = flow.peer()?;
    let t = o.view.tunnels.first()?;
    let local = t.local_ip.parse().ok()?;
    Some(crate::trace::path::OvsJump {
        local,
        remote,
        far_port: HOST_PORT.to_string(),
        note: format!(
            "OVS {INTEGRATION_BRIDGE}: flow {} → set tun_dst {remote}, out {} ({} remote_ip={})",
            flow.matches, t.name, t.kind, t.remote_ip
        ),
    })
}

/// The system port (a kernel device, eth0) of the OVS bridge whose internal port is `dev`.
/// Pure.
pub fn system_port(view: &OvsView, dev: &str) -> Option<String> {
    let b = view.bridge(dev)?;
    b.ports
        .iter()
        .find(|p| p.kinds.iter().all(|k| k.is_empty()) && !p.kinds.is_empty())
        .map(|p| p.name.clone())
}

/// What `twill lab ovs` shows of one node (and tests compare): its OVS, and per peer
/// node the flows that keep its tunnel.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeOvsReport {
    pub node: String,
    pub netns: String,
    pub bridges: Vec<OvsBridge>,
    pub tunnels: Vec<TunnelIface>,
    /// Every bridge, port and tunnel interface with its uuid (sorted).
    pub identities: Vec<(String, String)>,
    /// Peer node IP → (flows into the tunnel towards it, flows out of it from it).
    pub peers: BTreeMap<Ipv4Addr, (usize, usize)>,
    /// Twill's flows (cookie 0x5477…) on the integration bridge.
    pub twill_flows: usize,
}

impl From<&NodeOvs> for NodeOvsReport {
    fn from(o: &NodeOvs) -> NodeOvsReport {
        NodeOvsReport {
            node: o.node.clone(),
            netns: o.netns.clone(),
            bridges: o.view.bridges.clone(),
            tunnels: o.view.tunnels.clone(),
            identities: o.view.identities(),
            peers: o.peers(),
            twill_flows: o.flows.iter().filter(|f| f.is_twills()).count(),
        }
    }
}

/// The mesh a lab of `n` nodes needs: a tunnel from every node to every other, n·(n−1)
/// (each pair has two ends), which the walk-through adds by hand, node by node. Pure.
pub const fn mesh_tunnels(n: usize) -> usize {
    n * n.saturating_sub(1)
}

/// `twill lab ovs` as text: per node, its bridges and ports, and the peers its flows keep.
/// Pure.
pub fn render(reports: &[NodeOvsReport], ips: &BTreeMap<Ipv4Addr, String>) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for r in reports {
        let _ = writeln!(s, "node {} ({})", r.node, r.netns);
        for b in &r.bridges {
            let owner = if b.external_ids.contains_key("twill-owner") {
                ", Twill's"
            } else {
                ""
            };
            let _ = writeln!(s, "  bridge {} ({}{owner})", b.name, b.datapath_type);
            for p in &b.ports {
                let what = match r.tunnels.iter().find(|t| t.name == p.name) {
                    Some(t) => format!(
                        "{} remote_ip={} local_ip={}",
                        t.kind, t.remote_ip, t.local_ip
                    ),
                    None => match p.kinds.first().map(String::as_str) {
                        Some("") | None => "system".into(),
                        Some(k) => k.into(),
                    },
                };
                let _ = writeln!(s, "    port {:<12} {what}", p.name);
            }
        }
        let _ = writeln!(
            s,
            "  tunnels kept by flows ({} of Twill's flows):",
            r.twill_flows
        );
        if r.peers.is_empty() {
            let _ = writeln!(s, "    (none)");
        }
        for (ip, (out, inn)) in &r.peers {
            let who = ips.get(ip).map(String::as_str).unwrap_or("?");
            let _ = writeln!(s, "    → {who:<4} {ip:<15} {out} flow(s) out, {inn} in");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGES: &str = r#"{"data":[["br-int",["uuid","28b55e8a-2278-404c-800a-7bb22ffcae7a"],["set",[["uuid","8183cd75-ab2c-47ef-8004-75a257fc17a7"],["uuid","11111111-2278-404c-800a-7bb22ffcae7a"]]],"netdev",["map",[["twill","owned"]]]]],"headings":["name","_uuid","ports","datapath_type","external_ids"]}"#;
    const PORTS: &str = r#"{"data":[["br-int",["uuid","8183cd75-ab2c-47ef-8004-75a257fc17a7"],["uuid","aaaaaaaa-0000-0000-0000-000000000001"],["map",[]]],["twl-gre-n2",["uuid","11111111-2278-404c-800a-7bb22ffcae7a"],["uuid","aaaaaaaa-0000-0000-0000-000000000002"],["map",[["twill-peer","n2"]]]]],"headings":["name","_uuid","interfaces","external_ids"]}"#;
    const IFACES: &str = r#"{"data":[["br-int",["uuid","aaaaaaaa-0000-0000-0000-000000000001"],"internal",["map",[]],65534,["map",[]]],["twl-gre-n2",["uuid","aaaaaaaa-0000-0000-0000-000000000002"],"gre",["map",[["key","flow"],["remote_ip","192.0.2.12"]]],1,["map",[["twill-peer","n2"]]]]],"headings":["name","_uuid","type","options","ofport","external_ids"]}"#;

    #[test]
    fn a_tunnel_is_left_over_while_a_flow_either_way_remains() {
        let gone: Ipv4Addr = "192.0.2.13".parse().unwrap();
        let state = |peers: &[(Ipv4Addr, (usize, usize))]| TunnelState {
            node: "n1".into(),
            peers: peers.iter().cloned().collect(),
            cache: None,
        };
        let other: Ipv4Addr = "192.0.2.12".parse().unwrap();
        assert_eq!(
            leftover_tunnel("n1", &state(&[(other, (1, 2))]), gone),
            None
        );
        assert_eq!(leftover_tunnel("n1", &state(&[(gone, (0, 0))]), gone), None);
        let out_only = leftover_tunnel("n1", &state(&[(gone, (1, 0))]), gone).unwrap();
        assert!(
            out_only.contains("n1 still has 1 flow(s) into and 0 out of the tunnel to 192.0.2.13"),
            "{out_only}"
        );
        assert!(leftover_tunnel("n1", &state(&[(gone, (0, 2))]), gone).is_some());
    }

    #[test]
    fn ovs_vsctl_json_becomes_bridges_ports_and_tunnels() {
        let v = view_from_tables(
            &parse_table(BRIDGES).unwrap(),
            &parse_table(PORTS).unwrap(),
            &parse_table(IFACES).unwrap(),
        );
        assert_eq!(v.bridges.len(), 1);
        let b = v.bridge("br-int").unwrap();
        assert_eq!(b.datapath_type, "netdev");
        assert_eq!(
            b.external_ids.get("twill").map(String::as_str),
            Some("owned")
        );
        let names: Vec<&str> = b.ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["br-int", "twl-gre-n2"]);
        assert_eq!(b.ports[0].kinds, ["internal"]);
        assert_eq!(v.tunnels.len(), 1);
        let t = &v.tunnels[0];
        assert_eq!(
            (t.kind.as_str(), t.key.as_str(), t.ofport.as_str()),
            ("gre", "flow", "1")
        );
        assert_eq!(v.remotes(), ["192.0.2.12".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(v.identities().len(), 4);
        assert!(parse_table("nope").is_err());
        assert!(parse_table("{}").is_err());
    }

    #[test]
    fn flows_name_their_peers() {
        let text = "NXST_FLOW reply (xid=0x4):
 cookie=0x5477000000000001, duration=3.2s, table=0, n_packets=5, n_bytes=490, priority=100,arp,in_port=1,arp_tpa=169.254.84.84 actions=load:0x2->NXM_OF_ARP_OP[],IN_PORT
 cookie=0x547700000000aa02, duration=3.2s, table=0, n_packets=7, n_bytes=686, priority=100,ip,in_port=1,nw_dst=10.244.2.0/24 actions=set_field:192.0.2.12->tun_dst,output:10
 cookie=0x547700000000aa03, duration=3.2s, table=0, n_packets=7, n_bytes=686, priority=100,tun_src=192.0.2.12,ip,in_port=10,nw_src=10.244.2.0/24 actions=mod_dl_dst:0a:54:a9:fe:54:54,output:1
 cookie=0x0, duration=9.0s, table=0, n_packets=0, n_bytes=0, priority=0 actions=NORMAL
 cookie=0x5477000000000004, duration=1.0s, table=0, n_packets=0, n_bytes=0, priority=100,ip,in_port=1,nw_dst=10.244.3.0/24 actions=load:0xc000020d->NXM_NX_TUN_IPV4_DST[],output:10
";
        let flows = parse_flows(text);
        assert_eq!(flows.len(), 5);
        let n3: Ipv4Addr = "192.0.2.13".parse().unwrap();
        assert_eq!(flows[4].peer(), Some((n3, FlowDir::Out)));
        let flows = &flows[..4];
        assert_eq!(flows[1].priority, 100);
        assert_eq!(flows[1].n_packets, 7);
        assert_eq!(flows[1].matches, "ip,in_port=1,nw_dst=10.244.2.0/24");
        assert!(flows[1].is_twills() && !flows[3].is_twills());
        let ip: Ipv4Addr = "192.0.2.12".parse().unwrap();
        assert_eq!(flows[1].peer(), Some((ip, FlowDir::Out)));
        assert_eq!(flows[2].peer(), Some((ip, FlowDir::In)));
        assert_eq!(flows[0].peer(), None);
        let peers = peer_tunnels(flows);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[&ip], (1, 1));
    }

    #[test]
    fn versions_and_paths() {
        assert_eq!(
            parse_version("ovs-vsctl (Open vSwitch) 3.1.0\nDB Schema 8.3.1\n"),
            Some((3, 1))
        );
        assert_eq!(parse_version(""), None);
        let plan = crate::plan::plan(&crate::plan::LabSpec::default()).unwrap();
        let p = OvsPaths::of(&plan.nodes[0]);
        assert!(p.db_sock().starts_with(&plan.nodes[0].dir));
        // A unix socket path must fit sun_path (108 bytes).
        assert!(p.db_sock().as_os_str().len() < 100);
        assert_eq!(p.ovsdb_role(), "ovsdb-n1");
        assert!(p.vswitchd_args()[0].starts_with("unix:/run/twllab/"));
        assert!(p
            .env()
            .iter()
            .all(|(_, v)| v == &p.dir.display().to_string()));
    }

    #[test]
    fn tunnel_gaps_name_missing_flows_and_next_hops_by_segment() {
        use crate::plan::{plan, LabSpec};
        use twill_ovs::neigh::CacheEntry;
        let p = plan(&LabSpec {
            name: "twlgap".into(),
            nodes: 3,
            pods_per_node: 1,
            segments: 2,
            ..LabSpec::default()
        })
        .unwrap();
        let (n1, n2, n3) = (&p.nodes[0], &p.nodes[1], &p.nodes[2]);
        assert_eq!(n1.segment, n3.segment, "nodes alternate segments");
        assert_ne!(n1.segment, n2.segment);
        let entry = |ip: Ipv4Addr, stale: bool| CacheEntry {
            ip,
            mac: [2, 0, 0, 0, 0, 1],
            bridge: crate::plan::OVS_PHY_BRIDGE.into(),
            stale,
        };
        let both = |a: &crate::plan::NodePlan| (a.address.addr(), (1, 2));
        let states = [TunnelState {
            node: "n1".into(),
            // n3 only has flows out, not in.
            peers: [both(n2), (n3.address.addr(), (1, 0))].into(),
            // n2 is reached through n1's gateway (known), n3 directly (only a STALE entry).
            cache: Some(vec![
                entry(n1.gateway, false),
                entry(n3.address.addr(), true),
            ]),
        }];
        assert_eq!(
            tunnel_gaps(&p, &states),
            [
                format!("n1 has no flows to and from n3 ({}) in twl-int yet", n3.address.addr()),
                format!(
                    "n1's ovs-vswitchd has no MAC for {} (next hop to n3) in its tunnel neighbour cache (ovs-appctl tnl/neigh/show)",
                    n3.address.addr()
                ),
            ]
        );
        // The kernel datapath resolves next hops itself: flows are all that count.
        let states = [TunnelState {
            node: "n1".into(),
            peers: [both(n2), both(n3)].into(),
            cache: None,
        }];
        assert!(tunnel_gaps(&p, &states).is_empty());
    }
}
