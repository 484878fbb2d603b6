//! `twill install-cni`: puts twill-cni and Twill's conflist where a node's container
//! runtime finds them (what flannel's and Calico's install-cni init containers do), and
//! `--uninstall` takes exactly those away. Everything is read and checked before the first
//! write; each file is written atomically (a temporary file in the same folder, fsync,
//! rename, fsync of the folder), the conflist last, so a runtime never sees a conflist
//! whose plugin is missing. The conflist itself is built and checked in
//! `twill_api::cni::conflist`.

use anyhow::{bail, Context};
use clap::Args;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use twill_api::cni::conflist::{self, NodeFacts, CONFLIST_FILE, PLUGIN_TYPE};
use twill_api::resources::{parse_resources, HandOff, NetworkConfig, Resource};

#[derive(Args, Debug)]
pub struct InstallCniArgs {
    /// Where the runtime looks for plugins; twill-cni is copied there.
    #[arg(
        long,
        env = "TWILL_CNI_BIN_DIR",
        default_value = "/opt/cni/bin",
        value_name = "DIR"
    )]
    cni_bin_dir: PathBuf,
    /// Where the runtime reads network configs; 10-twill.conflist is written there.
    #[arg(
        long,
        env = "TWILL_CNI_NET_DIR",
        default_value = "/etc/cni/net.d",
        value_name = "DIR"
    )]
    cni_net_dir: PathBuf,
    /// The twill-cni binary to copy [default: twill-cni next to this twill].
    #[arg(long, env = "TWILL_CNI_BIN", value_name = "FILE")]
    plugin: Option<PathBuf>,
    /// A conflist template with {{PLACEHOLDER}}s (CNI_NETWORK, HANDOFF_FILE, CNI_DATA_DIR,
    /// POD_WIRING, CLUSTER_CIDR, IP_MASQ, MTU) instead of the built-in conflist.
    #[arg(long, env = "TWILL_CNI_TEMPLATE", value_name = "FILE")]
    template: Option<PathBuf>,
    /// A resource file holding the NetworkConfig (as `twill apply -f` takes): its pod
    /// wiring, cluster CIDR and masquerade setting go into the conflist.
    #[arg(long, env = "TWILL_NETWORK_CONFIG_FILE", value_name = "FILE")]
    network_config: Option<PathBuf>,
    /// twilld's hand-off file: named in the conflist, and read if it is there.
    #[arg(long, env = "TWILL_HANDOFF_FILE", default_value = twill_api::resources::DEFAULT_HANDOFF_FILE, value_name = "FILE")]
    handoff_file: PathBuf,
    /// twill-cni's record folder (twilld's cniDataDir).
    #[arg(long, env = "TWILL_CNI_DATA_DIR", default_value = twill_api::cni::netconf::DEFAULT_DATA_DIR, value_name = "DIR")]
    cni_data_dir: PathBuf,
    /// The CNI network name (twilld's cniNetwork).
    #[arg(
        long,
        env = "TWILL_CNI_NETWORK",
        default_value = "twill",
        value_name = "NAME"
    )]
    cni_network: String,
    /// Do not declare the portMappings capability (pods' host ports are then not passed).
    #[arg(long, env = "TWILL_CNI_NO_HOST_PORTS")]
    no_host_ports: bool,
    /// Remove what install wrote: the plugin, the conflist (if it is Twill's) and
    /// temporaries a killed install left.
    #[arg(long)]
    uninstall: bool,
}

pub fn run(args: InstallCniArgs) -> anyhow::Result<i32> {
    let bin_file = args.cni_bin_dir.join(PLUGIN_TYPE);
    let conf_file = args.cni_net_dir.join(CONFLIST_FILE);
    if args.uninstall {
        return uninstall(&bin_file, &conf_file);
    }
    // Everything read and checked: nothing is written before this succeeds.
    let plugin = match &args.plugin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("finding the running twill, to find twill-cni next to it; give --plugin")?
            .with_file_name(PLUGIN_TYPE),
    };
    let plugin_bytes = read_plugin(&plugin)?;
    let config = args
        .network_config
        .as_deref()
        .map(read_network_config)
        .transpose()?;
    let handoff = read_handoff(&args.handoff_file)?;
    let facts = NodeFacts {
        network: args.cni_network.clone(),
        handoff_file: args.handoff_file.clone(),
        data_dir: args.cni_data_dir.clone(),
        host_ports: !args.no_host_ports,
        pod_wiring: None,
        cluster_cidr: None,
        ip_masq: None,
        mtu: None,
    }
    .learn(config.as_ref(), handoff.as_ref());
    let rendered = match &args.template {
        None => conflist::render(&facts),
        Some(t) => {
            let text = fs::read_to_string(t).with_context(|| {
                format!("reading the template {}; nothing was written", t.display())
            })?;
            conflist::render_template(&text, &facts).map_err(|e| {
                anyhow::anyhow!("template {}: {e}; nothing was written", t.display())
            })?
        }
    };
    // The built-in rendering is checked as a template is: one definition of a good conflist.
    conflist::check(&rendered).context("the rendered conflist is refused; nothing was written")?;
    let conf_bytes = conflist::to_bytes(&rendered);
    for (path, bytes, mode) in [
        (&bin_file, &plugin_bytes, 0o755),
        (&conf_file, &conf_bytes, 0o644),
    ] {
        if fs::read(path).is_ok_and(|old| old == *bytes)
            && fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o777 == mode)
        {
            println!("unchanged {}", path.display());
            continue;
        }
        write_atomic(path, bytes, mode)?;
        println!("installed {}", path.display());
    }
    for earlier in sorting_before(&args.cni_net_dir) {
        eprintln!(
            "warning: {} sorts before {CONFLIST_FILE}: a runtime that takes the first config by name (containerd, CRI-O, podman) uses it, not Twill's; remove it or rename it to sort after",
            earlier.display()
        );
    }
    Ok(0)
}

