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
    run_nft("nft", script)
}

/// `apply_script` with the program named, so a test can name one that does not exist.
fn run_nft(program: &str, script: &str) -> Result<(), Error> {
    let mut child = match Command::new(program)
        .args(["-f", "-"])
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
        let err = run_nft("twl-no-such-nft", "list ruleset\n").unwrap_err();
        assert!(matches!(err, Error::NftMissing), "{err:?}");
        assert!(err.to_string().contains("install nftables"), "{err}");
    }
}
