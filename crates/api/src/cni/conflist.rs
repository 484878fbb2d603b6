//! The conflist `twill install-cni` writes into a node's CNI config folder: rendered from
//! what the node knows (the network config, twilld's hand-off) or from a user's template
//! with `{{PLACEHOLDER}}`s, and checked with twill-cni's own config parser before anything
//! is written. Pure: no file is read or written here.
//!
//! twill-cni reads the hand-off at every ADD and takes from it whatever the conflist leaves
//! out (the node's blocks, MTU, masquerade setting, pod wiring, cluster CIDR); what the
//! conflist sets wins. So the built-in rendering never pins the MTU: twilld's pod MTU (the
//! uplink's less the tunnel's headers) would be overridden.

use super::netconf::{NetConf, DEFAULT_BRIDGE};
use super::SUPPORTED_VERSIONS;
use crate::resources::{HandOff, NetworkConfig};
use crate::wiring::PodWiring;
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use std::path::PathBuf;

/// The conflist's file name: it sorts before the usual `87-podman-bridge.conflist` and
/// the like, so runtimes that take the first file by name take Twill's.
pub const CONFLIST_FILE: &str = "10-twill.conflist";
/// The plugin's binary name, which is also its `type` in the conflist.
pub const PLUGIN_TYPE: &str = "twill-cni";
/// The CNI version the built-in rendering declares: 1.0.0, not twill-cni's 1.1.0, because
/// the runtimes nodes run still reject 1.1.0 results (containerd 1.6's libcni:
/// `unsupported CNI result version "1.1.0"`, seen in tests/install_cni_containerd.rs).
/// twill-cni answers in the version asked for; 1.1.0's STATUS and GC are only sent to
/// 1.1.0 conflists anyway.
pub const CONFLIST_CNI_VERSION: &str = "1.0.0";

/// Everything a conflist may say about this node, from the flags, the network config and
/// the hand-off. `None`: not known here (twill-cni takes it from the hand-off at ADD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The conflist's `name` (twilld's `cniNetwork`).
    pub network: String,
    pub handoff_file: PathBuf,
    /// twill-cni's record folder (twilld's `cniDataDir`).
    pub data_dir: PathBuf,
    /// Declare `capabilities.portMappings` (the runtime then passes host ports).
    pub host_ports: bool,
    pub pod_wiring: Option<PodWiring>,
    pub cluster_cidr: Option<Ipv4Net>,
    pub ip_masq: Option<bool>,
    /// The pod MTU twilld computed: only a hand-off knows it.
    pub mtu: Option<u32>,
}

impl NodeFacts {
    /// Fills the cluster-wide facts from the network config if there is one, else from the
    /// hand-off; the MTU only from the hand-off.
    pub fn learn(mut self, config: Option<&NetworkConfig>, handoff: Option<&HandOff>) -> Self {
        if let Some(h) = handoff {
            self.pod_wiring = Some(h.pod_wiring);
            self.cluster_cidr = Some(h.cluster_cidr);
            self.ip_masq = Some(h.ip_masq);
            self.mtu = Some(h.mtu);
        }
        if let Some(c) = config {
            self.pod_wiring = Some(c.pod_wiring);
            self.cluster_cidr = Some(c.cluster_cidr);
            self.ip_masq = Some(c.masquerade);
        }
        self
    }
}

/// Why a conflist (template) was refused: always names the placeholder or field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConflistError {
    #[error("line {line}: {{{{{name}}}}} is not a placeholder; use one of {}", PLACEHOLDERS.iter().map(|p| format!("{{{{{}}}}}", p.name())).collect::<Vec<_>>().join(", "))]
    UnknownPlaceholder { name: String, line: usize },
    #[error("line {line}: a placeholder opened with {{{{ is not closed with }}}}")]
    Unclosed { line: usize },
    #[error("line {line}: {{{{{name}}}}} has no value here: {why}")]
    Unavailable {
        name: &'static str,
        line: usize,
        why: &'static str,
    },
    #[error("line {line} column {column}: not JSON once the placeholders are filled in: {reason}")]
    Json {
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("field \"{field}\": {reason}")]
    Field { field: String, reason: String },
}