fn read_plugin(path: &Path) -> anyhow::Result<Vec<u8>> {
    let hint =
        "build it (cargo build -p twill-cni, or scripts/build-static.sh) or give --plugin FILE";
    let mut f = fs::File::open(path).with_context(|| {
        format!(
            "cannot open the plugin {}: {hint}; nothing was written",
            path.display()
        )
    })?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .with_context(|| format!("reading the plugin {}; nothing was written", path.display()))?;
    if !bytes.starts_with(b"\x7fELF") {
        bail!(
            "{} is not an executable (no ELF header): {hint}; nothing was written",
            path.display()
        );
    }
    Ok(bytes)
}

fn read_network_config(path: &Path) -> anyhow::Result<NetworkConfig> {
    let text = fs::read_to_string(path).with_context(|| {
        format!(
            "reading the network config {}; nothing was written",
            path.display()
        )
    })?;
    let resources = parse_resources(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}; nothing was written", path.display()))?;
    resources
        .into_iter()
        .find_map(|r| match r {
            Resource::NetworkConfig(c) => Some(c),
            _ => None,
        })
        .with_context(|| {
            format!(
                "{} holds no NetworkConfig (kind: NetworkConfig, as `twill apply -f` takes); nothing was written",
                path.display()
            )
        })
}

/// The hand-off if twilld has written one yet; a file that is there but unreadable is an
/// error (it would break every ADD too).
fn read_handoff(path: &Path) -> anyhow::Result<Option<HandOff>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
            format!(
                "{} is not a Twill hand-off file: give --handoff-file the file twilld writes (its handoffFile); nothing was written",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}; nothing was written", path.display())),
    }
}

/// The temporary file [`write_atomic`] uses for `path`: hidden, with an ending no runtime
/// reads as a config (`.conf`, `.conflist`, `.json`), and a random `suffix`: two installs
/// writing into one folder at once (the init containers of two pods sharing the host's CNI
/// folders, both PID 1 in their own PID namespaces) never share one.
fn temporary(path: &Path, suffix: &str) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.tmp-{suffix}"))
}

/// 16 hex digits from getrandom(2) (no /dev needed: the image is FROM scratch).
fn random_suffix() -> anyhow::Result<String> {
    let mut b = [0u8; 8];
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        return Err(std::io::Error::last_os_error())
            .context("reading random bytes for a temporary file's name (getrandom)");
    }
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Takes the exclusive `flock` of an open temporary without waiting: false if another
/// process holds it. Its writer holds it until the file is renamed or removed, so a
/// temporary nobody holds was left by a writer that died.
fn try_lock(f: &fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating the folder {}", dir.display()))?;
    let tmp = temporary(path, &random_suffix()?);
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // Held until `f` closes, after the rename: see remove_stale_temporaries.
        try_lock(&f)?;
        f.write_all(bytes)?;
        // The mode asked for, whatever the umask.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| {
            format!(
                "writing {}: check that the folder is writable",
                path.display()
            )
        });
    }
    Ok(())
}

/// Config files in `dir` a runtime would read before Twill's (libcni: `.conf`, `.conflist`
/// and `.json`, by name).
fn sorting_before(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "conf" || x == "conflist" || x == "json")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().as_ref() < CONFLIST_FILE)
                && p.is_file()
        })
        .collect();
    out.sort();
    out
}

fn uninstall(bin_file: &Path, conf_file: &Path) -> anyhow::Result<i32> {
    let mut removed = Vec::new();
    match fs::read(conf_file) {
        Ok(bytes) if conflist::is_twill_conflist(&bytes) => {
            remove(conf_file)?;
            removed.push(conf_file.to_path_buf());
        }
        Ok(_) => eprintln!(
            "warning: {} is not Twill's conflist (no twill-cni plugin in it): left in place",
            conf_file.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", conf_file.display())),
    }
    if fs::symlink_metadata(bin_file).is_ok() {
        remove(bin_file)?;
        removed.push(bin_file.to_path_buf());
    }
    for path in [bin_file, conf_file] {
        removed.extend(remove_stale_temporaries(path));
    }
    if removed.is_empty() {
        println!("nothing to remove");
    }
    for p in removed {
        println!("removed {}", p.display());
    }
    Ok(0)
}

fn remove(path: &Path) -> anyhow::Result<()> {
    fs::remove_file(path).with_context(|| format!("removing {}", path.display()))
}

/// Temporaries of `path` left by an install killed before its rename: those whose `flock`
/// nobody holds (a running install holds its file's, whatever PID namespace it runs in).
fn remove_stale_temporaries(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| {
            let tmp = e.path();
            let f = fs::File::open(&tmp).ok()?;
            (try_lock(&f).ok()? && fs::remove_file(&tmp).is_ok()).then_some(tmp)
        })
        .collect()
}
