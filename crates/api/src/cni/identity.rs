//! Who a pod is, as the runtime tells twill-cni at ADD: its namespace and name, its labels
//! and its named ports. Network policy selects pods by these (see [`crate::policy`]).
//!
//! | what | where it comes from |
//! |---|---|
//! | namespace | CNI_ARGS `K8S_POD_NAMESPACE` (absent: [`DEFAULT_NAMESPACE`]) |
//! | pod name | CNI_ARGS `K8S_POD_NAME` (absent: the container ID) |
//! | labels | `runtimeConfig.labels` (a string map), then CNI_ARGS `TWILL_POD_LABELS=k=v,k2=v2` (which wins on a key both give) |
//! | named ports | `runtimeConfig.namedPorts` (`[{"name":"serve-80-tcp","port":80,"protocol":"TCP"}]`) |
//!
//! Kept in the pod's IPAM record ([`RecordExtra`]), from which twilld publishes the pod's
//! `endpoints/<node>/<namespace>/<pod>`.

use super::error::{CniError, ErrorCode};
use super::netconf::PortMapping;
use crate::policy::{
    check_namespace_name, check_object_labels, check_object_name, NamedPort, DEFAULT_NAMESPACE,
};
use crate::wiring::PodWiring;
use std::collections::BTreeMap;

/// CNI_ARGS key of the pod's namespace (Kubernetes' runtimes set it).
pub const ARG_POD_NAMESPACE: &str = "K8S_POD_NAMESPACE";
/// CNI_ARGS key of the pod's name.
pub const ARG_POD_NAME: &str = "K8S_POD_NAME";
/// CNI_ARGS key of labels given by the runtime: `k=v,k2=v2`.
pub const ARG_POD_LABELS: &str = "TWILL_POD_LABELS";

/// The pod an ADD wires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub pod: String,
    /// `runtimeConfig.labels` overridden by `TWILL_POD_LABELS`.
    pub labels: BTreeMap<String, String>,
}

fn bad_arg(key: &str, why: String) -> CniError {
    CniError::new(
        ErrorCode::InvalidEnvironment,
        format!("CNI_ARGS {key}: {why}"),
    )
}

impl PodIdentity {
    /// From CNI_ARGS (`args`, as [`super::CniEnv`] split them) and the config's
    /// `runtimeConfig.labels`; every bad value is refused, naming the argument or field.
    pub fn from_args(
        args: &[(String, String)],
        container_id: &str,
        runtime_labels: &BTreeMap<String, String>,
    ) -> Result<PodIdentity, CniError> {
        let arg = |k: &str| {
            args.iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let namespace = match arg(ARG_POD_NAMESPACE) {
            Some(ns) => {
                check_namespace_name(ARG_POD_NAMESPACE, ns)
                    .map_err(|e| bad_arg(ARG_POD_NAMESPACE, e.reason))?;
                ns.to_string()
            }
            None => DEFAULT_NAMESPACE.to_string(),
        };
        let pod = match arg(ARG_POD_NAME) {
            Some(p) => {
                check_object_name(ARG_POD_NAME, p).map_err(|e| bad_arg(ARG_POD_NAME, e.reason))?;
                p.to_string()
            }
            // Already checked as a CNI container ID (no '/', at most 255 bytes).
            None => container_id.to_string(),
        };
        let mut labels = runtime_labels.clone();
        if let Some(list) = arg(ARG_POD_LABELS) {
            let mut given = BTreeMap::new();
            for pair in list.split(',').filter(|p| !p.is_empty()) {
                let Some((k, v)) = pair.split_once('=') else {
                    return Err(bad_arg(
                        ARG_POD_LABELS,
                        format!("{pair:?} is not key=value (write k=v,k2=v2)"),
                    ));
                };
                given.insert(k.to_string(), v.to_string());
            }
            check_object_labels(ARG_POD_LABELS, &given).map_err(|e| bad_arg(&e.field, e.reason))?;
            labels.extend(given);
        }
        Ok(PodIdentity {
            namespace,
            pod,
            labels,
        })
    }
}

/// What twill-cni keeps in a pod's IPAM record besides its address (`Record::extra`): what
/// DEL and GC need to undo exactly what ADD did, and the pod's identity, from which twilld
/// publishes its endpoint. One definition for the plugin that writes it and the agent
/// that reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordExtra {
    pub host_veth: String,
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    #[serde(default)]
    pub masquerade: bool,
    #[serde(default)]
    pub netns: String,
    /// How ADD wired the pod (records older than l3 wiring: bridge).
    #[serde(default)]
    pub wiring: PodWiring,
    /// Records older than endpoints have none: [`DEFAULT_NAMESPACE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// None in older records: the container ID stands for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
    /// The pod's MAC (its end of the veth), "aa:bb:cc:dd:ee:ff", set by ADD at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_without_kubernetes_args() {
        let id = PodIdentity::from_args(&args(&[("IgnoreUnknown", "1")]), "c1", &BTreeMap::new())
            .unwrap();
        assert_eq!(id.namespace, "default");
        assert_eq!(id.pod, "c1");
        assert!(id.labels.is_empty());
    }

    #[test]
    fn namespace_name_and_labels_from_the_args_win_over_runtime_config() {
        let rc: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let id = PodIdentity::from_args(
            &args(&[
                ("K8S_POD_NAMESPACE", "x"),
                ("K8S_POD_NAME", "a"),
                ("TWILL_POD_LABELS", "pod=a,tier=back,example.com/team="),
            ]),
            "c1",
            &rc,
        )
        .unwrap();
        assert_eq!((id.namespace.as_str(), id.pod.as_str()), ("x", "a"));
        let want: Vec<(&str, &str)> = vec![
            ("app", "web"),
            ("example.com/team", ""),
            ("pod", "a"),
            ("tier", "back"),
        ];
        let have: Vec<(&str, &str)> = id
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(have, want);
    }

    #[test]
    fn bad_args_are_refused_naming_them() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("K8S_POD_NAMESPACE", "X_Y")],
                "CNI_ARGS K8S_POD_NAMESPACE",
            ),
            (&[("K8S_POD_NAME", "-a")], "CNI_ARGS K8S_POD_NAME"),
            (
                &[("TWILL_POD_LABELS", "a=b,c")],
                "CNI_ARGS TWILL_POD_LABELS: \"c\"",
            ),
            (
                &[("TWILL_POD_LABELS", "a=b,k=bad value")],
                "CNI_ARGS TWILL_POD_LABELS.k",
            ),
            (
                &[("TWILL_POD_LABELS", "-k=v")],
                "CNI_ARGS TWILL_POD_LABELS.-k",
            ),
        ];
        for (a, needle) in cases {
            let e = PodIdentity::from_args(&args(a), "c1", &BTreeMap::new()).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidEnvironment, "{a:?}");
            assert!(
                e.msg.contains(needle),
                "{a:?}: {:?} lacks {needle:?}",
                e.msg
            );
        }
    }

    #[test]
    fn old_records_read_with_defaults() {
        let e: RecordExtra = serde_json::from_str(r#"{"hostVeth":"twl1"}"#).unwrap();
        assert_eq!(e.host_veth, "twl1");
        assert_eq!(e.namespace, None);
        assert_eq!(e.wiring, PodWiring::Bridge);
        // New fields only when set: old readers and record widths are unchanged.
        let json = serde_json::to_string(&e).unwrap();
        assert!(
            !json.contains("namespace") && !json.contains("labels"),
            "{json}"
        );
    }
}
