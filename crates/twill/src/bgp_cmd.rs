//! `twill bgp`: Twill's BGP speaker on its own.
//! - `twill bgp serve --config FILE` runs it (YAML or JSON; see `twill_bgp::config`) until
//!   SIGTERM or SIGINT. Run it in the namespace whose kernel should get the routes, e.g.
//!   `ip netns exec NS twill bgp serve --config bgp.yaml`.
//! - `twill bgp neighbors [-o json]` and `twill bgp rib [-o json]` ask a running speaker
//!   over its control socket (`--socket`, default the config's default
//!   /run/twill/bgp.sock).
//!
//! The renderers are pure; `run` does the I/O.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use twill_bgp::config::{Config, DEFAULT_CONTROL_SOCKET};
use twill_bgp::speaker::control::{self, NeighborsReply, Request, RibReply};

use crate::table;

#[derive(Args)]
pub struct BgpArgs {
    #[command(subcommand)]
    command: BgpCommand,
}

#[derive(Subcommand)]
enum BgpCommand {
    /// Run the speaker: sessions to the configured peers, best routes into this namespace's
    /// kernel (protocol 186, `ip route show proto bgp`), a control socket for `neighbors` and `rib`. Stops on SIGTERM:
    /// with gracefulRestart it leaves its routes in the kernel (and peers keep ours),
    /// without it sends Cease and removes them.
    Serve {
        /// The configuration file (YAML, or JSON when it ends in .json).
        #[arg(long)]
        config: PathBuf,
    },
    /// Each peer: AS, type, session state, for how long, and what is going on.
    Neighbors {
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Every prefix the speaker knows, each path with its next hop, peer and AS path.
    Rib {
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

pub fn run(args: BgpArgs) -> anyhow::Result<i32> {
    match args.command {
        BgpCommand::Serve { config } => {
            let cfg = Config::load(&config)?;
            eprintln!(
                "twill bgp: AS {} router id {}, {} peers, listening on {}, control socket {}",
                cfg.asn,
                cfg.router_id,
                cfg.peers.len(),
                if cfg.listen.disabled {
                    "nothing".to_string()
                } else {
                    std::net::SocketAddr::new(cfg.listen.address, cfg.listen.port).to_string()
                },
                cfg.control_socket.display()
            );
            twill_bgp::speaker::serve(cfg).context("twill bgp serve")?;
            Ok(0)
        }
        BgpCommand::Neighbors { socket, output } => {
            let reply: NeighborsReply = control::query(&socket, Request::Neighbors)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&reply)?),
                Output::Table => print!("{}", render_neighbors(&reply)),
            }
            Ok(0)
        }
        BgpCommand::Rib { socket, output } => {
            let reply: RibReply = control::query(&socket, Request::Rib)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&reply)?),
                Output::Table => print!("{}", render_rib(&reply)),
            }
            Ok(0)
        }
    }
}

/// PEER | AS | TYPE | STATE | SINCE | INFO, then the speaker's counters.
pub fn render_neighbors(r: &NeighborsReply) -> String {
    let rows: Vec<Vec<String>> = r
        .neighbors
        .iter()
        .map(|n| {
            vec![
                n.peer.clone(),
                n.asn.to_string(),
                n.kind.label().to_string(),
                n.state.clone(),
                table::age(n.since_seconds),
                n.info.clone(),
            ]
        })
        .collect();
    let mut out = table::render(&["PEER", "AS", "TYPE", "STATE", "SINCE", "INFO"], &rows);
    let m = &r.md5_counters;
    out += &format!(
        "\nrouter id {}, AS {}. TCP MD5 drops in this namespace: {} bad signature, {} missing, {} unexpected.\n",
        r.router_id, r.asn, m.failure, m.not_found, m.unexpected
    );
    let k = &r.kernel;
    out += &format!(
        "kernel: {} routes installed, {} removed, {} refused{}",
        k.installed,
        k.removed,
        k.refused,
        k.last_error
            .as_deref()
            .map(|e| format!(" (last: {e})"))
            .unwrap_or_default()
    );
    if r.adopted_pending > 0 {
        out += &format!(
            "; {} routes adopted from the last run wait for End-of-RIB",
            r.adopted_pending
        );
    }
    out.push('\n');
    out
}

