//! The lab's container-runtime role: it calls twill-cni exactly as kubelet's runtime (via
//! libcni) would. The pure half builds each node's conflist, the plugin's stdin config and its
//! environment, and reads the plugin's answer; `exec_plugin` is the only I/O.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::plan::{LabPlan, NodePlan, PodPlan, CNI_NETWORK};

/// The CNI spec version the lab's conflists declare.
pub const CNI_VERSION: &str = "1.1.0";
/// The plugin's binary name (and its `type` in the conflist).
pub const PLUGIN_TYPE: &str = "twill-cni";
/// Env var that overrides where the plugin binary is.
pub const CNI_BIN_ENV: &str = "TWILL_CNI_BIN";
/// The node agent's binary name.
pub const AGENT_BIN: &str = "twilld";
/// Env var that overrides where the node agent binary is.
pub const TWILLD_BIN_ENV: &str = "TWILL_TWILLD_BIN";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("twill-cni {call} failed: code {code}: {msg}{}{}",
        if details.is_empty() { String::new() } else { format!(" ({details})") },
        if stderr.trim().is_empty() { String::new() } else { format!("; stderr: {}", stderr.trim()) })]
    Plugin {
        /// `ADD for <container id>`.
        call: String,
        code: u32,
        msg: String,
        details: String,
        stderr: String,
    },
    #[error("twill-cni {call} exited with {status} without a CNI error on stdout: stdout {stdout:?}, stderr {stderr:?}")]
    Crashed {
        /// `ADD for <container id>`.
        call: String,
        status: String,
        stdout: String,
        stderr: String,
    },
    #[error(
        "twill-cni {call} succeeded but printed no valid result JSON: {reason}; stdout {stdout:?}"
    )]
    BadResult {
        /// `ADD for <container id>`.
        call: String,
        reason: String,
        stdout: String,
    },
}

/// A CNI operation the lab performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    Check,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
        }
    }
}

/// Where the plugin binary is: `--cni-bin`, else `$TWILL_CNI_BIN`, else `twill-cni` next to
/// the running executable (where cargo and installs put both binaries).
pub fn locate_plugin(flag: Option<&Path>, env: Option<&str>, current_exe: &Path) -> PathBuf {
    locate_binary(PLUGIN_TYPE, flag, env, current_exe)
}

/// Where binary `name` is: the flag, else the env value, else next to the running executable.
pub fn locate_binary(
    name: &str,
    flag: Option<&Path>,
    env: Option<&str>,
    current_exe: &Path,
) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = env.filter(|s| !s.is_empty()) {
        return PathBuf::from(p);
    }
    current_exe.parent().unwrap_or(Path::new(".")).join(name)
}

/// The conflist a node's runtime reads (as from /etc/cni/net.d/10-twill.conflist). It names
/// no subnet and no MTU: twill-cni takes the node's blocks and the pod MTU (the uplink's, less
/// the tunnel's headers for VXLAN) from the hand-off file the node's agent writes. The pod
/// wiring is spelled out (the hand-off carries it too): `bridge` names the node bridge,
/// `l3` has none.
pub fn node_conflist(plan: &LabPlan, node: &NodePlan) -> Value {
    let mut plugin = json!({
        "type": PLUGIN_TYPE,
        "podWiring": plan.pod_wiring.name(),
        "ipMasq": true,
        "hairpinMode": true,
        "clusterCIDR": plan.cluster_cidr.to_string(),
        "capabilities": {"portMappings": true, "namedPorts": true},
        "ipam": {
            "type": "twill",
            "handoffFile": node.handoff_file.display().to_string(),
            "dataDir": node.ipam_dir.display().to_string(),
        },
    });
    if let Some(bridge) = &node.bridge {
        plugin["bridge"] = json!(bridge);
    }
    json!({
        "cniVersion": CNI_VERSION,
        "name": CNI_NETWORK,
        "plugins": [plugin],
    })
}

