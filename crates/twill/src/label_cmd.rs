//! `twill label pod NS/NAME k=v [k-]` and `twill label ns NAME k=v [k-]`: kubectl's
//! `label` over the store. A pod's hand-set labels live in `podlabels/<ns>/<pod>` (over
//! its runtime's, which stay), a namespace's in `namespaces/<name>`. As kubectl: changing
//! the value of a label the object already has needs `--overwrite`; `k-` removes one.
//! Planning ([`plan`]) is pure; `run` reads, plans and writes with an optimistic update,
//! retried if someone else wrote in between.

use crate::view::ClusterView;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use twill_api::bgp::{check_label_key, check_label_value};
use twill_api::policy::{
    check_namespace_name, namespace_key, pod_labels_key, Namespace, PodLabels, NAMESPACE_NAME_LABEL,
};
use twill_store::{Store, PREFIX};

#[derive(Args)]
pub struct LabelArgs {
    #[command(subcommand)]
    command: LabelCommand,
}

#[derive(Subcommand)]
enum LabelCommand {
    /// Label a pod (NAMESPACE/NAME, or NAME in namespace `default`): k=v sets, k- removes
    /// a label set here (its runtime's labels stay).
    #[command(alias = "pods", alias = "po")]
    Pod(Target),
    /// Label a namespace: k=v sets, k- removes (kubernetes.io/metadata.name is automatic).
    #[command(name = "ns", alias = "namespace", alias = "namespaces")]
    Namespace(Target),
}

#[derive(Args)]
struct Target {
    /// The pod (NAMESPACE/NAME) or the namespace.
    name: String,
    /// `key=value` to set, `key-` to remove.
    #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
    changes: Vec<String>,
    /// Let k=v change the value of a label the object already has.
    #[arg(long)]
    overwrite: bool,
}

/// One change asked for on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Set(String, String),
    Remove(String),
}

/// `k=v` or `k-`, each part checked as Kubernetes checks labels.
pub fn parse_change(arg: &str) -> Result<Change, String> {
    let field = format!("label {arg:?}");
    let checked = |r: Result<(), twill_api::resources::Invalid>| r.map_err(|e| e.to_string());
    if let Some((k, v)) = arg.split_once('=') {
        checked(check_label_key(&field, k))?;
        checked(check_label_value(&field, v))?;
        return Ok(Change::Set(k.into(), v.into()));
    }
    if let Some(k) = arg.strip_suffix('-') {
        checked(check_label_key(&field, k))?;
        return Ok(Change::Remove(k.into()));
    }
    Err(format!(
        "{field}: write key=value to set a label, or key- to remove one"
    ))
}

/// What a label command does to an object's own labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The labels to store (set here; for a namespace, all of its stored ones).
    pub own: BTreeMap<String, String>,
    pub changed: bool,
    /// Said on stderr (a label to remove that it does not have, as kubectl).
    pub warnings: Vec<String>,
}

/// Plans `changes` over an object's `fixed` labels (a pod's runtime's, a namespace's
/// automatic name: never removed here) and its `own` ones (set here, overriding the
/// fixed). Pure.
pub fn plan(
    what: &str,
    fixed: &BTreeMap<String, String>,
    own: &BTreeMap<String, String>,
    changes: &[Change],
    overwrite: bool,
) -> Result<Plan, String> {
    let mut new = own.clone();
    let mut warnings = Vec::new();
    for c in changes {
        let effective =
            |new: &BTreeMap<String, String>, k: &str| new.get(k).or_else(|| fixed.get(k)).cloned();
        match c {
            Change::Set(k, v) => {
                if let Some(old) = effective(&new, k) {
                    if old != *v && !overwrite {
                        return Err(format!(
                            "{what}: label {k:?} already has a value ({old:?}) and --overwrite is not given; nothing was changed (add --overwrite to change it)"
                        ));
                    }
                }
                if fixed.get(k) == Some(v) {
                    new.remove(k);
                } else {
                    new.insert(k.clone(), v.clone());
                }
            }
            Change::Remove(k) => {
                if new.remove(k).is_some() {
                    continue;
                }
                if let Some(v) = fixed.get(k) {
                    return Err(format!(
                        "{what}: label {k}={v} is not one `twill label` set, so it cannot remove it (a pod's runtime labels come from CNI_ARGS or runtimeConfig; a namespace's {NAMESPACE_NAME_LABEL} is automatic); nothing was changed. To change its value: {k}=VALUE --overwrite"
                    ));
                }
                warnings.push(format!("{what}: label {k:?} not found"));
            }
        }
    }
    let changed = new != *own;
    Ok(Plan {
        own: new,
        changed,
        warnings,
    })
}

