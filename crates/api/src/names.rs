//! Validation of the names a runtime hands to Twill and that become interface and file
//! names: network names, container IDs and interface names. The rules follow the CNI spec
//! (and libcni's validators) exactly; the IPAM record directory relies on them for safe
//! path components.

/// A name that the CNI spec (or a file system) does not allow, with the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct InvalidName {
    /// Which name: "network name", "container ID" or "interface name".
    pub what: &'static str,
    pub value: String,
    pub reason: String,
}

fn invalid(what: &'static str, value: &str, reason: impl Into<String>) -> InvalidName {
    InvalidName {
        what,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// libcni's rule for container IDs and network names: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
/// Starting with an alphanumeric also rules out ".", ".." and hidden file names, which the
/// record directory relies on for its temporary files.
fn check_cni_identifier(what: &'static str, value: &str) -> Result<(), InvalidName> {
    let Some(first) = value.bytes().next() else {
        return Err(invalid(what, value, "it must not be empty"));
    };
    if !first.is_ascii_alphanumeric() {
        return Err(invalid(
            what,
            value,
            "it must start with a letter or digit (CNI spec)",
        ));
    }
    if let Some((i, c)) = value
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || "_.-".contains(c)))
    {
        return Err(invalid(
            what,
            value,
            format!(
                "{c:?} at byte {i} is not allowed; use only letters, digits, '_', '.' and '-' (CNI spec)"
            ),
        ));
    }
    Ok(())
}

/// A CNI container ID: non-empty, letters, digits, '_', '.', '-', starting with a letter or
/// digit (CNI spec, libcni `ValidateContainerID`).
pub fn validate_container_id(id: &str) -> Result<(), InvalidName> {
    check_cni_identifier("container ID", id)
}

/// A CNI interface name (libcni `ValidateInterfaceName`): 1..=15 bytes (IFNAMSIZ - 1), not
/// "." or "..", and no '/', ':' or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), InvalidName> {
    const WHAT: &str = "interface name";
    if name.is_empty() {
        return Err(invalid(WHAT, name, "it must not be empty"));
    }
    if name.len() > 15 {
        return Err(invalid(
            WHAT,
            name,
            format!(
                "it is {} bytes long; the kernel allows at most 15 bytes (IFNAMSIZ)",
                name.len()
            ),
        ));
    }
    if name == "." || name == ".." {
        return Err(invalid(
            WHAT,
            name,
            "\".\" and \"..\" are not interface names",
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(invalid(
            WHAT,
            name,
            format!("{c:?} is not allowed ('/', ':' and whitespace are not)"),
        ));
    }
    Ok(())
}

/// A CNI network name (libcni `ValidateNetworkName`), also used as a directory name, so at
/// most 200 bytes.
pub fn validate_network_name(name: &str) -> Result<(), InvalidName> {
    check_cni_identifier("network name", name)?;
    if name.len() > 200 {
        return Err(invalid(
            "network name",
            name,
            format!(
                "it is {} bytes long; at most 200 fit in a directory name here",
                name.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_follow_the_cni_spec() {
        for ok in ["a", "0", "abc-DEF_1.2", "f00dcafe".repeat(8).as_str()] {
            assert_eq!(validate_container_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", ".", "..", "-a", "_a", ".hidden", "a/b", "a:b", "a b", "ä", "a\n",
        ] {
            let e = validate_container_id(bad).unwrap_err();
            assert_eq!(e.what, "container ID", "{bad}");
        }
        let e = validate_container_id("a/b").unwrap_err().to_string();
        assert!(e.contains("'/'") && e.contains("byte 1"), "{e}");
    }

    #[test]
    fn ifnames_follow_the_cni_spec() {
        for ok in ["eth0", "a", "net1.100", "x".repeat(15).as_str(), "-", "é"] {
            assert_eq!(validate_ifname(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "x".repeat(16).as_str(),
            "éééééééé",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
        assert!(validate_ifname(&"x".repeat(16))
            .unwrap_err()
            .to_string()
            .contains("at most 15"));
    }

    #[test]
    fn network_names_are_cni_identifiers_that_fit_a_directory() {
        assert_eq!(validate_network_name("twill-pods_1.0"), Ok(()));
        for bad in ["", "..", "../etc", "a/b", "x".repeat(201).as_str()] {
            assert!(validate_network_name(bad).is_err(), "{bad}");
        }
    }
}
