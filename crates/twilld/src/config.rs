//! The agent's configuration: a YAML file (`--config FILE` / `TWILL_CONFIG`), environment
//! variables and flags, all with the same names (YAML `nodeName`, env `TWILL_NODE_NAME`,
//! flag `--node-name`). Precedence: flags > environment > file > defaults. Pure: the file
//! text, the environment and the host name come in as arguments ([`load`] is the I/O edge).

use crate::autodetect::Method;
use crate::log::LogFormat;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use twill_store::etcd::EtcdConfig;
use twill_store::{StoreConfig, StoreError};

/// The store's kind is the store crate's own type.
pub use twill_store::StoreKind;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node_name: String,
    pub store: StoreKind,
    pub store_dir: PathBuf,
    pub etcd_endpoints: Vec<String>,
    pub etcd_ca_file: Option<PathBuf>,
    pub etcd_cert_file: Option<PathBuf>,
    pub etcd_key_file: Option<PathBuf>,
    pub static_file: Option<PathBuf>,
    pub ip_autodetection: Method,
    pub node_ip: Option<Ipv4Addr>,
    pub handoff_file: PathBuf,
    pub state_dir: PathBuf,
    pub cni_data_dir: PathBuf,
    pub cni_network: String,
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    pub min_free_addresses: u32,
    /// How often block usage (twill-cni's records) is measured.
    pub poll_interval: Duration,
    /// How often each peer's node IP is probed (ICMP echo), when a backend is on.
    pub peer_probe_interval: Duration,
    /// Network policy on this node: twilld compiles the store's policies into
    /// `table inet twill-policy` (off: the table is removed and pods are open).
    pub policy: bool,
    /// Open vSwitch's run directory (backend ovs): ovsdb-server's `db.sock` and
    /// ovs-vswitchd's control sockets.
    pub ovs_rundir: PathBuf,
}

impl Config {
    /// The store these settings name, as `twill_store::open` takes it. Pure.
    pub fn store_config(&self) -> Result<StoreConfig, StoreError> {
        Ok(match self.store {
            StoreKind::Embedded => StoreConfig::Embedded {
                dir: self.store_dir.clone(),
            },
            StoreKind::Etcd => {
                let mut c = EtcdConfig::new(self.etcd_endpoints.clone());
                c.ca_file = self.etcd_ca_file.clone();
                c.cert_file = self.etcd_cert_file.clone();
                c.key_file = self.etcd_key_file.clone();
                StoreConfig::Etcd(c)
            }
            StoreKind::Static => StoreConfig::Static {
                file: self.static_file.clone().ok_or_else(|| {
                    StoreError::Config("store is static but staticFile is not set".into())
                })?,
            },
        })
    }
}