fn field(field: impl Into<String>, reason: impl Into<String>) -> ConflistError {
    ConflistError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The placeholders a template may hold. Strings are filled in JSON-escaped without
/// quotes (write `"{{HANDOFF_FILE}}"`); numbers and booleans bare (`{{MTU}}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    CniNetwork,
    HandoffFile,
    CniDataDir,
    PodWiring,
    ClusterCidr,
    IpMasq,
    Mtu,
}

pub const PLACEHOLDERS: [Placeholder; 7] = [
    Placeholder::CniNetwork,
    Placeholder::HandoffFile,
    Placeholder::CniDataDir,
    Placeholder::PodWiring,
    Placeholder::ClusterCidr,
    Placeholder::IpMasq,
    Placeholder::Mtu,
];

impl Placeholder {
    pub fn name(self) -> &'static str {
        match self {
            Placeholder::CniNetwork => "CNI_NETWORK",
            Placeholder::HandoffFile => "HANDOFF_FILE",
            Placeholder::CniDataDir => "CNI_DATA_DIR",
            Placeholder::PodWiring => "POD_WIRING",
            Placeholder::ClusterCidr => "CLUSTER_CIDR",
            Placeholder::IpMasq => "IP_MASQ",
            Placeholder::Mtu => "MTU",
        }
    }

    /// The text that replaces it, or why there is none.
    fn value(self, facts: &NodeFacts) -> Result<String, &'static str> {
        let escaped = |s: &str| {
            let quoted = serde_json::to_string(s).expect("a string serializes");
            quoted[1..quoted.len() - 1].to_string()
        };
        const FROM_CONFIG: &str =
            "give --network-config, or install once twilld has written its hand-off file";
        match self {
            Placeholder::CniNetwork => Ok(escaped(&facts.network)),
            Placeholder::HandoffFile => Ok(escaped(&facts.handoff_file.display().to_string())),
            Placeholder::CniDataDir => Ok(escaped(&facts.data_dir.display().to_string())),
            Placeholder::PodWiring => facts.pod_wiring.map(|w| w.name().into()).ok_or(FROM_CONFIG),
            Placeholder::ClusterCidr => facts.cluster_cidr.map(|c| c.to_string()).ok_or(FROM_CONFIG),
            Placeholder::IpMasq => facts.ip_masq.map(|m| m.to_string()).ok_or(FROM_CONFIG),
            Placeholder::Mtu => facts.mtu.map(|m| m.to_string()).ok_or(
                "only twilld's hand-off file knows the pod MTU and there is none yet; leave \"mtu\" out (twill-cni then reads it from the hand-off at every ADD)",
            ),
        }
    }
}

/// The built-in conflist for `facts`: one twill-cni plugin, with the wiring, cluster CIDR
/// and masquerade setting when known, never the MTU (see the module doc). The lab's nodes
/// get the same shape.
pub fn render(facts: &NodeFacts) -> Value {
    let mut plugin = serde_json::Map::new();
    plugin.insert("type".into(), json!(PLUGIN_TYPE));
    if let Some(w) = facts.pod_wiring {
        plugin.insert("podWiring".into(), json!(w.name()));
        if w == PodWiring::Bridge {
            plugin.insert("bridge".into(), json!(DEFAULT_BRIDGE));
        }
    }
    if let Some(c) = facts.cluster_cidr {
        plugin.insert("clusterCIDR".into(), json!(c.to_string()));
    }
    if let Some(m) = facts.ip_masq {
        plugin.insert("ipMasq".into(), json!(m));
    }
    plugin.insert("hairpinMode".into(), json!(true));
    let mut caps = serde_json::Map::new();
    if facts.host_ports {
        caps.insert("portMappings".into(), json!(true));
    }
    caps.insert("namedPorts".into(), json!(true));
    plugin.insert("capabilities".into(), Value::Object(caps));
    plugin.insert(
        "ipam".into(),
        json!({
            "type": "twill",
            "handoffFile": facts.handoff_file.display().to_string(),
            "dataDir": facts.data_dir.display().to_string(),
        }),
    );
    json!({
        "cniVersion": CONFLIST_CNI_VERSION,
        "name": facts.network,
        "plugins": [Value::Object(plugin)],
    })
}

/// The bytes of a conflist as written to disk (pretty JSON and a newline).
pub fn to_bytes(conflist: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(conflist).expect("JSON serializes");
    out.push(b'\n');
    out
}

