//! BIRD 2 in a node's namespace, started from a config string, driven with `birdc`.

use std::path::PathBuf;
use std::time::Duration;

use twill_testkit::{try_sh, TempDir};

use super::net::Node;
use super::proc::Daemon;
use super::wait;

pub struct Bird {
    pub dir: TempDir,
    pub ctl: PathBuf,
    pub daemon: Daemon,
}

/// One route as `birdc show route all` prints it.
#[derive(Clone, Debug, Default)]
pub struct BirdRoute {
    pub prefix: String,
    /// The protocol that gave it ("peer_b", "static1").
    pub from: String,
    /// The best (selected, `*`) route of its prefix.
    pub best: bool,
    pub via: Vec<String>,
    /// Attribute lines, e.g. ("BGP.community", "(65010,100)"), ("BGP.as_path", "65002").
    pub attrs: Vec<(String, String)>,
    /// The whole "[peer_b 12:00:00.000] * (100) [AS65002i]" line, for messages.
    pub line: String,
}

impl BirdRoute {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Bird {
    /// Checks `config` (`bird -p`) and starts BIRD on it inside `node`'s namespace. A `log`
    /// line to `bird.log` in its directory is put first; the config holds the rest.
    pub fn start(node: &Node, config: &str) -> Bird {
        let dir = TempDir::new("bird");
        let ctl = dir.path.join("bird.ctl");
        let daemon = Bird::spawn(node, &dir, config, &[]);
        let mut bird = Bird { dir, ctl, daemon };
        bird.wait_ready();
        bird
    }

    /// Starts BIRD again in the same directory (after [`Bird::kill`] or [`Bird::stop`]), on
    /// `config`, with extra command-line flags (`-R`: graceful restart recovery).
    pub fn restart(&mut self, node: &Node, config: &str, args: &[&str]) {
        assert!(!self.daemon.running(), "restart of a running BIRD");
        let _ = std::fs::remove_file(&self.ctl);
        self.daemon = Bird::spawn(node, &self.dir, config, args);
        self.wait_ready();
    }

    fn spawn(node: &Node, dir: &TempDir, config: &str, args: &[&str]) -> Daemon {
        let conf = dir.path.join("bird.conf");
        let log = dir.path.join("bird.log");
        std::fs::write(&conf, format!("log \"{}\" all;\n{config}", log.display())).unwrap();
        let (ok, out, err) = try_sh(&["bird", "-p", "-c", conf.to_str().unwrap()]);
        assert!(ok, "BIRD rejects the test's config: {out}{err}\n{config}");
        let ctl = dir.path.join("bird.ctl");
        let pid = dir.path.join("bird.pid");
        let mut argv = vec!["bird", "-f", "-c", conf.to_str().unwrap()];
        argv.extend(["-s", ctl.to_str().unwrap(), "-P", pid.to_str().unwrap()]);
        argv.extend_from_slice(args);
        Daemon::spawn("bird", node.name(), &argv, &dir.path.join("bird.out"))
    }

    fn wait_ready(&mut self) {
        let d = &mut *self;
        wait::until("BIRD's control socket", Duration::from_secs(10), || {
            d.daemon.assert_running();
            if d.ctl.exists() && d.try_cmd("show status").is_ok() {
                Ok(())
            } else {
                Err("no control socket yet".into())
            }
        });
    }

    /// `birdc -s CTL ARGS…`, its output, or the error.
    pub fn try_cmd(&self, args: &str) -> Result<String, String> {
        let mut argv = vec!["birdc", "-s", self.ctl.to_str().unwrap()];
        argv.extend(args.split_whitespace());
        let (ok, out, err) = try_sh(&argv);
        if ok {
            Ok(out)
        } else {
            Err(format!("birdc {args}: {out}{err}"))
        }
    }