/// One setting: its YAML name, flag, environment variable, default and help.
pub struct Field {
    pub yaml: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

macro_rules! fields {
    ($($yaml:literal $flag:literal $env:literal $default:literal $help:literal;)*) => {
        /// Every setting, for parsing, `--help` and the README table.
        pub const FIELDS: &[Field] = &[$(Field { yaml: $yaml, flag: $flag, env: $env, default: $default, help: $help }),*];
    };
}

fields! {
    "nodeName" "node-name" "TWILL_NODE_NAME" "the host name" "this node's name in the store (nodes/<name>, nodeconfigs/<name>)";
    "store" "store" "TWILL_STORE" "embedded" "embedded | etcd | static";
    "storeDir" "store-dir" "TWILL_STORE_DIR" "/var/lib/twill/store" "folder of the embedded store, shared by the agents of one machine";
    "etcdEndpoints" "etcd-endpoints" "TWILL_ETCD_ENDPOINTS" "" "etcd client URLs, comma separated (a YAML list works too)";
    "etcdCAFile" "etcd-ca-file" "TWILL_ETCD_CA_FILE" "" "CA bundle that signed etcd's server certificate";
    "etcdCertFile" "etcd-cert-file" "TWILL_ETCD_CERT_FILE" "" "client certificate for etcd (with etcdKeyFile)";
    "etcdKeyFile" "etcd-key-file" "TWILL_ETCD_KEY_FILE" "" "client key for etcd";
    "staticFile" "static-file" "TWILL_STATIC_FILE" "" "the static store's file (store: static)";
    "ipAutodetection" "ip-autodetection" "TWILL_IP_AUTODETECTION" "first-found" "first-found | interface=REGEX,... | skip-interface=REGEX,... | cidr=CIDR,... | can-reach=ADDR";
    "nodeIP" "node-ip" "TWILL_NODE_IP" "" "a fixed node IP (beats ipAutodetection; a Node resource beats both)";
    "handoffFile" "handoff-file" "TWILL_HANDOFF_FILE" "/run/twill/node.json" "the hand-off file twill-cni reads";
    "stateDir" "state-dir" "TWILL_STATE_DIR" "/var/lib/twill/agent" "where the agent remembers its blocks across restarts";
    "cniDataDir" "cni-data-dir" "TWILL_CNI_DATA_DIR" "/var/lib/twill/ipam" "twill-cni's record folder (to measure block usage)";
    "cniNetwork" "cni-network" "TWILL_CNI_NETWORK" "twill" "the CNI network name whose records are counted";
    "listen" "listen" "TWILL_LISTEN" "127.0.0.1:9099" "address of /healthz, /readyz, /metrics";
    "logFormat" "log-format" "TWILL_LOG_FORMAT" "text" "text (logfmt) | json";
    "minFreeAddresses" "min-free-addresses" "TWILL_MIN_FREE_ADDRESSES" "8" "claim another block when fewer addresses are free";
    "pollIntervalSeconds" "poll-interval-seconds" "TWILL_POLL_INTERVAL_SECONDS" "5" "how often block usage is measured (decimals allowed)";
    "peerProbeIntervalSeconds" "peer-probe-interval-seconds" "TWILL_PEER_PROBE_INTERVAL_SECONDS" "5" "how often every peer's node IP is probed with an ICMP echo (decimals allowed)";
    "policy" "policy" "TWILL_POLICY" "false" "enforce NetworkPolicy and GlobalNetworkPolicy on this node's pods (nftables table inet twill-policy): true | false";
    "ovsRundir" "ovs-rundir" "TWILL_OVS_RUNDIR" "/var/run/openvswitch" "Open vSwitch's run directory (backend ovs): ovsdb-server's db.sock, ovs-vswitchd's sockets";
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File { path: PathBuf, line: Option<usize> },
    Env(&'static str),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File {
                path,
                line: Some(l),
            } => write!(f, "{} line {l}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Env(e) => write!(f, "environment {e}"),
            Origin::Flag(fl) => write!(f, "flag --{fl}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting with a bad value, or unknown: where, which, why.
    #[error("{origin}: {field}: {reason}")]
    Invalid {
        origin: Origin,
        field: String,
        reason: String,
    },
    #[error("cannot read config file {path}: {source}; pass a readable file to --config (or TWILL_CONFIG)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}; see twilld --help")]
    Usage(String),
}

impl ConfigError {
    /// The file line of a bad setting, if it came from the file.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid {
                origin: Origin::File { line, .. },
                ..
            } => *line,
            _ => None,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Run(Box<Config>),
    Help(String),
    Version,
}

/// Reads the config file named by `--config` / `TWILL_CONFIG`, then parses everything.
pub fn load(args: &[String]) -> Result<Command, ConfigError> {
    let env: HashMap<String, String> = std::env::vars().collect();
    parse(args, &env, |p| std::fs::read_to_string(p), &hostname())
}

/// The kernel's host name (the default node name).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Parses flags (`args` without the program name), environment and the file. `read_file`
/// reads the config file; `hostname` is the default node name.
pub fn parse(
    args: &[String],
    env: &HashMap<String, String>,
    read_file: impl Fn(&Path) -> std::io::Result<String>,
    hostname: &str,
) -> Result<Command, ConfigError> {
    // Raw values, later sources overwriting earlier ones: file, env, flags.
    let mut raw: BTreeMap<&'static str, (String, Origin)> = BTreeMap::new();
    let mut config_file: Option<PathBuf> = env.get("TWILL_CONFIG").map(PathBuf::from);
    let mut flags: Vec<(&'static Field, String)> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "-h" {
            return Ok(Command::Help(help()));
        }
        let Some(name) = arg.strip_prefix("--") else {
            return Err(ConfigError::Usage(format!(
                "unexpected argument {arg:?}: settings are flags like --node-name NAME"
            )));
        };
        let (name, inline) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (name, None),
        };
        match name {
            "help" => return Ok(Command::Help(help())),
            "version" => return Ok(Command::Version),
            _ => {}
        }
        let mut value = || -> Result<String, ConfigError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| ConfigError::Usage(format!("flag --{name} needs a value"))),
            }
        };
        if name == "config" {
            config_file = Some(PathBuf::from(value()?));
            continue;
        }
        let Some(field) = FIELDS.iter().find(|f| f.flag == name) else {
            let hint = closest_flag(name)
                .map(|f| format!(" (did you mean --{f}?)"))
                .unwrap_or_default();
            return Err(ConfigError::Usage(format!("unknown flag --{name}{hint}")));
        };
        flags.push((field, value()?));
    }

    if let Some(path) = &config_file {
        let text = read_file(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        for (field, value, line) in parse_file(&text, path)? {
            raw.insert(
                field.yaml,
                (
                    value,
                    Origin::File {
                        path: path.clone(),
                        line,
                    },
                ),
            );
        }
    }
    for f in FIELDS {
        if let Some(v) = env.get(f.env) {
            raw.insert(f.yaml, (v.clone(), Origin::Env(f.env)));
        }
    }
    for (f, v) in flags {
        raw.insert(f.yaml, (v, Origin::Flag(f.flag)));
    }
    build(raw, hostname).map(|c| Command::Run(Box::new(c)))
}