/// Fills a template's placeholders for `facts`, then checks the result as [`check`] does.
pub fn render_template(template: &str, facts: &NodeFacts) -> Result<Value, ConflistError> {
    let filled = fill(template, facts)?;
    let value: Value = serde_json::from_str(&filled).map_err(|e| ConflistError::Json {
        line: e.line(),
        column: e.column(),
        reason: e.to_string(),
    })?;
    check(&value)?;
    Ok(value)
}

fn fill(template: &str, facts: &NodeFacts) -> Result<String, ConflistError> {
    let line_at = |pos: usize| template[..pos].matches('\n').count() + 1;
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let line = line_at(offset + start);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(ConflistError::Unclosed { line })?;
        let name = after[..end].trim();
        let p = PLACEHOLDERS
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| ConflistError::UnknownPlaceholder {
                name: name.to_string(),
                line,
            })?;
        let value = p.value(facts).map_err(|why| ConflistError::Unavailable {
            name: p.name(),
            line,
            why,
        })?;
        out.push_str(&value);
        let consumed = start + 2 + end + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks a conflist as a runtime and twill-cni will read it: a known `cniVersion`, a
/// `name`, a non-empty `plugins` list of objects with a `type`, exactly one of them
/// twill-cni, and that entry (with the list's name and version copied in, as libcni does)
/// accepted by twill-cni's own config parser.
pub fn check(conflist: &Value) -> Result<(), ConflistError> {
    let root = conflist
        .as_object()
        .ok_or_else(|| field("(top level)", "a conflist is a JSON object"))?;
    let version = match root.get("cniVersion") {
        Some(Value::String(v)) => v,
        Some(_) => return Err(field("cniVersion", "expected a string such as \"1.0.0\"")),
        None => return Err(field("cniVersion", "is required (\"1.0.0\")")),
    };
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(field(
            "cniVersion",
            format!(
                "\"{version}\" is not supported; twill-cni supports {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let name = match root.get("name") {
        Some(Value::String(n)) => n,
        Some(_) => return Err(field("name", "expected a string")),
        None => {
            return Err(field(
                "name",
                "is required (the network name, e.g. \"twill\")",
            ))
        }
    };
    let plugins = match root.get("plugins") {
        Some(Value::Array(p)) if !p.is_empty() => p,
        Some(Value::Array(_)) => {
            return Err(field("plugins", "is empty; list the twill-cni plugin"))
        }
        Some(_) => return Err(field("plugins", "expected an array of plugin objects")),
        None => {
            return Err(field(
                "plugins",
                "is required: a conflist lists its plugins",
            ))
        }
    };
    let mut ours = Vec::new();
    for (i, p) in plugins.iter().enumerate() {
        let obj = p
            .as_object()
            .ok_or_else(|| field(format!("plugins[{i}]"), "expected an object"))?;
        match obj.get("type") {
            Some(Value::String(t)) if t == PLUGIN_TYPE => ours.push(i),
            Some(Value::String(_)) => {}
            Some(_) => return Err(field(format!("plugins[{i}].type"), "expected a string")),
            None => return Err(field(format!("plugins[{i}].type"), "is required")),
        }
    }
    let i = match ours.as_slice() {
        [i] => *i,
        [] => {
            return Err(field(
                "plugins",
                format!("no plugin has \"type\": \"{PLUGIN_TYPE}\"; Twill's conflist must run it"),
            ))
        }
        [_, second, ..] => {
            return Err(field(
                format!("plugins[{second}].type"),
                format!("\"{PLUGIN_TYPE}\" is listed more than once; keep one"),
            ))
        }
    };
    let mut entry = plugins[i].as_object().expect("checked above").clone();
    entry.insert("name".into(), json!(name));
    entry.insert("cniVersion".into(), json!(version));
    NetConf::from_value(&Value::Object(entry)).map_err(|e| {
        let reason = if e.details.is_empty() {
            e.msg
        } else {
            format!("{} ({})", e.msg, e.details)
        };
        field(format!("plugins[{i}]"), reason)
    })?;
    Ok(())
}

/// Whether `bytes` are a conflist Twill would have written (JSON with a twill-cni plugin):
/// what uninstall removes, so a file a user put under the same name stays.
pub fn is_twill_conflist(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes).is_ok_and(|v| {
        v.get("plugins")
            .and_then(Value::as_array)
            .is_some_and(|p| p.iter().any(|p| p.get("type") == Some(&json!(PLUGIN_TYPE))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            network: "twill".into(),
            handoff_file: "/run/twill/node.json".into(),
            data_dir: "/var/lib/twill/ipam".into(),
            host_ports: true,
            pod_wiring: None,
            cluster_cidr: None,
            ip_masq: None,
            mtu: None,
        }
    }

    fn handoff(wiring: PodWiring) -> HandOff {
        HandOff {
            node: "n1".into(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            blocks: vec!["10.244.3.0/24".parse().unwrap()],
            mtu: 1450,
            ip_masq: false,
            pod_wiring: wiring,
        }
    }

    fn config(text: &str) -> NetworkConfig {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn with_nothing_known_the_hand_off_decides_at_add() {
        let c = render(&facts());
        let want: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"twill","plugins":[{"type":"twill-cni","hairpinMode":true,
            "capabilities":{"portMappings":true,"namedPorts":true},
            "ipam":{"type":"twill","handoffFile":"/run/twill/node.json","dataDir":"/var/lib/twill/ipam"}}]}"#,
        )
        .unwrap();
        assert_eq!(c, want);
        check(&c).unwrap();
        // twill-cni reads it as a hand-off-driven config.
        let mut entry = c["plugins"][0].clone();
        entry["name"] = json!("twill");
        entry["cniVersion"] = json!("1.0.0");
        let n = NetConf::from_value(&entry).unwrap();
        assert_eq!(
            n.ipam.handoff_file.as_deref(),
            Some(std::path::Path::new("/run/twill/node.json"))
        );
        assert!(!n.given.mtu && !n.given.pod_wiring && !n.given.ip_masq);
    }

    #[test]
    fn the_network_config_wins_over_the_hand_off_and_the_mtu_is_never_pinned() {
        let cfg = config(r#"{"clusterCIDR":"10.245.0.0/16","podWiring":"l3","masquerade":true}"#);
        let f = facts().learn(Some(&cfg), Some(&handoff(PodWiring::Bridge)));
        assert_eq!(f.pod_wiring, Some(PodWiring::L3));
        assert_eq!(f.mtu, Some(1450), "the MTU is known, for {{{{MTU}}}}");
        let c = render(&f);
        let p = &c["plugins"][0];
        assert_eq!(p["podWiring"], "l3");
        assert_eq!(p["clusterCIDR"], "10.245.0.0/16");
        assert_eq!(p["ipMasq"], true);
        assert!(p.get("bridge").is_none(), "l3 has no bridge");
        assert!(
            p.get("mtu").is_none(),
            "twilld's pod MTU must not be overridden"
        );
        check(&c).unwrap();

        // Only the hand-off: its values; bridge wiring names the bridge.
        let c = render(&facts().learn(None, Some(&handoff(PodWiring::Bridge))));
        let p = &c["plugins"][0];
        assert_eq!(
            (&p["podWiring"], &p["bridge"], &p["ipMasq"]),
            (&json!("bridge"), &json!("twl0"), &json!(false))
        );
        assert!(p.get("mtu").is_none());
    }

    #[test]
    fn host_ports_can_be_left_undeclared() {
        let c = render(&NodeFacts {
            host_ports: false,
            ..facts()
        });
        assert_eq!(c["plugins"][0]["capabilities"], json!({"namedPorts": true}));
    }

    #[test]
    fn templates_fill_every_placeholder() {
        let t = r#"{
  "cniVersion": "1.0.0", "name": "{{CNI_NETWORK}}",
  "plugins": [
    {"type": "twill-cni", "mtu": {{MTU}}, "podWiring": "{{ POD_WIRING }}",
     "clusterCIDR": "{{CLUSTER_CIDR}}", "ipMasq": {{IP_MASQ}},
     "ipam": {"type": "twill", "handoffFile": "{{HANDOFF_FILE}}", "dataDir": "{{CNI_DATA_DIR}}"}},
    {"type": "bandwidth", "capabilities": {"bandwidth": true}}
  ]
}"#;
        let f = NodeFacts {
            network: "pods".into(),
            data_dir: "/var/lib/tw \"x\"".into(),
            ..facts()
        }
        .learn(None, Some(&handoff(PodWiring::L3)));
        let c = render_template(t, &f).unwrap();
        let p = &c["plugins"][0];
        assert_eq!(c["name"], "pods");
        assert_eq!(p["mtu"], 1450);
        assert_eq!(p["podWiring"], "l3");
        assert_eq!(p["clusterCIDR"], "10.244.0.0/16");
        assert_eq!(p["ipMasq"], false);
        assert_eq!(
            p["ipam"]["dataDir"], "/var/lib/tw \"x\"",
            "escaped, not broken"
        );
        assert_eq!(c["plugins"][1]["type"], "bandwidth", "chained plugins stay");
    }

    fn refused(template: &str, f: &NodeFacts) -> String {
        render_template(template, f).unwrap_err().to_string()
    }

    #[test]
    fn bad_templates_are_refused_naming_the_cause() {
        let f = facts();
        let ok_plugin = r#"{"type":"twill-cni","ipam":{"type":"twill"}}"#;
        let cases: Vec<(String, &str)> = vec![
            (
                "{\"cniVersion\":\"1.1.0\",\n\"name\":\"{{NAME}}\"}".into(),
                "line 2: {{NAME}} is not a placeholder; use one of {{CNI_NETWORK}}",
            ),
            ("{\"name\":\"{{CNI_NETWORK\"}".into(), "line 1: a placeholder opened with {{ is not closed"),
            (
                r#"{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"twill-cni","mtu":{{MTU}},"ipam":{}}]}"#.to_string(),
                "{{MTU}} has no value here: only twilld's hand-off file knows the pod MTU",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"twill-cni","podWiring":"{{POD_WIRING}}","ipam":{}}]}"#.into(),
                "{{POD_WIRING}} has no value here: give --network-config",
            ),
            ("{\"cniVersion\":\"1.1.0\",\n \"name\": twill}".into(), "line 2 column"),
            ("[]".into(), "field \"(top level)\""),
            (format!(r#"{{"name":"n","plugins":[{ok_plugin}]}}"#), "field \"cniVersion\": is required"),
            (format!(r#"{{"cniVersion":"9.0.0","name":"n","plugins":[{ok_plugin}]}}"#), "field \"cniVersion\": \"9.0.0\" is not supported"),
            (format!(r#"{{"cniVersion":"1.1.0","plugins":[{ok_plugin}]}}"#), "field \"name\": is required"),
            (r#"{"cniVersion":"1.1.0","name":"n","plugins":[]}"#.into(), "field \"plugins\": is empty"),
            (r#"{"cniVersion":"1.1.0","name":"n","plugins":{}}"#.into(), "field \"plugins\": expected an array"),
            (r#"{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"bridge"}]}"#.into(), "no plugin has \"type\": \"twill-cni\""),
            (format!(r#"{{"cniVersion":"1.1.0","name":"n","plugins":[{ok_plugin},{ok_plugin}]}}"#), "field \"plugins[1].type\": \"twill-cni\" is listed more than once"),
            (r#"{"cniVersion":"1.1.0","name":"n","plugins":[{"capabilities":{}}]}"#.into(), "field \"plugins[0].type\": is required"),
            (r#"{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"bandwidth"},{"type":"twill-cni","mtu":10,"ipam":{}}]}"#.into(), "field \"plugins[1]\": field \"mtu\""),
            (r#"{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"twill-cni","ipam":{"type":"host-local"}}]}"#.into(), "field \"plugins[0]\": field \"ipam.type\""),
            (r#"{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"twill-cni"}]}"#.into(), "field \"plugins[0]\": field \"ipam\" is required"),
            (r#"{"cniVersion":"1.1.0","name":"a/b","plugins":[{"type":"twill-cni","ipam":{}}]}"#.into(), "field \"plugins[0]\": field \"name\""),
        ];
        for (t, want) in cases {
            let got = refused(&t, &f);
            assert!(got.contains(want), "{t}\n gave {got:?}\n wanted {want:?}");
        }
    }

    #[test]
    fn only_twill_conflists_count_as_ours() {
        assert!(is_twill_conflist(&to_bytes(&render(&facts()))));
        assert!(!is_twill_conflist(
            br#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}"#
        ));
        assert!(!is_twill_conflist(b"not json"));
    }
}
