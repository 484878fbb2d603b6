//! OVSDB rows as Twill reads them, and the planner of its bridge and ports (pure).
//!
//! [`Snapshot::parse`] decodes what `ovs-vsctl --format=json` prints for
//! [`Snapshot::QUERY`] (one JSON table per line; cells in RFC 7047 §5.1 notation:
//! atoms, `["uuid", U]`, `["set", [...]]`, `["map", [[k, v], ...]]`). [`plan`] compares the
//! bridge Twill wants ([`BridgeWant`]) with it and returns the `ovs-vsctl` commands of one
//! transaction ([`DbPlan::args`]; none when everything matches) and the problems found.
//! Only rows marked `external_ids:twill-owner=twilld` are changed or deleted.

use crate::{Error, OWNER_KEY, OWNER_VALUE};
use serde_json::Value;
use std::collections::BTreeMap;

/// A Bridge row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BridgeRow {
    pub uuid: String,
    pub name: String,
    pub datapath_type: String,
    pub fail_mode: Option<String>,
    pub ports: Vec<String>,
    pub external_ids: BTreeMap<String, String>,
}

/// A Port row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortRow {
    pub uuid: String,
    pub name: String,
    pub interfaces: Vec<String>,
    pub external_ids: BTreeMap<String, String>,
}

/// An Interface row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IfaceRow {
    pub uuid: String,
    pub name: String,
    /// `type` ("" is a system device).
    pub kind: String,
    pub options: BTreeMap<String, String>,
    pub ofport_request: Option<i64>,
    /// Set by ovs-vswitchd once it opened the device (-1: it could not).
    pub ofport: Option<i64>,
    pub mac: Option<String>,
    pub mtu_request: Option<i64>,
    pub external_ids: BTreeMap<String, String>,
    /// ovs-vswitchd's reason for not opening it.
    pub error: Option<String>,
}

/// What the database holds, as far as Twill looks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub bridges: Vec<BridgeRow>,
    pub ports: Vec<PortRow>,
    pub interfaces: Vec<IfaceRow>,
}

fn owned(ids: &BTreeMap<String, String>) -> bool {
    ids.get(OWNER_KEY).map(String::as_str) == Some(OWNER_VALUE)
}

impl BridgeRow {
    pub fn is_twills(&self) -> bool {
        owned(&self.external_ids)
    }
}

impl PortRow {
    pub fn is_twills(&self) -> bool {
        owned(&self.external_ids)
    }
}