/// The known flag `name` is most likely a typo of: at most two edits away (case aside).
fn closest_flag(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    FIELDS
        .iter()
        .map(|f| f.flag)
        .chain(["config", "help", "version"])
        .map(|f| (edit_distance(&name, f), f))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, f)| f)
}

/// Levenshtein distance between two ASCII-ish strings (by char).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// One setting of the file: the field, its value as text, its line.
type FileSetting = (&'static Field, String, Option<usize>);

/// The file's top-level settings.
fn parse_file(text: &str, path: &Path) -> Result<Vec<FileSetting>, ConfigError> {
    let bad = |field: &str, reason: String, line: Option<usize>| ConfigError::Invalid {
        origin: Origin::File {
            path: path.to_path_buf(),
            line,
        },
        field: field.to_string(),
        reason,
    };
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let reason = e.to_string();
        let reason = reason
            .split(" at line ")
            .next()
            .unwrap_or(&reason)
            .to_string();
        bad("(file)", reason, e.location().map(|l| l.line()))
    })?;
    let map = match value {
        serde_yaml_ng::Value::Mapping(m) => m,
        serde_yaml_ng::Value::Null => return Ok(Vec::new()),
        _ => {
            return Err(bad(
                "(file)",
                "expected a mapping of settings like `nodeName: n1`".into(),
                Some(1),
            ))
        }
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let Some(key) = k.as_str() else {
            return Err(bad("(file)", format!("{k:?} is not a setting name"), None));
        };
        let line = find_line(text, key);
        let Some(field) = FIELDS.iter().find(|f| f.yaml == key) else {
            let hint = FIELDS
                .iter()
                .find(|f| f.yaml.eq_ignore_ascii_case(key))
                .map(|f| format!("; did you mean {}?", f.yaml))
                .unwrap_or_else(|| {
                    "; known settings: ".to_string()
                        + &FIELDS.iter().map(|f| f.yaml).collect::<Vec<_>>().join(", ")
                });
            return Err(bad(key, format!("unknown setting{hint}"), line));
        };
        use serde_yaml_ng::Value as V;
        let scalar = |v: &V| -> Option<String> {
            match v {
                V::String(s) => Some(s.clone()),
                V::Number(n) => Some(n.to_string()),
                V::Bool(b) => Some(b.to_string()),
                _ => None,
            }
        };
        let text = match &v {
            V::Null => continue,
            V::Sequence(items) if field.yaml == "etcdEndpoints" => {
                let parts: Option<Vec<String>> = items.iter().map(scalar).collect();
                parts
                    .ok_or_else(|| bad(key, "expected a list of URLs".into(), line))?
                    .join(",")
            }
            other => scalar(other).ok_or_else(|| {
                bad(
                    key,
                    "expected a single value, not a list or mapping".into(),
                    line,
                )
            })?,
        };
        out.push((field, text, line));
    }
    Ok(out)
}

