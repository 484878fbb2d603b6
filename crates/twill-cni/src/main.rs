//! `twill-cni`: the CNI plugin a container runtime runs for every pod. The runtime passes
//! the command and the pod in the environment and the network config on stdin; the plugin
//! prints a result (or an error object) on stdout. See crates/twill-cni/README.md.

mod commands;
mod names;
mod policy_wait;
mod reaper;
mod wiring;

use std::io::{Read, Write};
use twill_api::cni::{CniEnv, CniError, ErrorCode};

fn main() {
    if let Ok(index) = std::env::var(reaper::ENV) {
        std::process::exit(reaper::run(&index));
    }
    // Run by hand with no command: say what this is, as the reference plugins do (on
    // stderr, exit 0; an empty CNI_COMMAND counts as none, as there).
    if std::env::var_os("CNI_COMMAND").is_none_or(|c| c.is_empty()) {
        eprint!("{}", about());
        return;
    }
    let env = CniEnv::from_vars(|k| std::env::var(k).ok());
    let mut stdin = Vec::new();
    let read = match &env {
        // VERSION may come with a config on stdin ({"cniVersion": ...}) or with nothing.
        Ok(_) => std::io::stdin().read_to_end(&mut stdin).map(|_| ()),
        Err(_) => Ok(()),
    };
    let outcome = match (env, read) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(CniError::new(
            ErrorCode::Io,
            "cannot read the network config from stdin",
        )
        .with_details(e.to_string())),
        (Ok(env), Ok(())) => commands::run(&env, &stdin),
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(json)) => {
            let _ = writeln!(out, "{json}");
        }
        Ok(None) => {}
        Err(e) => {
            let version = commands::requested_version(&stdin);
            let _ = writeln!(out, "{}", e.to_json(&version));
            let _ = out.flush();
            std::process::exit(1);
        }
    }
}

/// What the reference plugins print when run with no CNI_COMMAND (libcni's `PluginMain`
/// with `BuildString`): the plugin's name and version, and the CNI versions it speaks.
fn about() -> String {
    format!(
        "CNI twill-cni plugin v{}\nCNI protocol versions supported: {}\n",
        env!("CARGO_PKG_VERSION"),
        twill_api::cni::SUPPORTED_VERSIONS.join(", ")
    )
}