impl Snapshot {
    /// The `ovs-vsctl` arguments that print the three tables [`Snapshot::parse`] reads.
    pub const QUERY: &'static [&'static str] = &[
        "--format=json",
        "--",
        "--columns=_uuid,name,datapath_type,fail_mode,ports,external_ids",
        "list",
        "Bridge",
        "--",
        "--columns=_uuid,name,interfaces,external_ids",
        "list",
        "Port",
        "--",
        "--columns=_uuid,name,type,options,ofport_request,ofport,mac,mtu_request,external_ids,error",
        "list",
        "Interface",
    ];

    /// Decodes [`Snapshot::QUERY`]'s output.
    pub fn parse(text: &str) -> Result<Snapshot, Error> {
        let tables: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let [bridges, ports, interfaces] = tables[..] else {
            return Err(decode(
                "ovs-vsctl list",
                format!("{} tables, not 3", tables.len()),
            ));
        };
        let json = |t: &str, table: &str| {
            serde_json::from_str::<Value>(t).map_err(|e| decode(table, e.to_string()))
        };
        let (bridges, ports, interfaces) = (
            json(bridges, "Bridge")?,
            json(ports, "Port")?,
            json(interfaces, "Interface")?,
        );
        let bridges = rows(&bridges, "Bridge")?
            .iter()
            .map(|r| {
                Ok(BridgeRow {
                    uuid: r.uuid("_uuid")?,
                    name: r.string("name")?,
                    datapath_type: r.string("datapath_type")?,
                    fail_mode: r.optional_string("fail_mode")?,
                    ports: r.uuids("ports")?,
                    external_ids: r.map("external_ids")?,
                })
            })
            .collect::<Result<_, Error>>()?;
        let ports = rows(&ports, "Port")?
            .iter()
            .map(|r| {
                Ok(PortRow {
                    uuid: r.uuid("_uuid")?,
                    name: r.string("name")?,
                    interfaces: r.uuids("interfaces")?,
                    external_ids: r.map("external_ids")?,
                })
            })
            .collect::<Result<_, Error>>()?;
        let interfaces = rows(&interfaces, "Interface")?
            .iter()
            .map(|r| {
                Ok(IfaceRow {
                    uuid: r.uuid("_uuid")?,
                    name: r.string("name")?,
                    kind: r.string("type")?,
                    options: r.map("options")?,
                    ofport_request: r.optional_int("ofport_request")?,
                    ofport: r.optional_int("ofport")?,
                    mac: r.optional_string("mac")?,
                    mtu_request: r.optional_int("mtu_request")?,
                    external_ids: r.map("external_ids")?,
                    error: r.optional_string("error")?,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Snapshot {
            bridges,
            ports,
            interfaces,
        })
    }

    pub fn bridge(&self, name: &str) -> Option<&BridgeRow> {
        self.bridges.iter().find(|b| b.name == name)
    }

    pub fn port(&self, name: &str) -> Option<&PortRow> {
        self.ports.iter().find(|p| p.name == name)
    }

    pub fn interface(&self, name: &str) -> Option<&IfaceRow> {
        self.interfaces.iter().find(|i| i.name == name)
    }

    /// The kernel devices (interfaces of type "" or "system") that are ports of `bridge`.
    pub fn system_interfaces(&self, bridge: &str) -> Vec<String> {
        let Some(b) = self.bridge(bridge) else {
            return Vec::new();
        };
        let mut v: Vec<String> = self
            .ports
            .iter()
            .filter(|p| b.ports.contains(&p.uuid))
            .flat_map(|p| p.interfaces.iter())
            .filter_map(|u| self.interfaces.iter().find(|i| &i.uuid == u))
            .filter(|i| i.kind.is_empty() || i.kind == "system")
            .map(|i| i.name.clone())
            .collect();
        v.sort();
        v
    }

    /// The bridge holding port `port`.
    pub fn bridge_of_port(&self, port: &str) -> Option<&BridgeRow> {
        let p = self.port(port)?;
        self.bridges.iter().find(|b| b.ports.contains(&p.uuid))
    }
}

fn decode(what: &str, reason: String) -> Error {
    Error::Decode {
        what: what.into(),
        reason,
    }
}

/// One row: column name to cell.
struct Row<'a> {
    table: &'static str,
    cells: BTreeMap<&'a str, &'a Value>,
}

fn rows<'a>(v: &'a Value, table: &'static str) -> Result<Vec<Row<'a>>, Error> {
    let headings: Vec<&str> = v["headings"]
        .as_array()
        .ok_or_else(|| decode(table, "no headings".into()))?
        .iter()
        .map(|h| h.as_str().unwrap_or(""))
        .collect();
    let data = v["data"]
        .as_array()
        .ok_or_else(|| decode(table, "no data".into()))?;
    Ok(data
        .iter()
        .map(|row| Row {
            table,
            cells: headings
                .iter()
                .copied()
                .zip(row.as_array().map(|a| a.iter()).into_iter().flatten())
                .collect(),
        })
        .collect())
}

impl Row<'_> {
    fn cell(&self, col: &str) -> Result<&Value, Error> {
        self.cells
            .get(col)
            .copied()
            .ok_or_else(|| decode(self.table, format!("no column {col}")))
    }

    fn bad(&self, col: &str, v: &Value) -> Error {
        decode(self.table, format!("column {col}: unexpected {v}"))
    }

    /// The atoms of a cell: an atom alone, or the members of `["set", [...]]`.
    fn atoms(&self, col: &str) -> Result<Vec<&Value>, Error> {
        let v = self.cell(col)?;
        match v.as_array().map(Vec::as_slice) {
            Some([tag, members]) if tag == "set" => Ok(members
                .as_array()
                .ok_or_else(|| self.bad(col, v))?
                .iter()
                .collect()),
            _ => Ok(vec![v]),
        }
    }

    fn uuid_of(&self, col: &str, v: &Value) -> Result<String, Error> {
        match v.as_array().map(Vec::as_slice) {
            Some([tag, Value::String(u)]) if tag == "uuid" => Ok(u.clone()),
            _ => Err(self.bad(col, v)),
        }
    }

    fn uuid(&self, col: &str) -> Result<String, Error> {
        self.uuid_of(col, self.cell(col)?)
    }

    fn uuids(&self, col: &str) -> Result<Vec<String>, Error> {
        self.atoms(col)?
            .into_iter()
            .map(|v| self.uuid_of(col, v))
            .collect()
    }

    fn string(&self, col: &str) -> Result<String, Error> {
        let v = self.cell(col)?;
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| self.bad(col, v))
    }

    fn optional_string(&self, col: &str) -> Result<Option<String>, Error> {
        match self.atoms(col)?.as_slice() {
            [] => Ok(None),
            [Value::String(s)] => Ok(Some(s.clone())),
            _ => Err(self.bad(col, self.cell(col)?)),
        }
    }

    fn optional_int(&self, col: &str) -> Result<Option<i64>, Error> {
        match self.atoms(col)?.as_slice() {
            [] => Ok(None),
            [v] => v.as_i64().map(Some).ok_or_else(|| self.bad(col, v)),
            _ => Err(self.bad(col, self.cell(col)?)),
        }
    }

    fn map(&self, col: &str) -> Result<BTreeMap<String, String>, Error> {
        let v = self.cell(col)?;
        let Some([tag, pairs]) = v.as_array().map(Vec::as_slice) else {
            return Err(self.bad(col, v));
        };
        if tag != "map" {
            return Err(self.bad(col, v));
        }
        pairs
            .as_array()
            .ok_or_else(|| self.bad(col, v))?
            .iter()
            .map(|p| match p.as_array().map(Vec::as_slice) {
                Some([Value::String(k), Value::String(v)]) => Ok((k.clone(), v.clone())),
                _ => Err(self.bad(col, p)),
            })
            .collect()
    }
}