/// The runtime's per-pod settings that plugins receive only if they declare the matching
/// capability (libcni's `RuntimeConf.CapabilityArgs`): host ports, and the pod's named
/// container ports (`[{name, port, protocol}]`).
pub fn pod_capability_args(pod: &PodPlan) -> Map<String, Value> {
    let mut args = Map::new();
    if !pod.port_mappings.is_empty() {
        args.insert("portMappings".into(), json!(pod.port_mappings));
    }
    if let Some(id) = pod.identity.as_ref().filter(|i| !i.named_ports.is_empty()) {
        args.insert("namedPorts".into(), json!(id.named_ports));
    }
    args
}

/// CNI_ARGS `TWILL_POD_LABELS`: `k=v,k2=v2` (Kubernetes label keys and values hold no `,`,
/// `=` or `;`). None without labels.
pub fn labels_arg(pod: &PodPlan) -> Option<String> {
    let labels = &pod.identity.as_ref()?.labels;
    (!labels.is_empty()).then(|| {
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// The stdin config for plugin `index` of a conflist, built the way libcni's
/// `buildOneConfig` does: the plugin entry, plus the list's `name` and `cniVersion`, plus
/// `runtimeConfig` holding only the capability args the plugin declares, plus `prevResult`
/// when there is one (the previous plugin's result on ADD, the cached ADD result on DEL).
pub fn plugin_config(
    conflist: &Value,
    index: usize,
    capability_args: &Map<String, Value>,
    prev_result: Option<&Value>,
) -> Option<Value> {
    let mut conf = conflist.get("plugins")?.get(index)?.as_object()?.clone();
    conf.insert("name".into(), conflist.get("name")?.clone());
    conf.insert("cniVersion".into(), conflist.get("cniVersion")?.clone());
    let declared = conf.get("capabilities").and_then(Value::as_object);
    let mut runtime_config = Map::new();
    for (cap, value) in capability_args {
        if declared.and_then(|d| d.get(cap)).and_then(Value::as_bool) == Some(true) {
            runtime_config.insert(cap.clone(), value.clone());
        }
    }
    if !runtime_config.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    Some(Value::Object(conf))
}

/// The CNI_* environment for one call, as kubelet's runtime sets it (CNI_ARGS carries the
/// pod's Kubernetes identity, and its labels in `TWILL_POD_LABELS`; IgnoreUnknown lets
/// plugins skip keys they do not know).
pub fn plugin_env(
    command: CniCommand,
    lab: &str,
    pod: &PodPlan,
    cni_path: &Path,
) -> Vec<(String, String)> {
    let mut args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
        pod.k8s_namespace(lab),
        pod.k8s_name(),
        pod.container_id
    );
    if let Some(labels) = labels_arg(pod) {
        args.push_str(&format!(";TWILL_POD_LABELS={labels}"));
    }
    vec![
        ("CNI_COMMAND".into(), command.as_str().into()),
        ("CNI_CONTAINERID".into(), pod.container_id.clone()),
        ("CNI_NETNS".into(), format!("/run/netns/{}", pod.netns)),
        ("CNI_IFNAME".into(), pod.ifname.clone()),
        ("CNI_PATH".into(), cni_path.display().to_string()),
        ("CNI_ARGS".into(), args),
    ]
}

/// The CNI error object a failing plugin prints.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CniError {
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

/// Interprets a finished plugin call. ADD must print a result object; DEL and CHECK may print
/// nothing.
pub fn parse_output(
    command: CniCommand,
    container: &str,
    success: bool,
    status: &str,
    stdout: &str,
    stderr: &str,
) -> Result<Option<Value>, RuntimeError> {
    let call = format!("{} for {container}", command.as_str());
    if !success {
        return match serde_json::from_str::<CniError>(stdout.trim()) {
            Ok(e) if e.code != 0 || !e.msg.is_empty() => Err(RuntimeError::Plugin {
                call: call.clone(),
                code: e.code,
                msg: e.msg,
                details: e.details,
                stderr: stderr.into(),
            }),
            _ => Err(RuntimeError::Crashed {
                call: call.clone(),
                status: status.into(),
                stdout: stdout.into(),
                stderr: stderr.into(),
            }),
        };
    }
    if command != CniCommand::Add && stdout.trim().is_empty() {
        return Ok(None);
    }
    let bad = |reason: String| RuntimeError::BadResult {
        call: call.clone(),
        reason,
        stdout: stdout.into(),
    };
    let v: Value = serde_json::from_str(stdout.trim()).map_err(|e| bad(e.to_string()))?;
    if !v.is_object() {
        return Err(bad("not a JSON object".into()));
    }
    if command == CniCommand::Add && pod_address(&v).is_none() {
        return Err(bad("no IPv4 address in `ips`".into()));
    }
    Ok(Some(v))
}

/// The pod's IPv4 address from an ADD result: the first `ips` entry that belongs to an
/// interface inside the sandbox (or has no interface index), as a runtime reports PodIP.
pub fn pod_address(result: &Value) -> Option<Ipv4Addr> {
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let in_sandbox = |idx: Option<u64>| match (idx, interfaces) {
        (Some(i), Some(ifs)) => ifs
            .get(i as usize)
            .and_then(|iface| iface.get("sandbox"))
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty()),
        _ => true,
    };
    result.get("ips")?.as_array()?.iter().find_map(|ip| {
        let addr = ip.get("address")?.as_str()?;
        let net: ipnet::Ipv4Net = addr.parse().ok()?;
        in_sandbox(ip.get("interface").and_then(Value::as_u64)).then_some(net.addr())
    })
}

/// The pod's gateway from an ADD result: the `gateway` of the pod's address (the bridge's
/// address in the block the pod's address came from).
pub fn pod_gateway(result: &Value) -> Option<Ipv4Addr> {
    let pod = pod_address(result)?;
    result.get("ips")?.as_array()?.iter().find_map(|ip| {
        let net: ipnet::Ipv4Net = ip.get("address")?.as_str()?.parse().ok()?;
        if net.addr() != pod {
            return None;
        }
        ip.get("gateway")?.as_str()?.parse().ok()
    })
}

/// Runs the plugin inside the node's namespace (`ip netns exec`, which also mounts the node's
/// own /sys, as the plugin would see it on a real node), config on stdin.
pub fn exec_plugin(
    bin: &Path,
    node_netns: &str,
    env: &[(String, String)],
    config: &Value,
    command: CniCommand,
    container: &str,
) -> Result<Option<Value>, RuntimeError> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", node_netns])
        .arg(bin)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RuntimeError::Spawn {
            what: format!(
                "cannot run `ip netns exec {node_netns} {}` (is iproute2 installed?)",
                bin.display()
            ),
            source,
        })?;
    let stdin = serde_json::to_vec(config).expect("a JSON value serializes");
    // A plugin that exits before reading stdin closes the pipe; its exit status says why.
    let _ = child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(&stdin);
    let out = child
        .wait_with_output()
        .map_err(|source| RuntimeError::Spawn {
            what: format!("cannot read the output of {}", bin.display()),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    parse_output(
        command,
        container,
        out.status.success(),
        &out.status.to_string(),
        &stdout,
        &stderr,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, LabSpec};

    fn lab() -> LabPlan {
        plan(&LabSpec {
            name: "twllab".into(),
            nodes: 1,
            pods_per_node: 2,
            segments: 1,
            ..LabSpec::default()
        })
        .unwrap()
    }

    #[test]
    fn conflist_is_the_documented_one() {
        let p = lab();
        let expected: Value = serde_json::from_str(
            r#"{"cniVersion":"1.1.0","name":"twill","plugins":[{"type":"twill-cni","bridge":"twl0",
            "podWiring":"bridge","ipMasq":true,"hairpinMode":true,"clusterCIDR":"10.244.0.0/16",
            "capabilities":{"portMappings":true,"namedPorts":true},"ipam":{"type":"twill",
            "handoffFile":"/run/twllab/n1/node.json","dataDir":"/run/twllab/n1/ipam"}}]}"#,
        )
        .unwrap();
        assert_eq!(node_conflist(&p, &p.nodes[0]), expected);
        // l3: the same but the wiring, and no bridge to name.
        let l3 = plan(&LabSpec {
            name: "twllab".into(),
            pod_wiring: crate::plan::PodWiring::L3,
            ..LabSpec::default()
        })
        .unwrap();
        let mut want = expected.clone();
        let plugin = want["plugins"][0].as_object_mut().unwrap();
        plugin.remove("bridge");
        plugin.insert("podWiring".into(), json!("l3"));
        assert_eq!(node_conflist(&l3, &l3.nodes[0]), want);
        assert_eq!(l3.nodes[0].bridge, None);
    }

    #[test]
    fn plugin_config_is_assembled_as_libcni_does() {
        let p = lab();
        let conflist = node_conflist(&p, &p.nodes[0]);
        let pod1 = &p.nodes[0].pods[0];
        let conf = plugin_config(&conflist, 0, &pod_capability_args(pod1), None).unwrap();
        assert_eq!(conf["name"], "twill");
        assert_eq!(conf["cniVersion"], "1.1.0");
        assert_eq!(conf["type"], "twill-cni");
        assert_eq!(conf["ipam"]["handoffFile"], "/run/twllab/n1/node.json");
        assert!(conf["ipam"].get("subnet").is_none());
        assert_eq!(
            conf["capabilities"],
            json!({"portMappings": true, "namedPorts": true})
        );
        assert_eq!(
            conf["runtimeConfig"],
            json!({"portMappings": [
                {"hostPort": 30080, "containerPort": 8080, "protocol": "tcp"},
                {"hostPort": 30053, "containerPort": 5353, "protocol": "udp"}
            ]})
        );
        assert!(conf.get("prevResult").is_none());
        assert!(conf.get("plugins").is_none());

        // Pod 2 maps no ports: no runtimeConfig at all.
        let pod2 = &p.nodes[0].pods[1];
        let conf2 = plugin_config(&conflist, 0, &pod_capability_args(pod2), None).unwrap();
        assert!(conf2.get("runtimeConfig").is_none());

        // DEL carries the ADD result as prevResult.
        let prev = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.244.1.2/24"}]});
        let del = plugin_config(&conflist, 0, &pod_capability_args(pod1), Some(&prev)).unwrap();
        assert_eq!(del["prevResult"], prev);
        assert!(del.get("runtimeConfig").is_some());
    }

    #[test]
    fn undeclared_capabilities_are_not_passed() {
        let conflist = json!({"cniVersion": "1.1.0", "name": "n",
            "plugins": [{"type": "x"}, {"type": "y", "capabilities": {"portMappings": false}}]});
        let mut args = Map::new();
        args.insert("portMappings".into(), json!([{"hostPort": 1}]));
        args.insert("bandwidth".into(), json!({}));
        for i in 0..2 {
            let conf = plugin_config(&conflist, i, &args, None).unwrap();
            assert!(conf.get("runtimeConfig").is_none(), "{conf}");
        }
        assert!(plugin_config(&conflist, 2, &args, None).is_none());
        assert!(plugin_config(&json!({"plugins": []}), 0, &args, None).is_none());
    }

    #[test]
    fn env_is_what_a_runtime_sets() {
        let p = lab();
        let pod = &p.nodes[0].pods[1];
        let env = plugin_env(CniCommand::Del, "twllab", pod, Path::new("/opt/cni/bin"));
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("CNI_COMMAND"), Some("DEL"));
        assert_eq!(get("CNI_CONTAINERID"), Some("twllab-n1-p2"));
        assert_eq!(get("CNI_NETNS"), Some("/run/netns/twllab-n1-p2"));
        assert_eq!(get("CNI_IFNAME"), Some("eth0"));
        assert_eq!(get("CNI_PATH"), Some("/opt/cni/bin"));
        assert_eq!(
            get("CNI_ARGS"),
            Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=twllab;K8S_POD_NAME=n1-p2;K8S_POD_INFRA_CONTAINER_ID=twllab-n1-p2")
        );
        assert_eq!(env.len(), 6);
    }

    #[test]
    fn plugin_is_found_by_flag_then_env_then_next_to_twill() {
        let exe = Path::new("/usr/local/bin/twill");
        let flag = Path::new("/x/cni");
        assert_eq!(locate_plugin(Some(flag), Some("/y"), exe), flag);
        assert_eq!(
            locate_plugin(None, Some("/y/cni"), exe),
            Path::new("/y/cni")
        );
        assert_eq!(
            locate_plugin(None, Some(""), exe),
            Path::new("/usr/local/bin/twill-cni")
        );
        assert_eq!(
            locate_plugin(None, None, exe),
            Path::new("/usr/local/bin/twill-cni")
        );
        assert_eq!(
            locate_binary(AGENT_BIN, None, None, exe),
            Path::new("/usr/local/bin/twilld")
        );
    }

    #[test]
    fn results_and_errors_are_read() {
        let ok = r#"{"cniVersion":"1.1.0",
            "interfaces":[{"name":"twl0"},{"name":"veth1"},{"name":"eth0","sandbox":"/run/netns/p"}],
            "ips":[{"address":"10.244.1.7/24","gateway":"10.244.1.1","interface":2}]}"#;
        let v = parse_output(CniCommand::Add, "c", true, "exit status: 0", ok, "")
            .unwrap()
            .unwrap();
        assert_eq!(pod_address(&v), Some(Ipv4Addr::new(10, 244, 1, 7)));
        assert_eq!(pod_gateway(&v), Some(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!(
            pod_gateway(&json!({"ips":[{"address":"10.244.1.9/24"}]})),
            None
        );

        // An address on a host-side interface is not the pod's.
        let host_only = json!({"interfaces":[{"name":"twl0"}],
            "ips":[{"address":"10.244.1.1/24","interface":0}]});
        assert_eq!(pod_address(&host_only), None);
        assert!(matches!(
            parse_output(CniCommand::Add, "c", true, "0", &host_only.to_string(), ""),
            Err(RuntimeError::BadResult { .. })
        ));
        // No interface index: taken as the pod's.
        assert_eq!(
            pod_address(&json!({"ips":[{"address":"10.244.1.9/24"}]})),
            Some(Ipv4Addr::new(10, 244, 1, 9))
        );

        assert!(matches!(
            parse_output(CniCommand::Add, "c", true, "0", "not json", ""),
            Err(RuntimeError::BadResult { .. })
        ));
        assert_eq!(
            parse_output(CniCommand::Del, "c", true, "0", "", "").unwrap(),
            None
        );

        let err = r#"{"cniVersion":"1.1.0","code":11,"msg":"no free address","details":"10.244.1.0/24 is full"}"#;
        match parse_output(CniCommand::Add, "pod", false, "exit status: 1", err, "warn") {
            Err(e @ RuntimeError::Plugin { code: 11, .. }) => {
                let s = e.to_string();
                assert!(
                    s.contains("ADD for pod failed: code 11: no free address"),
                    "{s}"
                );
                assert!(
                    s.contains("10.244.1.0/24 is full") && s.contains("stderr: warn"),
                    "{s}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_output(CniCommand::Add, "c", false, "signal: 11", "", "segfault"),
            Err(RuntimeError::Crashed { .. })
        ));
    }
}
