//! The datapath process's whole `main`: `twill-datapath ARGS…` (the crate's bin) and
//! `twilld datapath ARGS…` (twilld's hidden subcommand) both call [`run`].
//!
//! ```text
//! --ctl PATH          the control socket (SOCK_SEQPACKET, root only)
//! --tun NAME          the TUN device to create or re-attach (twilld: twl.tun)
//! --port PORT         the UDP port (flannel's 8285)
//! [--bind IP]         the address the sockets bind to (default 0.0.0.0)
//! [--queues N]        workers, one TUN queue + one reuseport socket each (default min(cores, 4))
//! [--plain]         no vnet header, no offloads: one packet per read and write (for
//!                     comparing with the offload path; twilld never passes it)
//! [--inherit-fds L]   take over a previous datapath's fds instead of opening new ones: a
//!                     comma-separated list, the TUN queues then the receive sockets, in the
//!                     order HelloAck handed them out (2 × N fds; N is --queues or half of L)
//! ```
//! It creates (or re-attaches to) the persistent multi-queue TUN, binds the UDP sockets,
//! serves the control socket, and forwards nothing before the first Table. It does not set
//! the TUN's address, MTU, link state or routes (twilld's reconcile does). A client that goes
//! away never stops it; `Shutdown` does (exit 0). Usage errors: one line naming the flag and
//! the fix, exit 2. Set-up failures: one line, exit 1.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::published::Published;
use crate::server::Server;
use crate::stats::Ledger;
use crate::tun::{QueueMode, TunQueue};
use crate::worker::{Shared, Waker, WorkerIo};

/// The parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args {
    pub ctl: PathBuf,
    pub tun: String,
    pub port: u16,
    pub bind: Ipv4Addr,
    pub queues: usize,
    pub inherit: Vec<RawFd>,
    /// `--plain`: no IFF_VNET_HDR, no TUNSETOFFLOAD, no UDP_GRO.
    pub plain: bool,
}

const USAGE: &str = "usage: twill-datapath --ctl PATH --tun NAME --port PORT [--bind IP] \
                     [--queues N] [--plain] [--inherit-fds FD,FD,...]";

/// The most workers (TUN allows 256 queues; more than 64 threads would only contend).
pub const MAX_QUEUES: usize = 64;

/// Parses the arguments (without the program name). The error is one line.
pub fn parse(args: &[String]) -> Result<Args, String> {
    let mut ctl = None;
    let mut tun = None;
    let mut port = None;
    let mut bind = Ipv4Addr::UNSPECIFIED;
    let mut queues = None;
    let mut inherit = Vec::new();
    let mut plain = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |what: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value ({what}); {USAGE}"))
        };
        match flag.as_str() {
            "--ctl" => ctl = Some(PathBuf::from(value("a socket path")?)),
            "--tun" => {
                let v = value("a device name, e.g. twl.tun")?;
                crate::tun::check_name(&v).map_err(|e| format!("--tun: {e}"))?;
                tun = Some(v);
            }
            "--port" => {
                let v = value("a UDP port, e.g. 8285")?;
                port = Some(v.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    format!("--port: {v:?} is not a port (1-65535), e.g. --port 8285")
                })?);
            }
            "--bind" => {
                let v = value("an IPv4 address of this node")?;
                bind = v.parse().map_err(|_| {
                    format!("--bind: {v:?} is not an IPv4 address, e.g. --bind 192.0.2.1")
                })?;
            }
            "--queues" => {
                let v = value("a number of workers")?;
                queues = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_QUEUES).contains(n))
                        .ok_or_else(|| {
                            format!("--queues: {v:?} is not a number from 1 to {MAX_QUEUES}")
                        })?,
                );
            }
            "--inherit-fds" => {
                let v = value("a comma-separated list of fds")?;
                for f in v.split(',') {
                    let fd = f
                        .parse::<RawFd>()
                        .ok()
                        .filter(|fd| *fd > 2)
                        .ok_or_else(|| {
                            format!(
                                "--inherit-fds: {f:?} is not an fd number above 2 (give the fds \
                             from HelloAck as this process inherited them, e.g. 3,4)"
                            )
                        })?;
                    inherit.push(fd);
                }
            }
            "--plain" => plain = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    let ctl = ctl.ok_or_else(|| format!("--ctl PATH is missing; {USAGE}"))?;
    let tun = tun.ok_or_else(|| format!("--tun NAME is missing (twilld uses twl.tun); {USAGE}"))?;
    let port =
        port.ok_or_else(|| format!("--port PORT is missing (flannel's is 8285); {USAGE}"))?;
    let queues = match (queues, inherit.len()) {
        (q, 0) => q.unwrap_or_else(default_queues),
        (None, n) if n % 2 == 0 && n / 2 <= MAX_QUEUES => n / 2,
        (Some(q), n) if n == 2 * q => q,
        (q, n) => {
            return Err(format!(
                "--inherit-fds: {n} fds, but {} queues need {} (the TUN queues, then as many \
                 receive sockets)",
                q.map_or("an even number of".to_owned(), |q| q.to_string()),
                q.map_or("2 per queue".to_owned(), |q| (2 * q).to_string())
            ))
        }
    };
    Ok(Args {
        ctl,
        tun,
        port,
        bind,
        queues,
        inherit,
        plain,
    })
}