/// An interface Twill wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceWant {
    /// `type`: internal, gre, vxlan.
    pub kind: String,
    pub options: BTreeMap<String, String>,
    pub ofport_request: i64,
    pub mac: Option<String>,
    pub mtu_request: Option<i64>,
}

/// A port (of one interface of the same name) Twill wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortWant {
    pub name: String,
    pub iface: IfaceWant,
}

/// The bridge Twill wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeWant {
    pub name: String,
    pub datapath_type: String,
    pub ports: Vec<PortWant>,
}

/// One transaction's commands, and what cannot be done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbPlan {
    /// Each an `ovs-vsctl` command (`add-port twl-int twl.ovs`); run as one transaction.
    pub commands: Vec<Vec<String>>,
    pub problems: Vec<String>,
}

impl DbPlan {
    /// `-- cmd1 … -- cmd2 …`, for `ovs-vsctl [options] ARGS`.
    pub fn args(&self) -> Vec<String> {
        self.commands
            .iter()
            .flat_map(|c| std::iter::once("--".to_string()).chain(c.iter().cloned()))
            .collect()
    }
}

fn owner() -> String {
    format!("external_ids:{OWNER_KEY}={OWNER_VALUE}")
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

fn add_port(bridge: &str, p: &PortWant) -> Vec<Vec<String>> {
    let mut iface = words(&["set", "interface", &p.name]);
    iface.push(format!("type={}", p.iface.kind));
    iface.extend(
        p.iface
            .options
            .iter()
            .map(|(k, v)| format!("options:{k}={v}")),
    );
    iface.push(format!("ofport_request={}", p.iface.ofport_request));
    iface.extend(set_mutable(&p.iface));
    iface.push(owner());
    vec![
        words(&["add-port", bridge, &p.name]),
        vec!["set".into(), "port".into(), p.name.clone(), owner()],
        iface,
    ]
}

/// The settings an interface can change in place.
fn set_mutable(w: &IfaceWant) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(mac) = &w.mac {
        out.push(format!("mac=\"{mac}\""));
    }
    if let Some(mtu) = w.mtu_request {
        out.push(format!("mtu_request={mtu}"));
    }
    out
}