/// The line of a top-level `key:`.
fn find_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let t = l.trim_start_matches(['"', '\'']);
            t.starts_with(key)
                && t[key.len()..]
                    .trim_start_matches(['"', '\''])
                    .trim_start()
                    .starts_with(':')
        })
        .map(|i| i + 1)
}

fn build(
    mut raw: BTreeMap<&'static str, (String, Origin)>,
    hostname: &str,
) -> Result<Config, ConfigError> {
    let mut take = |yaml: &'static str| -> (String, Origin) {
        let f = FIELDS.iter().find(|f| f.yaml == yaml).expect("known field");
        raw.remove(yaml)
            .unwrap_or_else(|| (f.default.to_string(), Origin::Default))
    };
    fn bad(origin: Origin, field: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin,
            field: field.into(),
            reason: reason.into(),
        }
    }
    let path = |(v, _): (String, Origin)| -> Option<PathBuf> {
        let v = v.trim();
        (!v.is_empty()).then(|| PathBuf::from(v))
    };
    let required_path = |(v, o): (String, Origin), field: &str| -> Result<PathBuf, ConfigError> {
        let v = v.trim().to_string();
        if v.is_empty() {
            return Err(bad(o, field, "must not be empty"));
        }
        Ok(PathBuf::from(v))
    };

    let (name, o) = take("nodeName");
    let node_name = if matches!(o, Origin::Default) {
        hostname.to_string()
    } else {
        name.trim().to_string()
    };
    if let Err(e) = twill_api::names::validate_network_name(&node_name) {
        let reason = if matches!(o, Origin::Default) {
            format!(
                "the host name {node_name:?} cannot be a node name ({}); set --node-name (or TWILL_NODE_NAME, or nodeName in the config file)",
                e.reason
            )
        } else {
            format!("{node_name:?}: {}", e.reason)
        };
        return Err(bad(o, "nodeName", reason));
    }

    let (v, store_origin) = take("store");
    let store: StoreKind = v.trim().parse().map_err(|e: twill_store::UnknownStore| {
        bad(store_origin.clone(), "store", e.to_string())
    })?;
    let store_dir = required_path(take("storeDir"), "storeDir")?;
    let (v, endpoints_origin) = take("etcdEndpoints");
    let etcd_endpoints: Vec<String> = v
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for e in &etcd_endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(bad(
                endpoints_origin,
                "etcdEndpoints",
                format!("{e:?} must be a URL like https://192.0.2.1:2379"),
            ));
        }
    }
    let etcd_ca_file = path(take("etcdCAFile"));
    let cert = take("etcdCertFile");
    let cert_origin = cert.1.clone();
    let etcd_cert_file = path(cert);
    let etcd_key_file = path(take("etcdKeyFile"));
    if etcd_cert_file.is_some() != etcd_key_file.is_some() {
        return Err(bad(
            cert_origin,
            "etcdCertFile",
            "etcdCertFile and etcdKeyFile go together: set both or neither",
        ));
    }
    let static_file = path(take("staticFile"));
    match store {
        StoreKind::Etcd if etcd_endpoints.is_empty() => {
            return Err(bad(
                store_origin,
                "store",
                "store is etcd but etcdEndpoints is empty; set --etcd-endpoints (or TWILL_ETCD_ENDPOINTS, or etcdEndpoints in the config file)",
            ))
        }
        StoreKind::Static if static_file.is_none() => {
            return Err(bad(
                store_origin,
                "store",
                "store is static but staticFile is not set; set --static-file (or TWILL_STATIC_FILE, or staticFile in the config file)",
            ))
        }
        _ => {}
    }

    let (v, o) = take("ipAutodetection");
    let ip_autodetection = Method::parse(&v).map_err(|r| bad(o, "ipAutodetection", r))?;
    let (v, o) = take("nodeIP");
    let node_ip = match v.trim() {
        "" => None,
        s => {
            let addr = s.split('/').next().unwrap_or(s);
            Some(
                addr.parse()
                    .map_err(|_| bad(o, "nodeIP", format!("{s:?} is not an IPv4 address")))?,
            )
        }
    };
    let handoff_file = required_path(take("handoffFile"), "handoffFile")?;
    let state_dir = required_path(take("stateDir"), "stateDir")?;
    let cni_data_dir = required_path(take("cniDataDir"), "cniDataDir")?;
    let ovs_rundir = required_path(take("ovsRundir"), "ovsRundir")?;
    let (cni_network, o) = take("cniNetwork");
    let cni_network = cni_network.trim().to_string();
    twill_api::names::validate_network_name(&cni_network)
        .map_err(|e| bad(o, "cniNetwork", e.to_string()))?;
    let (v, o) = take("listen");
    let listen = v.trim().parse().map_err(|_| {
        bad(
            o,
            "listen",
            format!("{v:?} is not an address:port like 127.0.0.1:9099"),
        )
    })?;
    let (v, o) = take("logFormat");
    let log_format = match v.trim() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(bad(
                o,
                "logFormat",
                format!("{other:?} is not a log format; use text or json"),
            ))
        }
    };
    let (v, o) = take("minFreeAddresses");
    let min_free_addresses = v.trim().parse().map_err(|_| {
        bad(
            o,
            "minFreeAddresses",
            format!("{v:?} is not a whole number ≥ 0"),
        )
    })?;
    let (v, o) = take("pollIntervalSeconds");
    let poll_interval = v
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| (0.05..=3600.0).contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            bad(
                o,
                "pollIntervalSeconds",
                format!("{v:?} must be a number of seconds from 0.05 to 3600"),
            )
        })?;
    let (v, o) = take("peerProbeIntervalSeconds");
    let peer_probe_interval = v
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| (0.1..=3600.0).contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            bad(
                o,
                "peerProbeIntervalSeconds",
                format!("{v:?} must be a number of seconds from 0.1 to 3600"),
            )
        })?;
    let (v, o) = take("policy");
    let policy = match v.trim() {
        "true" => true,
        "false" => false,
        _ => return Err(bad(o, "policy", format!("{v:?} must be true or false"))),
    };

    Ok(Config {
        node_name,
        store,
        store_dir,
        etcd_endpoints,
        etcd_ca_file,
        etcd_cert_file,
        etcd_key_file,
        static_file,
        ip_autodetection,
        node_ip,
        handoff_file,
        state_dir,
        cni_data_dir,
        cni_network,
        listen,
        log_format,
        min_free_addresses,
        poll_interval,
        peer_probe_interval,
        policy,
        ovs_rundir,
    })
}

