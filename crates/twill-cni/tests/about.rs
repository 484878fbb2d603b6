//! Run by hand with no CNI_COMMAND, twill-cni says what it is the way the reference
//! plugins do: its name and version, and the CNI versions it supports, on stderr, with
//! nothing on stdout and exit status 0. Checked side by side with /usr/lib/cni/bridge.

mod common;
use common::PLUGIN;
use std::process::{Command, Output, Stdio};

fn run(program: &str, command: Option<&str>) -> Output {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(c) = command {
        cmd.env("CNI_COMMAND", c);
    }
    cmd.output().expect("run the plugin")
}

/// (name, version) from "CNI <name> plugin <version>", and the versions listed.
fn parse(stderr: &[u8]) -> ((String, String), Vec<String>) {
    let text = String::from_utf8_lossy(stderr).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "two lines: {text:?}");
    let about = lines[0]
        .strip_prefix("CNI ")
        .and_then(|r| r.split_once(" plugin "))
        .unwrap_or_else(|| panic!("first line {:?}", lines[0]));
    let versions = lines[1]
        .strip_prefix("CNI protocol versions supported: ")
        .unwrap_or_else(|| panic!("second line {:?}", lines[1]))
        .split(", ")
        .map(str::to_string)
        .collect();
    ((about.0.to_string(), about.1.to_string()), versions)
}

#[test]
fn with_no_cni_command_it_prints_its_name_version_and_cni_versions_like_the_reference() {
    let reference = "/usr/lib/cni/bridge";
    assert!(
        std::path::Path::new(reference).is_file(),
        "the reference plugins are missing: apt-get install containernetworking-plugins"
    );
    for command in [None, Some("")] {
        let theirs = run(reference, command);
        let ours = run(PLUGIN, command);
        for (who, out) in [("bridge", &theirs), ("twill-cni", &ours)] {
            assert!(out.status.success(), "{who} {command:?}: {:?}", out.status);
            assert!(
                out.stdout.is_empty(),
                "{who} {command:?}: stdout {:?}",
                out.stdout
            );
        }
        let ((name, _), their_versions) = parse(&theirs.stderr);
        assert_eq!(name, "bridge");
        assert!(their_versions.contains(&"1.0.0".to_string()));
        let ((name, version), versions) = parse(&ours.stderr);
        assert_eq!(name, "twill-cni");
        assert_eq!(version, format!("v{}", env!("CARGO_PKG_VERSION")));
        assert_eq!(versions, twill_api::cni::SUPPORTED_VERSIONS);
    }
    // A command it does not know is still an error on stdout, as before.
    let bad = run(PLUGIN, Some("FROB"));
    assert!(!bad.status.success());
    let v: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(v["code"], 4);
}

/// The plugin links no YAML parser: no symbol of one is in the binary (twill-api's
/// `yaml` feature is the CLI's; scripts/test.sh checks the dependency graph too).
#[test]
fn the_plugin_links_no_yaml_parser() {
    twill_testkit::require_program("the_plugin_links_no_yaml_parser", "nm", "binutils");
    let out = Command::new("nm")
        .args(["--defined-only", PLUGIN])
        .output()
        .expect("run nm");
    assert!(
        out.status.success(),
        "nm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let symbols = String::from_utf8_lossy(&out.stdout);
    assert!(
        symbols.lines().count() > 1000,
        "nm listed too few symbols to judge: is the binary stripped?"
    );
    let yaml: Vec<&str> = symbols
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("yaml"))
        .take(5)
        .collect();
    assert!(yaml.is_empty(), "twill-cni links YAML code: {yaml:?}");
}