/// `NS/NAME` or `NAME` (in `default`), both checked.
fn pod_ref(arg: &str) -> anyhow::Result<(String, String)> {
    let (ns, pod) = arg
        .split_once('/')
        .unwrap_or((twill_api::policy::DEFAULT_NAMESPACE, arg));
    check_namespace_name("pod's namespace", ns).map_err(anyhow::Error::msg)?;
    // Any name a runtime gave (a container ID when it gave none); only the store knows.
    if pod.is_empty() || pod.contains('/') {
        bail!("{arg:?} is not a pod: write NAMESPACE/NAME (or NAME for namespace default)");
    }
    Ok((ns.to_string(), pod.to_string()))
}

pub fn run(args: LabelArgs, store: &dyn Store) -> anyhow::Result<i32> {
    let (is_pod, t) = match &args.command {
        LabelCommand::Pod(t) => (true, t),
        LabelCommand::Namespace(t) => (false, t),
    };
    let changes = t
        .changes
        .iter()
        .map(|a| parse_change(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{e}; nothing was changed"))?;
    // What it is labelled over: a pod's runtime labels (the pod must exist), a namespace's
    // automatic name.
    let (what, key, fixed) = if is_pod {
        let (ns, pod) = pod_ref(&t.name)?;
        let view = ClusterView::load(store)?;
        let Some(ep) = view
            .endpoints
            .iter()
            .find(|((n, p, _), _)| *n == ns && *p == pod)
            .map(|(_, e)| e)
        else {
            bail!(
                "pod {ns}/{pod} not found: no node publishes an endpoint for it (`twill get endpoints -A` lists the pods); nothing was changed"
            );
        };
        (
            format!("pod/{ns}/{pod}"),
            pod_labels_key(&ns, &pod),
            ep.labels.clone(),
        )
    } else {
        let name = &t.name;
        check_namespace_name("namespace", name).map_err(anyhow::Error::msg)?;
        if changes
            .iter()
            .any(|c| matches!(c, Change::Set(k, _) if k == NAMESPACE_NAME_LABEL))
        {
            bail!("namespace/{name}: {NAMESPACE_NAME_LABEL} is set automatically to the namespace's name; nothing was changed");
        }
        (
            format!("namespace/{name}"),
            namespace_key(name),
            BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), name.clone())]),
        )
    };
    let full = format!("{PREFIX}{key}");
    // Read, plan, write only over what was read; if someone wrote in between, again.
    for _ in 0..5 {
        let current = store.get(&full)?;
        let own = match &current {
            None => BTreeMap::new(),
            Some(kv) if is_pod => {
                serde_json::from_slice::<PodLabels>(&kv.value)
                    .with_context(|| {
                        format!(
                            "{key} holds no readable labels; `twill label` will not overwrite it"
                        )
                    })?
                    .labels
            }
            Some(kv) => {
                serde_json::from_slice::<Namespace>(&kv.value)
                    .with_context(|| {
                        format!(
                            "{key} holds no readable labels; `twill label` will not overwrite it"
                        )
                    })?
                    .labels
            }
        };
        let p = plan(&what, &fixed, &own, &changes, t.overwrite).map_err(anyhow::Error::msg)?;
        for w in &p.warnings {
            eprintln!("warning: {w}");
        }
        if !p.changed {
            println!("{what} not labeled");
            return Ok(0);
        }
        let value = if is_pod {
            serde_json::to_vec(&PodLabels {
                labels: p.own.clone(),
            })
        } else {
            serde_json::to_vec(&Namespace {
                labels: p.own.clone(),
            })
        }
        .context("serializing the labels")?;
        let written = match current.map(|kv| kv.mod_revision) {
            // A pod with no hand-set label left: its key goes.
            Some(rev) if is_pod && p.own.is_empty() => store.delete_if(&full, rev)?,
            Some(rev) => store.update(&full, rev, &value, None)?,
            None => store.create(&full, &value, None)?.is_some(),
        };
        if written {
            println!("{what} labeled");
            return Ok(0);
        }
    }
    bail!("{what} kept changing while labelling it; run `twill label` again")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn changes(args: &[&str]) -> Vec<Change> {
        args.iter().map(|a| parse_change(a).unwrap()).collect()
    }

    #[test]
    fn arguments_are_set_or_remove_and_checked() {
        assert_eq!(
            parse_change("app=web").unwrap(),
            Change::Set("app".into(), "web".into())
        );
        assert_eq!(
            parse_change("app=").unwrap(),
            Change::Set("app".into(), "".into())
        );
        assert_eq!(parse_change("app-").unwrap(), Change::Remove("app".into()));
        assert_eq!(
            parse_change("example.com/tier=db").unwrap(),
            Change::Set("example.com/tier".into(), "db".into())
        );
        assert!(parse_change("app").unwrap_err().contains("key=value"));
        assert!(parse_change("a b=c")
            .unwrap_err()
            .contains("not a label key"));
        assert!(parse_change("app=-x")
            .unwrap_err()
            .contains("not a label value"));
        assert!(parse_change("Bad_/x=y").unwrap_err().contains("prefix"));
    }

    #[test]
    fn changing_a_value_needs_overwrite_as_kubectl() {
        let runtime = labels(&[("pod", "a")]);
        let own = labels(&[("team", "x")]);
        // A new key: set.
        let p = plan("pod/x/a", &runtime, &own, &changes(&["env=prod"]), false).unwrap();
        assert_eq!(p.own, labels(&[("team", "x"), ("env", "prod")]));
        assert!(p.changed);
        // The same value again: nothing to do, no --overwrite needed.
        let p = plan(
            "pod/x/a",
            &runtime,
            &own,
            &changes(&["team=x", "pod=a"]),
            false,
        )
        .unwrap();
        assert!(!p.changed);
        // Another value, of a hand-set or a runtime label: --overwrite.
        for c in ["team=y", "pod=b"] {
            let e = plan("pod/x/a", &runtime, &own, &changes(&[c]), false).unwrap_err();
            assert!(
                e.contains("already has a value") && e.contains("--overwrite"),
                "{e}"
            );
        }
        let p = plan("pod/x/a", &runtime, &own, &changes(&["pod=b"]), true).unwrap();
        assert_eq!(p.own, labels(&[("team", "x"), ("pod", "b")]));
        // Back to the runtime's value: the override goes.
        let p = plan("pod/x/a", &runtime, &p.own, &changes(&["pod=a"]), true).unwrap();
        assert_eq!(p.own, own);
    }

    #[test]
    fn removing_takes_only_hand_set_labels() {
        let runtime = labels(&[("pod", "a")]);
        let own = labels(&[("team", "x"), ("pod", "b")]);
        let p = plan(
            "pod/x/a",
            &runtime,
            &own,
            &changes(&["team-", "pod-"]),
            false,
        )
        .unwrap();
        assert!(p.own.is_empty() && p.changed);
        // The runtime's own label cannot be removed here.
        let e = plan(
            "pod/x/a",
            &runtime,
            &labels(&[]),
            &changes(&["pod-"]),
            false,
        )
        .unwrap_err();
        assert!(
            e.contains("cannot remove it") && e.contains("pod=VALUE --overwrite"),
            "{e}"
        );
        // A label it does not have: a warning, as kubectl.
        let p = plan("pod/x/a", &runtime, &own, &changes(&["nope-"]), false).unwrap();
        assert!(!p.changed);
        assert_eq!(p.warnings, ["pod/x/a: label \"nope\" not found"]);
        // Set then removed in one command: nothing.
        let p = plan(
            "pod/x/a",
            &runtime,
            &own,
            &changes(&["new=1", "new-"]),
            false,
        )
        .unwrap();
        assert!(!p.changed);
    }
}