/// min(cores, 4).
pub fn default_queues() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
}

/// The whole process: see the module docs.
pub fn run(args: &[String]) -> ExitCode {
    let args = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("twill-datapath: {e}");
            return ExitCode::from(2);
        }
    };
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twill-datapath: {e}");
            ExitCode::from(1)
        }
    }
}

fn serve(args: &Args) -> Result<(), String> {
    let n = args.queues;
    let mode = QueueMode {
        vnet_hdr: !args.plain,
    };
    // The fds: inherited (checked to be ours) or fresh.
    let (queues, rxs): (Vec<TunQueue>, Vec<OwnedFd>) = if args.inherit.is_empty() {
        let mut qs = Vec::with_capacity(n);
        for _ in 0..n {
            qs.push(TunQueue::attach(&args.tun, mode).map_err(|e| e.to_string())?);
        }
        let mut rs = Vec::with_capacity(n);
        for _ in 0..n {
            rs.push(
                crate::udp::bind_rx(args.bind, args.port)
                    .map_err(|e| format!("--port {}: {e}", args.port))?,
            );
        }
        (qs, rs)
    } else {
        // SAFETY: the caller handed these fds to this process (--inherit-fds); each is taken
        // once (parse does not dedupe, so check here).
        let mut seen = args.inherit.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != args.inherit.len() {
            return Err("--inherit-fds: an fd is listed twice".into());
        }
        let owned: Vec<OwnedFd> = args
            .inherit
            .iter()
            .map(|&fd| {
                // SAFETY: F_GETFD only asks whether fd is open.
                if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                    Err(format!("--inherit-fds: fd {fd} is not open in this process (was it inherited without CLOEXEC cleared?)"))
                } else {
                    // SAFETY: an open fd handed to this process, taken once.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                }
            })
            .collect::<Result<_, _>>()?;
        let mut it = owned.into_iter();
        let mut qs = Vec::with_capacity(n);
        for fd in it.by_ref().take(n) {
            qs.push(TunQueue::adopt(fd, &args.tun).map_err(|e| format!("--inherit-fds: {e}"))?);
        }
        let mut rs = Vec::with_capacity(n);
        for fd in it {
            rs.push(
                crate::udp::adopt_rx(fd, args.port).map_err(|e| format!("--inherit-fds: {e}"))?,
            );
        }
        (qs, rs)
    };
    queues[0].set_persist(true).map_err(|e| e.to_string())?;
    // Offloads: TSO and USO (6.2+), else TSO only; the device keeps them, every fd must agree
    // on the vnet header (an inherited fd says which it has).
    let vnet = queues[0].mode().vnet_hdr;
    if queues.iter().any(|q| q.mode().vnet_hdr != vnet) {
        return Err("--inherit-fds: the TUN queues disagree on IFF_VNET_HDR".into());
    }
    let mut uso = false;
    if vnet {
        use crate::tun::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6};
        let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        uso = queues[0].set_offload(tso | TUN_F_USO4 | TUN_F_USO6).is_ok();
        if !uso {
            queues[0].set_offload(tso).map_err(|e| e.to_string())?;
        }
        for r in &rxs {
            crate::udp::enable_gro(r.as_raw_fd()).map_err(|e| format!("UDP_GRO: {e}"))?;
        }
    }
    let mut txs = Vec::with_capacity(n);
    for _ in 0..n {
        txs.push(crate::udp::bind_tx(args.bind).map_err(|e| format!("--bind {}: {e}", args.bind))?);
    }
    let listener = crate::server::listen(&args.ctl).map_err(|e| {
        format!(
            "--ctl {}: {e}; remove the file if no datapath runs, or pick another path",
            args.ctl.display()
        )
    })?;

    let shared = Arc::new(Shared {
        table: Arc::new(Published::new(None)),
        ledger: Arc::new(Ledger::new(n)),
        stop: AtomicBool::new(false),
    });
    let queues: Vec<Arc<TunQueue>> = queues.into_iter().map(Arc::new).collect();
    let rxs: Vec<Arc<OwnedFd>> = rxs.into_iter().map(Arc::new).collect();
    let mut fds: Vec<RawFd> = queues.iter().map(|q| q.as_raw_fd()).collect();
    fds.extend(rxs.iter().map(|r| r.as_raw_fd()));
    let all_queues: Arc<[Arc<TunQueue>]> = queues.iter().cloned().collect();
    let mut wakers = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    for (i, ((q, rx), tx)) in queues.iter().zip(&rxs).zip(txs).enumerate() {
        let waker = Arc::new(Waker::new().map_err(|e| format!("eventfd: {e}"))?);
        wakers.push(waker.clone());
        let io = WorkerIo {
            tun: q.clone(),
            queues: all_queues.clone(),
            uso,
            rx: rx.clone(),
            tx,
            waker,
        };
        let sh = shared.clone();
        let h = std::thread::Builder::new()
            .name(format!("twdp-worker{i}"))
            .spawn(move || {
                if let Err(e) = crate::worker::run(i, io, sh) {
                    // The device deleted under us (EBADFD) or the like: nothing to forward.
                    eprintln!("twill-datapath: worker {i} stopped: {e}");
                }
            })
            .map_err(|e| format!("cannot start a worker thread: {e}"))?;
        handles.push(h);
    }
    let server = Arc::new(
        Server::new(shared.clone(), args.tun.clone(), fds, n as u16, wakers)
            .map_err(|e| format!("eventfd: {e}"))?,
    );
    let remove_device = server
        .serve(&listener)
        .map_err(|e| format!("control socket {}: {e}", args.ctl.display()))?;
    for h in handles {
        let _ = h.join();
    }
    if remove_device {
        queues[0].set_persist(false).map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_file(&args.ctl);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args, String> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn the_command_line() {
        let a =
            p("--ctl /run/x.sock --tun twl.tun --port 8285 --bind 192.0.2.1 --queues 2").unwrap();
        assert_eq!(
            a,
            Args {
                ctl: "/run/x.sock".into(),
                tun: "twl.tun".into(),
                port: 8285,
                bind: "192.0.2.1".parse().unwrap(),
                queues: 2,
                inherit: vec![],
                plain: false,
            }
        );
        let a = p("--ctl s --tun t --port 1 --inherit-fds 3,4,5,6").unwrap();
        assert_eq!((a.queues, a.inherit), (2, vec![3, 4, 5, 6]));
        assert_eq!(
            p("--ctl s --tun t --port 1").unwrap().queues,
            default_queues()
        );
    }

    #[test]
    fn each_mistake_names_its_flag() {
        for (args, says) in [
            ("--tun t --port 1", "--ctl PATH is missing"),
            ("--ctl s --port 1", "--tun NAME is missing"),
            ("--ctl s --tun t", "--port PORT is missing"),
            ("--ctl s --tun t --port 0", "--port: \"0\" is not a port"),
            ("--ctl s --tun t --port x", "--port: \"x\" is not a port"),
            (
                "--ctl s --tun t --port 1 --bind ::1",
                "--bind: \"::1\" is not an IPv4",
            ),
            ("--ctl s --tun t --port 1 --queues 0", "--queues: \"0\""),
            ("--ctl s --tun a/b --port 1", "--tun: TUN device name"),
            (
                "--ctl s --tun t --port 1 --inherit-fds 3,4,5",
                "--inherit-fds: 3 fds",
            ),
            (
                "--ctl s --tun t --port 1 --queues 1 --inherit-fds 3,4,5,6",
                "--inherit-fds: 4 fds, but 1 queues",
            ),
            (
                "--ctl s --tun t --port 1 --inherit-fds 1,4",
                "--inherit-fds: \"1\"",
            ),
            (
                "--ctl s --tun t --port 1 --frob",
                "unknown argument \"--frob\"",
            ),
            ("--ctl", "--ctl needs a value"),
        ] {
            let e = p(args).unwrap_err();
            assert!(e.contains(says), "{args}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
