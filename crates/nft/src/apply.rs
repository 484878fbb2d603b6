//! I/O edge: applies an nft script as one atomic transaction with `nft -f -`.
//!
//! The child inherits the network namespace of the thread that forks it, so a caller that
//! has `setns`'d its thread into a pod network's namespace applies the script there.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::Error;

/// Runs `nft -f -` with `script` on stdin: every command in it commits together or none
/// does. The error carries nft's stderr (which quotes the failing line).
pub fn apply_script(script: &str) -> Result<(), Error> {
    run_nft(&nft_program()?, &["-f", "-"], script)
}

/// `nft --check -f -`: the kernel validates the whole transaction (set elements included)
/// and nothing is committed.
pub fn check_script(script: &str) -> Result<(), Error> {
    run_nft(&nft_program()?, &["--check", "-f", "-"], script)
}

/// Where PATH searched when it is unset (the usual root PATH).
const DEFAULT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// The `nft` this process would run: the first on PATH (or on the usual root PATH if
/// PATH is unset). The one definition, so that a readiness check (CNI STATUS) and the
/// commands that run nft agree.
pub fn find_nft() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&path)
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
}

fn nft_program() -> Result<String, Error> {
    find_nft()
        .map(|p| p.to_string_lossy().into_owned())
        .ok_or(Error::NftMissing)
}

/// Runs `program args` with `script` on stdin; a test can name a program that does not exist.
fn run_nft(program: &str, args: &[&str], script: &str) -> Result<(), Error> {
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NftMissing),
        Err(e) => return Err(Error::NftSpawn(e)),
    };
    // Write then drop stdin so nft sees EOF; a write error (nft died early) shows up in
    // its exit status and stderr below, which say more.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(Error::NftSpawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::NftFailed {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_nft_says_to_install_nftables() {
        let err = run_nft("twl-no-such-nft", &["-f", "-"], "list ruleset\n").unwrap_err();
        assert!(matches!(err, Error::NftMissing), "{err:?}");
        assert!(err.to_string().contains("install nftables"), "{err}");
    }
}