/// PREFIX | NEXT HOP | PEER | AS PATH | FLAGS, one row per path, best first.
/// Flags: `best`, `multipath`, `stale`.
pub fn render_rib(r: &RibReply) -> String {
    let mut rows = Vec::new();
    for route in &r.routes {
        for (i, p) in route.paths.iter().enumerate() {
            let mut flags = Vec::new();
            if p.best {
                flags.push("best");
            } else if p.multipath {
                flags.push("multipath");
            }
            if p.stale {
                flags.push("stale");
            }
            rows.push(vec![
                if i == 0 {
                    route.prefix.to_string()
                } else {
                    String::new()
                },
                p.next_hop
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                p.peer.clone().unwrap_or_else(|| "local".into()),
                if p.as_path.is_empty() {
                    "-".into()
                } else {
                    p.as_path.clone()
                },
                flags.join(","),
            ]);
        }
    }
    let mut out = table::render(&["PREFIX", "NEXT HOP", "PEER", "AS PATH", "FLAGS"], &rows);
    out += &format!(
        "\n{} prefixes; kernel: {} installed, {} removed, {} refused\n",
        r.routes.len(),
        r.kernel.installed,
        r.kernel.removed,
        r.kernel.refused
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_bgp::speaker::control::{MessageCounts, Neighbor, PeerKind, RibPath, RibRoute};
    use twill_bgp::speaker::kernel::KernelStats;
    use twill_bgp::speaker::tcp::Md5Counters;

    #[test]
    fn neighbors_table() {
        let n = |peer: &str, kind, state: &str, info: &str| Neighbor {
            peer: peer.into(),
            asn: 65001,
            kind,
            state: state.into(),
            since_seconds: 75,
            info: info.into(),
            md5: true,
            failed: None,
            router_id: None,
            prefixes_received: 0,
            received: MessageCounts::default(),
            sent: MessageCounts::default(),
            flaps: 0,
            stale_seconds_left: None,
            end_of_rib: false,
            tag: None,
        };
        let r = NeighborsReply {
            router_id: "192.0.2.2".into(),
            asn: 65002,
            neighbors: vec![
                n(
                    "192.0.2.1",
                    PeerKind::Ebgp,
                    "Established",
                    "3 prefixes received",
                ),
                n(
                    "192.0.2.3:1790",
                    PeerKind::IbgpRrClient,
                    "Active",
                    "connect failed",
                ),
            ],
            md5_counters: Md5Counters {
                not_found: 1,
                unexpected: 0,
                failure: 4,
            },
            kernel: KernelStats {
                installed: 3,
                ..Default::default()
            },
            adopted_pending: 2,
        };
        assert_eq!(
            render_neighbors(&r),
            "PEER             AS      TYPE             STATE         SINCE   INFO\n\
             192.0.2.1        65001   eBGP             Established   75s     3 prefixes received\n\
             192.0.2.3:1790   65001   iBGP rr-client   Active        75s     connect failed\n\
             \n\
             router id 192.0.2.2, AS 65002. TCP MD5 drops in this namespace: 4 bad signature, 1 missing, 0 unexpected.\n\
             kernel: 3 routes installed, 0 removed, 0 refused; 2 routes adopted from the last run wait for End-of-RIB\n"
        );
    }

    #[test]
    fn rib_table() {
        let p = |peer: Option<&str>, best, stale| RibPath {
            peer: peer.map(str::to_owned),
            next_hop: peer.map(|_| "192.0.2.1".parse().unwrap()),
            as_path: if peer.is_some() {
                "65001".into()
            } else {
                String::new()
            },
            origin: "igp".into(),
            local_pref: None,
            med: None,
            communities: vec![],
            large_communities: vec![],
            best,
            multipath: false,
            stale,
        };
        let r = RibReply {
            routes: vec![
                RibRoute {
                    prefix: "10.244.1.0/24".parse().unwrap(),
                    paths: vec![
                        p(Some("192.0.2.1"), true, true),
                        p(Some("192.0.2.3"), false, false),
                    ],
                },
                RibRoute {
                    prefix: "10.244.2.0/24".parse().unwrap(),
                    paths: vec![p(None, true, false)],
                },
            ],
            kernel: KernelStats::default(),
        };
        assert_eq!(
            render_rib(&r),
            "PREFIX          NEXT HOP    PEER        AS PATH   FLAGS\n\
             10.244.1.0/24   192.0.2.1   192.0.2.1   65001     best,stale\n\
             \x20               192.0.2.1   192.0.2.3   65001\n\
             10.244.2.0/24   -           local       -         best\n\
             \n\
             2 prefixes; kernel: 0 installed, 0 removed, 0 refused\n"
        );
    }
}