    pub fn cmd(&self, args: &str) -> String {
        self.try_cmd(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The state of protocol `name`: "Established", "Active", "Connect", "Idle", "Passive",
    /// … (the Info column of `show protocols`), or an error with what birdc said.
    pub fn protocol_info(&self, name: &str) -> Result<String, String> {
        let out = self.try_cmd(&format!("show protocols {name}"))?;
        for line in out.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.first() == Some(&name) && f.len() >= 4 {
                return Ok(f.get(5..).map(|r| r.join(" ")).unwrap_or_default());
            }
        }
        Err(format!("no protocol {name} in: {out}"))
    }

    /// Waits for protocol `name` to be Established; returns how long that took.
    pub fn wait_established(&self, name: &str, timeout: Duration) -> Duration {
        let probe = || match self.protocol_info(name) {
            Ok(i) if i.starts_with("Established") => Ok(()),
            Ok(i) => Err(i),
            Err(e) => Err(e),
        };
        match wait::try_until(timeout, probe) {
            Ok(((), took)) => took,
            Err(last) => panic!(
                "timed out after {timeout:?} waiting for BIRD protocol {name} Established; \
                 last seen: {last}; BIRD's log ends:\n{}",
                tail(&self.log_text(), 30)
            ),
        }
    }

    /// `show route all [ARGS]`, parsed.
    pub fn routes(&self, args: &str) -> Vec<BirdRoute> {
        match self.try_cmd(&format!("show route all {args}")) {
            Ok(out) => parse_routes(&out),
            Err(e) if e.contains("Network not found") => Vec::new(),
            Err(e) => panic!("{e}"),
        }
    }

    /// The routes BIRD has for exactly `prefix`.
    pub fn routes_for(&self, prefix: &str) -> Vec<BirdRoute> {
        self.routes(&format!("for {prefix}"))
            .into_iter()
            .filter(|r| r.prefix == prefix)
            .collect()
    }

    /// `show route count` for the whole table ("N of M routes for K networks"): M.
    pub fn route_count(&self, args: &str) -> usize {
        let out = self.cmd(&format!("show route {args} count"));
        out.lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let i = f.iter().position(|w| *w == "routes")?;
                f.get(i.checked_sub(1)?)?.parse().ok()
            })
            .unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("bird.log")).unwrap_or_default()
    }

    /// SIGTERM and wait (BIRD exits at once).
    pub fn stop(&mut self) {
        self.daemon.stop(Duration::from_secs(5));
    }

    /// SIGKILL: a crash, for graceful restart.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Parses `birdc show route all` output.
pub fn parse_routes(out: &str) -> Vec<BirdRoute> {
    let mut routes: Vec<BirdRoute> = Vec::new();
    let mut prefix = String::new();
    for raw in out.lines() {
        if raw.starts_with("BIRD ") || raw.starts_with("Table ") || raw.trim().is_empty() {
            continue;
        }
        let indented = raw.starts_with(' ') || raw.starts_with('\t');
        let line = raw.trim();
        if !indented {
            let (p, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            prefix = p.to_string();
            routes.push(route_line(&prefix, rest.trim()));
        } else if let Some(via) = line.strip_prefix("via ") {
            if let Some(r) = routes.last_mut() {
                r.via
                    .push(via.split_whitespace().next().unwrap_or("").to_string());
            }
        } else if let Some((k, v)) = line.split_once(':').filter(|(k, _)| {
            k.starts_with("BGP.") || !k.is_empty() && !k.contains(char::is_whitespace)
        }) {
            if let Some(r) = routes.last_mut() {
                r.attrs.push((k.trim().to_string(), v.trim().to_string()));
            }
        } else if line.contains('[') {
            routes.push(route_line(&prefix, line));
        }
    }
    routes
}

fn route_line(prefix: &str, rest: &str) -> BirdRoute {
    let from = rest
        .split_once('[')
        .and_then(|(_, r)| r.split_whitespace().next())
        .unwrap_or("")
        .trim_end_matches(']')
        .to_string();
    BirdRoute {
        prefix: prefix.to_string(),
        from,
        best: rest.contains("] * ") || rest.contains("] *("),
        line: rest.to_string(),
        ..Default::default()
    }
}

/// The last `n` lines of `text`, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