pub fn help() -> String {
    let mut s = String::from(
        "twilld: Twill's node agent\n\nUsage: twilld [--config FILE] [--SETTING VALUE]...\n\n\
         Every setting is a flag, an environment variable and a key of the YAML config file;\n\
         flags beat the environment, which beats the file.\n\n",
    );
    s.push_str("  --config FILE  (TWILL_CONFIG)  the YAML config file\n");
    for f in FIELDS {
        s.push_str(&format!(
            "  --{} ({}, {}): {}{}\n",
            f.flag,
            f.env,
            f.yaml,
            f.help,
            if f.default.is_empty() {
                String::new()
            } else {
                format!(" [default: {}]", f.default)
            }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)], file: Option<&str>) -> Result<Config, ConfigError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let file = file.map(String::from);
        match parse(
            &args,
            &env,
            |_| {
                file.clone()
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
            },
            "host1",
        )? {
            Command::Run(c) => Ok(*c),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = run(&[], &[], None).unwrap();
        assert_eq!(c.node_name, "host1");
        assert_eq!(c.store, StoreKind::Embedded);
        assert_eq!(c.store_dir, PathBuf::from("/var/lib/twill/store"));
        assert_eq!(c.ip_autodetection, Method::FirstFound);
        assert_eq!(
            c.handoff_file,
            PathBuf::from(twill_api::resources::DEFAULT_HANDOFF_FILE)
        );
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/twill/agent"));
        assert_eq!(
            c.cni_data_dir,
            PathBuf::from(twill_ipam::records::DEFAULT_DATA_DIR)
        );
        assert_eq!(c.cni_network, "twill");
        assert_eq!(c.listen, "127.0.0.1:9099".parse().unwrap());
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.min_free_addresses, 8);
        assert_eq!(c.node_ip, None);
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let file =
            "nodeName: from-file\nminFreeAddresses: 3\nlogFormat: json\nlisten: 127.0.0.1:1\n";
        let env = [
            ("TWILL_NODE_NAME", "from-env"),
            ("TWILL_MIN_FREE_ADDRESSES", "4"),
            ("TWILL_CONFIG", "/x.yaml"),
        ];
        let c = run(&["--node-name", "from-flag"], &env, Some(file)).unwrap();
        assert_eq!(c.node_name, "from-flag");
        assert_eq!(c.min_free_addresses, 4, "env beats file");
        assert_eq!(c.log_format, LogFormat::Json, "file beats default");
        let c = run(
            &["--config=/x.yaml", "--min-free-addresses=5"],
            &[],
            Some(file),
        )
        .unwrap();
        assert_eq!(
            (c.node_name.as_str(), c.min_free_addresses),
            ("from-file", 5)
        );
        // A bad value that is overridden does not matter.
        let c = run(
            &["--config", "/x", "--log-format", "text"],
            &[],
            Some("logFormat: xml\n"),
        )
        .unwrap();
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn all_fields_parse() {
        let file = "store: etcd\netcdEndpoints:\n  - https://192.0.2.1:2379\n  - https://192.0.2.2:2379\netcdCAFile: /ca.pem\netcdCertFile: /c.pem\netcdKeyFile: /k.pem\nipAutodetection: interface=eth.*,ens[0-9]+\nnodeIP: 192.0.2.11/24\nhandoffFile: /h.json\nstateDir: /s\ncniDataDir: /d\ncniNetwork: pods\npollIntervalSeconds: 0.5\n";
        let c = run(&["--config", "/c.yaml"], &[], Some(file)).unwrap();
        assert_eq!(c.store, StoreKind::Etcd);
        assert_eq!(
            c.etcd_endpoints,
            ["https://192.0.2.1:2379", "https://192.0.2.2:2379"]
        );
        assert_eq!(c.etcd_key_file, Some(PathBuf::from("/k.pem")));
        assert_eq!(
            c.ip_autodetection,
            Method::Interface(vec!["eth.*".into(), "ens[0-9]+".into()])
        );
        assert_eq!(c.node_ip, Some("192.0.2.11".parse().unwrap()));
        assert_eq!(c.cni_network, "pods");
        assert_eq!(c.poll_interval, Duration::from_millis(500));
        let c = run(
            &[
                "--etcd-endpoints",
                "http://a:1, http://b:2",
                "--store",
                "etcd",
            ],
            &[],
            None,
        )
        .unwrap();
        assert_eq!(c.etcd_endpoints.len(), 2);
    }

    #[test]
    fn the_settings_name_the_store_to_open() {
        let c = run(&["--store-dir", "/s"], &[], None).unwrap();
        assert!(
            matches!(c.store_config().unwrap(), StoreConfig::Embedded { dir } if dir == Path::new("/s"))
        );
        let c = run(
            &[
                "--store=etcd",
                "--etcd-endpoints=https://192.0.2.1:2379,https://192.0.2.2:2379",
                "--etcd-ca-file=/ca.pem",
                "--etcd-cert-file=/c.pem",
                "--etcd-key-file=/k.pem",
            ],
            &[],
            None,
        )
        .unwrap();
        let StoreConfig::Etcd(e) = c.store_config().unwrap() else {
            panic!("etcd")
        };
        assert_eq!(
            e.endpoints,
            ["https://192.0.2.1:2379", "https://192.0.2.2:2379"]
        );
        assert_eq!(
            (e.ca_file, e.cert_file, e.key_file),
            (
                Some("/ca.pem".into()),
                Some("/c.pem".into()),
                Some("/k.pem".into())
            )
        );
        let mut c = run(&["--store=static", "--static-file=/f.json"], &[], None).unwrap();
        assert!(
            matches!(c.store_config().unwrap(), StoreConfig::Static { file } if file == Path::new("/f.json"))
        );
        c.static_file = None;
        assert!(c
            .store_config()
            .unwrap_err()
            .to_string()
            .contains("staticFile"));
        for kind in StoreKind::ALL {
            let c = Config {
                store: kind,
                static_file: Some("/f.json".into()),
                ..run(&[], &[], None).unwrap()
            };
            assert_eq!(c.store_config().unwrap().kind(), kind);
        }
    }

    #[test]
    fn file_errors_name_field_reason_and_line() {
        let e = run(
            &["--config", "/c.yaml"],
            &[],
            Some("nodeName: n1\n\nminFreeAddresses: lots\n"),
        )
        .unwrap_err();
        assert_eq!(e.line(), Some(3), "{e}");
        assert_eq!(
            e.to_string(),
            "/c.yaml line 3: minFreeAddresses: \"lots\" is not a whole number ≥ 0"
        );
        let e = run(
            &["--config", "/c.yaml"],
            &[],
            Some("nodeName: n1\nnodename: n2\n"),
        )
        .unwrap_err();
        assert_eq!(e.line(), Some(2));
        assert!(
            e.to_string()
                .contains("nodename: unknown setting; did you mean nodeName?"),
            "{e}"
        );
        let e = run(&["--config", "/c.yaml"], &[], Some("colour: blue\n")).unwrap_err();
        assert!(
            e.to_string().contains("known settings: nodeName, store"),
            "{e}"
        );
        let e = run(&["--config", "/c.yaml"], &[], Some("a: [\n")).unwrap_err();
        assert!(e.line().is_some(), "{e}");
        let e = run(
            &["--config", "/c.yaml"],
            &[],
            Some("x\ny: 1\nipAutodetection: interface=\n"),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("/c.yaml"), "{e}");
        let e = run(&["--config", "/c.yaml"], &[], Some("\nstore: consul\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/c.yaml line 2: store: \"consul\" is not a store: use one of embedded, etcd, static"
        );
        let e = run(&["--config", "/c.yaml"], &[], Some("store: etcd\n")).unwrap_err();
        assert_eq!(e.line(), Some(1));
        assert!(e.to_string().contains("set --etcd-endpoints"), "{e}");
        let e = run(&["--config", "/c.yaml"], &[], Some("nodeIP: 10.1.2\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/c.yaml line 1: nodeIP: \"10.1.2\" is not an IPv4 address"
        );
        let e = run(
            &["--config", "/c.yaml"],
            &[],
            Some("ipAutodetection: cidr=1.2.3.4/40\n"),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("line 1: ipAutodetection: cidr=1.2.3.4/40: not an IPv4 CIDR"),
            "{e}"
        );
        let e = run(&["--config", "/missing.yaml"], &[], None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read config file /missing.yaml"),
            "{e}"
        );
    }

    #[test]
    fn env_and_flag_errors_name_their_source() {
        let e = run(&[], &[("TWILL_LOG_FORMAT", "xml")], None).unwrap_err();
        assert_eq!(e.to_string(), "environment TWILL_LOG_FORMAT: logFormat: \"xml\" is not a log format; use text or json");
        let e = run(&["--listen", "9099"], &[], None).unwrap_err();
        assert!(e.to_string().starts_with("flag --listen: listen:"), "{e}");
        let e = run(&["--nod-name", "x"], &[], None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown flag --nod-name (did you mean --node-name?); see twilld --help"
        );
        let e = run(&["--colour", "x"], &[], None).unwrap_err();
        assert_eq!(e.to_string(), "unknown flag --colour; see twilld --help");
        let e = run(&["--Store=etcd"], &[], None).unwrap_err();
        assert!(e.to_string().contains("did you mean --store?"), "{e}");
        let e = run(&["--node-name"], &[], None).unwrap_err();
        assert!(e.to_string().contains("needs a value"), "{e}");
        let e = run(&["--node-name", "a/b"], &[], None).unwrap_err();
        assert!(
            e.to_string().starts_with("flag --node-name: nodeName:"),
            "{e}"
        );
        let e = run(&["--etcd-cert-file", "/c"], &[], None).unwrap_err();
        assert!(e.to_string().contains("set both or neither"), "{e}");
    }

    #[test]
    fn help_lists_every_setting() {
        let Command::Help(h) = parse(
            &["--help".into()],
            &HashMap::new(),
            |_| Ok(String::new()),
            "h",
        )
        .unwrap() else {
            panic!()
        };
        for f in FIELDS {
            assert!(h.contains(f.flag) && h.contains(f.env) && h.contains(f.yaml));
        }
    }
}