/// The transaction turning `have` into `want` (pure). Twill's bridge missing: it is made
/// with its ports. Present and Twill's: its settings and Twill's ports are adjusted, ports
/// whose type, options or ofport cannot change in place are replaced, Twill's ports no
/// longer wanted go; other ports stay. Present and not Twill's: nothing is done.
pub fn plan(want: &BridgeWant, have: &Snapshot) -> DbPlan {
    let mut plan = DbPlan::default();
    let br = want.name.as_str();
    let Some(bridge) = have.bridge(br) else {
        plan.commands.push(words(&["add-br", br]));
        plan.commands.push(vec![
            "set".into(),
            "bridge".into(),
            br.into(),
            format!("datapath_type={}", want.datapath_type),
            "fail_mode=secure".into(),
            owner(),
        ]);
        for p in &want.ports {
            plan.commands.extend(add_port(br, p));
        }
        return plan;
    };
    if !bridge.is_twills() {
        plan.problems.push(format!(
            "OVS bridge {br} exists but Twill did not create it (no external_ids:{OWNER_KEY}={OWNER_VALUE}): left alone, so no OVS mesh; delete it (ovs-vsctl del-br {br}) if it is a leftover"
        ));
        return plan;
    }
    let mut settings = Vec::new();
    if bridge.datapath_type != want.datapath_type {
        settings.push(format!("datapath_type={}", want.datapath_type));
    }
    if bridge.fail_mode.as_deref() != Some("secure") {
        settings.push("fail_mode=secure".into());
    }
    if !settings.is_empty() {
        let mut c = words(&["set", "bridge", br]);
        c.extend(settings);
        plan.commands.push(c);
    }
    for p in &want.ports {
        let Some(row) = have.port(&p.name) else {
            plan.commands.extend(add_port(br, p));
            continue;
        };
        let on = have.bridge_of_port(&p.name).map(|b| b.name.as_str());
        if !row.is_twills() || on != Some(br) {
            plan.problems.push(format!(
                "OVS port {} exists on bridge {} but is not Twill's: left alone, so {br} has no {}; delete it (ovs-vsctl del-port {})",
                p.name,
                on.unwrap_or("(none)"),
                p.name,
                p.name
            ));
            continue;
        }
        let iface = have.interface(&p.name);
        let fixed = iface.is_some_and(|i| {
            i.kind == p.iface.kind
                && i.options == p.iface.options
                && i.ofport_request == Some(p.iface.ofport_request)
        });
        if !fixed {
            plan.commands.push(words(&["del-port", br, &p.name]));
            plan.commands.extend(add_port(br, p));
            continue;
        }
        let i = iface.expect("fixed implies found");
        let mac_ok = p.iface.mac.is_none() || i.mac == p.iface.mac;
        let mtu_ok = p.iface.mtu_request.is_none() || i.mtu_request == p.iface.mtu_request;
        if !(mac_ok && mtu_ok) {
            let mut c = words(&["set", "interface", &p.name]);
            c.extend(set_mutable(&p.iface));
            plan.commands.push(c);
        }
    }
    // Twill's ports on its bridge that are no longer wanted (another tunnel type).
    for uuid in &bridge.ports {
        let Some(row) = have.ports.iter().find(|p| &p.uuid == uuid) else {
            continue;
        };
        if row.is_twills() && !want.ports.iter().any(|p| p.name == row.name) {
            plan.commands.push(words(&["del-port", br, &row.name]));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What ovs-vsctl printed on a node with br-phy and a Twill bridge (OVS 3.1).
    const LISTED: &str = r#"{"data":[[["uuid","00e2ee1d-bea5-48c3-bfb4-b25d47e7d717"],"br-phy","netdev",["set",[]],["set",[["uuid","58bc7025-8b4e-4db6-951c-813a73c90eb1"],["uuid","b9cf4794-6faa-49d2-a551-96817f477484"]]],["map",[]]],[["uuid","180e5e4a-3ac3-4524-b2b6-2a4c03143978"],"twl-int","netdev","secure",["set",[["uuid","08b695e7-03f4-4496-85e9-fc3df41854ff"],["uuid","9e714ca1-71c9-4c8e-aa39-ef97ccff759f"],["uuid","ec7cf272-2070-40f3-8d5d-ce275f56e0d2"]]],["map",[["twill-owner","twilld"]]]]],"headings":["_uuid","name","datapath_type","fail_mode","ports","external_ids"]}
{"data":[[["uuid","b9cf4794-6faa-49d2-a551-96817f477484"],"br-phy",["uuid","e744f520-5188-4ea6-9c4e-3a5c89f27bc8"],["map",[]]],[["uuid","9e714ca1-71c9-4c8e-aa39-ef97ccff759f"],"twl.ovs",["uuid","c722e52b-5b37-406d-bdb2-e2bb9a4312c3"],["map",[["twill-owner","twilld"]]]],[["uuid","58bc7025-8b4e-4db6-951c-813a73c90eb1"],"eth0",["uuid","cf1323f5-71ee-4441-ba6b-95953ea1e076"],["map",[]]],[["uuid","ec7cf272-2070-40f3-8d5d-ce275f56e0d2"],"twl-int",["uuid","c3442134-351e-41c3-8695-ddffc6a13e2f"],["map",[]]],[["uuid","08b695e7-03f4-4496-85e9-fc3df41854ff"],"twl-gre",["uuid","cf48e1f8-d33b-4ded-8773-b5cf53ca3493"],["map",[["twill-owner","twilld"]]]]],"headings":["_uuid","name","interfaces","external_ids"]}
{"data":[[["uuid","c3442134-351e-41c3-8695-ddffc6a13e2f"],"twl-int","internal",["map",[]],["set",[]],65534,["set",[]],["set",[]],["map",[]],["set",[]]],[["uuid","cf48e1f8-d33b-4ded-8773-b5cf53ca3493"],"twl-gre","gre",["map",[["local_ip","192.0.2.11"],["remote_ip","flow"]]],10,10,["set",[]],["set",[]],["map",[["twill-owner","twilld"]]],["set",[]]],[["uuid","c722e52b-5b37-406d-bdb2-e2bb9a4312c3"],"twl.ovs","internal",["map",[]],1,1,"0a:54:c0:00:02:11",1462,["map",[["twill-owner","twilld"]]],["set",[]]]],"headings":["_uuid","name","type","options","ofport_request","ofport","mac","mtu_request","external_ids","error"]}
"#;

    fn want(tunnel: &str, local: &str, mtu: i64) -> BridgeWant {
        BridgeWant {
            name: "twl-int".into(),
            datapath_type: "netdev".into(),
            ports: vec![
                PortWant {
                    name: "twl.ovs".into(),
                    iface: IfaceWant {
                        kind: "internal".into(),
                        options: BTreeMap::new(),
                        ofport_request: 1,
                        mac: Some("0a:54:c0:00:02:11".into()),
                        mtu_request: Some(mtu),
                    },
                },
                PortWant {
                    name: format!("twl-{tunnel}"),
                    iface: IfaceWant {
                        kind: tunnel.into(),
                        options: [("local_ip", local), ("remote_ip", "flow")]
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .into(),
                        ofport_request: 10,
                        mac: None,
                        mtu_request: None,
                    },
                },
            ],
        }
    }

    #[test]
    fn a_listing_decodes_into_rows() {
        let s = Snapshot::parse(LISTED).unwrap();
        assert_eq!(s.bridges.len(), 2);
        let b = s.bridge("twl-int").unwrap();
        assert!(b.is_twills() && b.fail_mode.as_deref() == Some("secure"));
        assert!(!s.bridge("br-phy").unwrap().is_twills());
        assert_eq!(s.bridge("br-phy").unwrap().fail_mode, None);
        let gre = s.interface("twl-gre").unwrap();
        assert_eq!((gre.ofport_request, gre.ofport), (Some(10), Some(10)));
        assert_eq!(gre.options["remote_ip"], "flow");
        let int = s.interface("twl.ovs").unwrap();
        assert_eq!(int.mac.as_deref(), Some("0a:54:c0:00:02:11"));
        assert_eq!(int.mtu_request, Some(1462));
        assert_eq!(s.interface("twl-int").unwrap().ofport_request, None);
        assert_eq!(s.bridge_of_port("eth0").unwrap().name, "br-phy");
        assert!(Snapshot::parse("{}").is_err());
        assert!(Snapshot::parse("{}\n{}\n{\"data\":1}").is_err());
    }

    #[test]
    fn what_matches_makes_no_transaction() {
        let s = Snapshot::parse(LISTED).unwrap();
        let p = plan(&want("gre", "192.0.2.11", 1462), &s);
        assert_eq!(p, DbPlan::default());
    }

    #[test]
    fn an_empty_database_gets_the_bridge_and_its_ports_in_one_transaction() {
        let p = plan(&want("gre", "192.0.2.11", 1462), &Snapshot::default());
        assert!(p.problems.is_empty());
        let a = p.args().join(" ");
        assert_eq!(
            a,
            "-- add-br twl-int -- set bridge twl-int datapath_type=netdev fail_mode=secure external_ids:twill-owner=twilld \
             -- add-port twl-int twl.ovs -- set port twl.ovs external_ids:twill-owner=twilld \
             -- set interface twl.ovs type=internal ofport_request=1 mac=\"0a:54:c0:00:02:11\" mtu_request=1462 external_ids:twill-owner=twilld \
             -- add-port twl-int twl-gre -- set port twl-gre external_ids:twill-owner=twilld \
             -- set interface twl-gre type=gre options:local_ip=192.0.2.11 options:remote_ip=flow ofport_request=10 external_ids:twill-owner=twilld"
        );
    }

    #[test]
    fn changes_are_minimal_and_only_touch_twills_rows() {
        let s = Snapshot::parse(LISTED).unwrap();
        // MTU: set in place.
        let p = plan(&want("gre", "192.0.2.11", 1400), &s);
        assert_eq!(
            p.args().join(" "),
            "-- set interface twl.ovs mac=\"0a:54:c0:00:02:11\" mtu_request=1400"
        );
        // Node IP moved: the tunnel port is replaced.
        let p = plan(&want("gre", "192.0.2.99", 1462), &s);
        let a = p.args().join(" ");
        assert!(
            a.starts_with("-- del-port twl-int twl-gre -- add-port twl-int twl-gre"),
            "{a}"
        );
        // Tunnel type switched: the GRE port goes, the VXLAN port comes.
        let p = plan(&want("vxlan", "192.0.2.11", 1462), &s);
        let a = p.args().join(" ");
        assert!(
            a.contains("add-port twl-int twl-vxlan") && a.ends_with("-- del-port twl-int twl-gre"),
            "{a}"
        );
        // The bridge's own port (twl-int) and foreign ports are never deleted.
        assert!(!a.contains("del-port twl-int twl-int") && !a.contains("eth0"));
    }

    #[test]
    fn foreign_rows_of_the_same_name_are_left_alone_with_the_fix() {
        let mut s = Snapshot::parse(LISTED).unwrap();
        s.ports
            .iter_mut()
            .find(|p| p.name == "twl-gre")
            .unwrap()
            .external_ids
            .clear();
        let p = plan(&want("gre", "192.0.2.11", 1462), &s);
        assert!(p.commands.is_empty());
        assert_eq!(p.problems, ["OVS port twl-gre exists on bridge twl-int but is not Twill's: left alone, so twl-int has no twl-gre; delete it (ovs-vsctl del-port twl-gre)"]);
        s.bridges
            .iter_mut()
            .find(|b| b.name == "twl-int")
            .unwrap()
            .external_ids
            .clear();
        let p = plan(&want("gre", "192.0.2.11", 1462), &s);
        assert!(p.commands.is_empty());
        assert!(p.problems[0].contains("OVS bridge twl-int exists but Twill did not create it"));
    }
}
