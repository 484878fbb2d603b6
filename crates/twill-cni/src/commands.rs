//! ADD, DEL, CHECK, VERSION, STATUS and GC. Each returns the JSON to print (or nothing) or
//! a `CniError`. A failed ADD undoes what it did, in reverse order, and reports every
//! teardown error alongside the original one.

use crate::names;
use crate::reaper;
use crate::wiring::{self, Expected, Plan, Wiring};
use ipnet::Ipv4Net;
use serde_json::Value;
use std::net::Ipv4Addr;
use twill_api::cni::{
    self, version_at_least, CniEnv, CniError, CniResult, Command, ErrorCode, IpConfig, NetConf,
    PodIdentity, PortMapping, Protocol, Route,
};
use twill_ipam::pool::{Pool, Range, Reservation};
use twill_ipam::records::{AttachmentKey, Record, RecordDir, RecordError};
use twill_netlink::netns::Netns;
use twill_netlink::route::Handle;

/// The `cniVersion` of the config on stdin, for the error reply; the newest if unreadable.
pub fn requested_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|v| cni::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| cni::SPEC_VERSION.to_string())
}

pub fn run(env: &CniEnv, stdin: &[u8]) -> Result<Option<String>, CniError> {
    if env.command == Command::Version {
        let requested = serde_json::from_slice::<Value>(stdin).ok();
        let v = requested
            .as_ref()
            .and_then(|v| v.get("cniVersion"))
            .and_then(Value::as_str);
        return Ok(Some(cni::version_reply(v).to_string()));
    }
    let conf = NetConf::parse(stdin)?;
    let needs = |min: &str, what: &str| {
        if version_at_least(&conf.cni_version, min) {
            Ok(())
        } else {
            Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!(
                    "{what} needs cniVersion {min} or newer; the config says {}",
                    conf.cni_version
                ),
            ))
        }
    };
    match env.command {
        Command::Add => add(env, &conf).map(Some),
        Command::Del => del(env, &conf).map(|()| None),
        Command::Check => {
            needs("0.4.0", "CHECK")?;
            check(env, &conf).map(|()| None)
        }
        Command::Status => {
            needs("1.1.0", "STATUS")?;
            status(&conf).map(|()| None)
        }
        Command::Gc => {
            needs("1.1.0", "GC")?;
            gc(stdin, &conf).map(|()| None)
        }
        Command::Version => unreachable!("handled above"),
    }
}

/// The address pool the config describes; errors name the config field.
fn pool(conf: &NetConf) -> Result<Pool, CniError> {
    let ranges = conf
        .ipam
        .ranges
        .iter()
        .map(|r| {
            Range::new(r.subnet, r.range_start, r.range_end, r.gateway)
                .map_err(|e| CniError::invalid(format!("field \"{}\": {e}", r.path)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let reserved = conf
        .ipam
        .reserved
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<Reservation>()
                .map_err(|e| CniError::invalid(format!("field \"ipam.reserved[{i}]\": {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Pool::new(ranges, reserved).map_err(|e| CniError::invalid(format!("field \"ipam\": {e}")))
}

fn records(conf: &NetConf) -> Result<RecordDir, CniError> {
    RecordDir::open(&conf.ipam.data_dir, &conf.name).map_err(ipam_error)
}

fn ipam_error(e: RecordError) -> CniError {
    let code = match &e {
        RecordError::Exhausted { .. } => ErrorCode::RangeExhausted,
        RecordError::AlreadyAllocated { .. } => ErrorCode::AlreadyAttached,
        _ => ErrorCode::Io,
    };
    CniError::new(code, e.to_string())
}

fn key(env: &CniEnv) -> AttachmentKey {
    AttachmentKey {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

/// What the record keeps besides the address, so DEL and GC undo exactly what ADD did,
/// and the pod's identity, from which twilld publishes its endpoint.
use twill_api::cni::RecordExtra as Extra;

/// A random locally administered unicast MAC for the pod's end of the veth, chosen before
/// the veth exists so the record holds it from the start (twilld publishes the endpoint
/// as soon as the record holds an address, and anti-spoofing matches on it).
fn random_mac() -> Result<[u8; 6], CniError> {
    let mut mac = [0u8; 6];
    // SAFETY: fills the 6-byte buffer we own.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        return Err(
            CniError::new(ErrorCode::Io, "cannot draw a random MAC for the pod")
                .with_details(std::io::Error::last_os_error().to_string()),
        );
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

fn nft_mappings(ip: Ipv4Addr, list: &[PortMapping]) -> Vec<twill_nft::PortMapping> {
    list.iter()
        .map(|m| twill_nft::PortMapping {
            host_ip: m.host_ip,
            host_port: m.host_port,
            container_ip: ip,
            container_port: m.container_port,
            protocol: match m.protocol {
                Protocol::Tcp => twill_nft::Protocol::Tcp,
                Protocol::Udp => twill_nft::Protocol::Udp,
                Protocol::Sctp => twill_nft::Protocol::Sctp,
            },
        })
        .collect()
}

fn nft_error(what: &str, e: twill_nft::Error) -> CniError {
    let code = match e {
        twill_nft::Error::HostPortTaken { .. } => ErrorCode::HostPortTaken,
        // Removed meanwhile: the next ADD reinstalls it.
        twill_nft::Error::TableMissing(_) => ErrorCode::TryAgainLater,
        _ => ErrorCode::Kernel,
    };
    let err = CniError::new(code, format!("{what}: {e}"));
    match e.repair() {
        Some(repair) => err.with_details(repair),
        None => err,
    }
}

/// Removes a recorded pod's anti-spoofing elements, if its wiring has them.
fn unguard(
    t: &mut twill_nft::Table,
    conf: &NetConf,
    extra: &Extra,
    veth: &str,
    ip: Ipv4Addr,
) -> Result<(), String> {
    if !Wiring::new(extra.wiring, conf).guards_in_nft() || veth.is_empty() {
        return Ok(());
    }
    let pod = twill_nft::GuardedPod {
        host_veth: veth,
        mac: extra.mac.as_deref().and_then(wiring::parse_mac),
        ip,
    };
    t.unguard_pod(&pod)
        .map_err(|e| format!("removing the anti-spoofing entries of {veth}: {e}"))
}

/// The node's nftables tables, opened on first use.
fn table(nft: &mut Option<twill_nft::Table>) -> Result<&mut twill_nft::Table, CniError> {
    if nft.is_none() {
        *nft = Some(twill_nft::Table::new().map_err(|e| nft_error("opening nftables", e))?);
    }
    Ok(nft.as_mut().expect("opened above"))
}

fn open_netns(path: &str) -> Result<Netns, CniError> {
    Netns::open(path).map_err(|e| {
        let code = if std::path::Path::new(path).exists() {
            ErrorCode::InvalidEnvironment
        } else {
            ErrorCode::UnknownContainer
        };
        CniError::new(
            code,
            format!("CNI_NETNS {path} is not a usable network namespace"),
        )
        .with_details(e.to_string())
    })
}

/// Everything ADD has changed so far, undone in reverse on failure.
#[derive(Default)]
struct Done {
    record: Option<AttachmentKey>,
    /// Anti-spoofing's elements: host veth, pod MAC, pod address.
    guarded: Option<(String, [u8; 6], Ipv4Addr)>,
    veth: Option<String>,
    nft_pod: Option<(Ipv4Addr, Vec<twill_nft::PortMapping>)>,
}

impl Done {
    fn undo(self, conf: &NetConf, err: CniError) -> CniError {
        let mut problems = Vec::new();
        if let Some((ip, maps)) = self.nft_pod {
            if let Err(e) = twill_nft::Table::new().and_then(|mut t| t.remove_pod(ip, &maps)) {
                problems.push(format!("removing nftables entries of {ip}: {e}"));
            }
        }
        if let Some(veth) = self.veth {
            let removed = match Handle::new() {
                Ok(mut h) => wiring::detach(&mut h, &veth).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = removed {
                problems.push(format!("removing veth {veth}: {e}"));
            }
        }
        if let Some((veth, mac, ip)) = self.guarded {
            let pod = twill_nft::GuardedPod {
                host_veth: &veth,
                mac: Some(mac),
                ip,
            };
            if let Err(e) = twill_nft::Table::new().and_then(|mut t| t.unguard_pod(&pod)) {
                problems.push(format!("removing the anti-spoofing entries of {veth}: {e}"));
            }
        }
        if let Some(key) = self.record {
            if let Err(e) = records(conf).and_then(|r| r.release(&key).map_err(ipam_error)) {
                problems.push(format!("releasing the address: {e}"));
            }
        }
        if problems.is_empty() {
            err
        } else {
            let details = if err.details.is_empty() {
                String::new()
            } else {
                format!("{}; ", err.details)
            };
            err.clone().with_details(format!(
                "{details}and the rollback failed: {}",
                problems.join("; ")
            ))
        }
    }
}

/// The config with the node's blocks filled in from twilld's hand-off file, when the
/// config names no subnet. Read on every ADD: no network round trip, and a restarting
/// agent does not stop pods from starting.
fn resolve(conf: &NetConf) -> Result<NetConf, CniError> {
    let Some(path) = &conf.ipam.handoff_file else {
        return Ok(conf.clone());
    };
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CniError::new(
                ErrorCode::TryAgainLater,
                format!(
                    "{} does not exist yet: twilld writes it once this node holds a block of pod addresses",
                    path.display()
                ),
            )
            .with_details(
                "start twilld (and check its /readyz), or give the node's subnet in ipam.subnet",
            ))
        }
        Err(e) => {
            return Err(CniError::new(ErrorCode::Io, format!("cannot read {}", path.display()))
                .with_details(e.to_string()))
        }
    };
    let handoff: twill_api::resources::HandOff = serde_json::from_slice(&text).map_err(|e| {
        CniError::new(
            ErrorCode::Io,
            format!("{} is not a Twill hand-off file", path.display()),
        )
        .with_details(e.to_string())
    })?;
    if handoff.blocks.is_empty() {
        return Err(CniError::new(
            ErrorCode::TryAgainLater,
            format!(
                "{} lists no blocks yet: twilld is still claiming one",
                path.display()
            ),
        ));
    }
    Ok(conf.clone().with_handoff(&handoff))
}

fn add(env: &CniEnv, conf: &NetConf) -> Result<String, CniError> {
    // Before anything is made: a bad namespace, name or label leaves nothing behind.
    let identity = PodIdentity::from_args(&env.args, &env.container_id, &conf.labels)?;
    let conf = &resolve(conf)?;
    let pool = pool(conf)?;
    let pod_ns = open_netns(&env.netns)?;
    let records = records(conf)?;
    let host_veth = names::host_veth(&env.container_id, &env.ifname);
    let pod_mac = random_mac()?;
    let extra = Extra {
        host_veth: host_veth.clone(),
        port_mappings: conf.port_mappings.clone(),
        masquerade: conf.ip_masq,
        netns: env.netns.clone(),
        wiring: conf.pod_wiring,
        namespace: Some(identity.namespace),
        pod: Some(identity.pod),
        labels: identity.labels,
        named_ports: conf.named_ports.clone(),
        mac: Some(wiring::mac_string(Some(pod_mac))),
    };
    let record = records
        .allocate(
            &pool,
            &key(env),
            serde_json::to_value(&extra).expect("plain struct"),
        )
        .map_err(|e| match (&e, &conf.ipam.handoff_file) {
            // The node's blocks are full, but twilld claims another one when few addresses
            // are left: worth retrying, unlike a fixed subnet that is full.
            (RecordError::Exhausted { .. }, Some(file)) => CniError::new(
                ErrorCode::TryAgainLater,
                format!("every block this node holds is full ({e})"),
            )
            .with_details(format!(
                "twilld claims another block when few addresses are free and rewrites {}; check that it runs and its /readyz",
                file.display()
            )),
            _ => ipam_error(e),
        })?;
    let mut done = Done {
        record: Some(key(env)),
        ..Done::default()
    };
    match add_allocated(
        env,
        conf,
        &pool,
        &pod_ns,
        &record,
        (host_veth, pod_mac),
        &mut done,
    ) {
        Ok(v) => Ok(v),
        Err(e) => Err(done.undo(conf, e)),
    }
}

fn add_allocated(
    env: &CniEnv,
    conf: &NetConf,
    pool: &Pool,
    pod_ns: &Netns,
    record: &Record,
    (host_veth, pod_mac): (String, [u8; 6]),
    done: &mut Done,
) -> Result<String, CniError> {
    let range = pool
        .range_of(record.ip)
        .expect("the pool handed out this address");
    let wiring = Wiring::new(conf.pod_wiring, conf);
    let subnet = range.subnet;
    let gateway = wiring.gateway(range.gateway);
    let routes = wiring.routes(conf, gateway)?;
    let plan = Plan {
        mtu: conf.mtu,
        gateway: range.gateway,
        subnet,
        pod_ip: record.ip,
        ifname: &env.ifname,
        host_veth: host_veth.clone(),
        pod_mac,
        routes: routes.clone(),
        route_localnet: !conf.port_mappings.is_empty(),
    };
    let mut host = Handle::new().map_err(|e| {
        CniError::new(ErrorCode::Kernel, "cannot open a netlink socket").with_details(e.to_string())
    })?;
    let mut nft = None;
    if wiring.guards_in_nft() {
        // Before the veth exists (its elements are keyed by name): the pod's first frame
        // is already checked.
        table(&mut nft)?
            .guard_pod(&twill_nft::GuardedPod {
                host_veth: &host_veth,
                mac: Some(pod_mac),
                ip: record.ip,
            })
            .map_err(|e| nft_error("guarding the pod against spoofing", e))?;
        done.guarded = Some((host_veth.clone(), pod_mac, record.ip));
    }
    done.veth = Some(host_veth);
    let attached = wiring.attach(&mut host, pod_ns, &plan)?;

    if conf.ip_masq || !conf.port_mappings.is_empty() {
        let table = table(&mut nft)?;
        table
            .ensure_network(&twill_nft::NetworkRules {
                network: conf.name.clone(),
                subnets: vec![subnet],
                cluster_cidrs: conf.cluster_cidrs.clone(),
                masquerade: conf.ip_masq,
            })
            .map_err(|e| nft_error("installing Twill's nftables rules", e))?;
        let maps = nft_mappings(record.ip, &conf.port_mappings);
        table
            .add_pod(record.ip, conf.ip_masq, &maps)
            .map_err(|e| nft_error("adding the pod to nftables", e))?;
        done.nft_pod = Some((record.ip, maps));
    }
    crate::policy_wait::wait(conf, &plan.host_veth, record.ip)?;

    let ours = CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: attached.interfaces,
        ips: vec![IpConfig {
            address: format!("{}/{}", record.ip, wiring.prefix_len(subnet)),
            gateway: Some(gateway),
            interface: Some(attached.pod),
            version: None,
        }],
        routes: routes
            .iter()
            .map(|(dst, gw)| Route {
                dst: dst.to_string(),
                gw: Some(*gw),
            })
            .collect(),
        dns: conf.dns.clone(),
    };
    let result = match &conf.prev_result {
        Some(prev) => {
            let mut chained = prev.clone();
            chained.append(ours);
            chained
        }
        None => ours,
    };
    Ok(result.encode(&conf.cni_version))
}

/// "Plugins should generally complete a DEL action without error even if some resources
/// are missing." Every step runs; all failures are reported together.
fn del(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let records = records(conf)?;
    let k = key(env);
    let mut problems = Vec::new();
    let held = match records.get(&k) {
        Ok(r) => r,
        Err(e) => {
            problems.push(format!("reading the address record: {e}"));
            None
        }
    };
    let extra: Extra = held
        .as_ref()
        .and_then(|r| serde_json::from_value(r.extra.clone()).ok())
        .unwrap_or_default();
    let veth = if extra.host_veth.is_empty() {
        names::host_veth(&env.container_id, &env.ifname)
    } else {
        extra.host_veth.clone()
    };
    // Kept open until the reaper has it: see reaper.rs.
    let mut table = None;
    if let Some(r) = &held {
        let maps = nft_mappings(r.ip, &extra.port_mappings);
        match twill_nft::Table::new() {
            Ok(mut t) => {
                if let Err(e) = t.remove_pod(r.ip, &maps) {
                    problems.push(format!("removing the nftables entries of {}: {e}", r.ip));
                }
                if let Err(e) = unguard(&mut t, conf, &extra, &veth, r.ip) {
                    problems.push(e);
                }
                table = Some(t);
            }
            Err(e) => problems.push(format!("opening nftables: {e}")),
        }
    }
    match Handle::new() {
        Ok(mut h) => match wiring::cut_off(&mut h, &veth) {
            Ok(Some(index)) => {
                let keep = table.as_ref().map(std::os::fd::AsFd::as_fd);
                if reaper::spawn(index, keep).is_err() {
                    // No reaper: pay for the deletion here.
                    if let Err(e) = wiring::detach(&mut h, &veth) {
                        problems.push(e.to_string());
                    }
                }
            }
            Ok(None) => {}
            Err(e) => problems.push(e.to_string()),
        },
        Err(e) => problems.push(format!("opening netlink: {e}")),
    }
    if held.is_some() {
        if let Err(e) = records.release(&k) {
            problems.push(format!("releasing the address: {e}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::Kernel,
            format!(
                "DEL of {} / {} was incomplete",
                env.container_id, env.ifname
            ),
        )
        .with_details(problems.join("; ")))
    }
}

fn check(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::invalid("CHECK needs \"prevResult\" (the result of ADD) in the network config")
    })?;
    let records = records(conf)?;
    let record = records.get(&key(env)).map_err(ipam_error)?.ok_or_else(|| {
        CniError::new(
            ErrorCode::UnknownContainer,
            format!(
                "no address is recorded for container {} / {}",
                env.container_id, env.ifname
            ),
        )
    })?;
    let ours = prev
        .ips
        .iter()
        .find(|ip| ip.address.split('/').next() == Some(record.ip.to_string().as_str()))
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::CheckFailed,
                format!(
                    "prevResult does not hold this attachment's address {}",
                    record.ip
                ),
            )
        })?;
    let prefix: u8 = ours
        .address
        .split('/')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(32);
    let routes: Vec<(Ipv4Net, Ipv4Addr)> = prev
        .routes
        .iter()
        .filter_map(|r| Some((r.dst.parse().ok()?, r.gw.or(ours.gateway)?)))
        .collect();
    let pod_ns = open_netns(&env.netns)?;
    let extra: Extra = serde_json::from_value(record.extra.clone()).unwrap_or_default();
    let mut host = Handle::new().map_err(|e| CniError::new(ErrorCode::Kernel, e.to_string()))?;
    let wiring = Wiring::new(extra.wiring, conf);
    if let (true, Some(mac)) = (
        wiring.guards_in_nft(),
        extra.mac.as_deref().and_then(wiring::parse_mac),
    ) {
        let pod = twill_nft::GuardedPod {
            host_veth: &extra.host_veth,
            mac: Some(mac),
            ip: record.ip,
        };
        let guarded = twill_nft::Table::new()
            .and_then(|mut t| t.is_guarded(&pod))
            .map_err(|e| nft_error("reading the pod's anti-spoofing entries", e))?;
        if !guarded {
            return Err(CniError::new(
                ErrorCode::CheckFailed,
                format!(
                    "the pod's anti-spoofing entries are missing from table bridge twill (sets pods, pod_macs, pod_ips for {} / {mac} / {})",
                    extra.host_veth,
                    record.ip,
                    mac = wiring::mac_string(Some(mac)),
                ),
            )
            .with_details("the pod could send with another's address: DEL and ADD it again"));
        }
    }
    wiring.verify(
        &mut host,
        &pod_ns,
        &Expected {
            ifname: &env.ifname,
            host_veth: &extra.host_veth,
            pod_ip: record.ip,
            prefix_len: prefix,
            routes: &routes,
        },
    )
}

/// STATUS: can this plugin serve an ADD now?
fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |m: String| CniError::new(ErrorCode::NotAvailable, m);
    let conf = &resolve(conf).map_err(|e| unavailable(e.to_string()))?;
    let pool = pool(conf)?;
    let records =
        records(conf).map_err(|e| unavailable(format!("the IPAM data dir is not usable: {e}")))?;
    let used = records.used().map_err(|e| unavailable(e.to_string()))?;
    let in_pool = used.iter().filter(|ip| pool.is_allocatable(**ip)).count() as u32;
    if in_pool >= pool.capacity() {
        return Err(unavailable(format!(
            "all {} addresses of network {} are in use; widen ipam.subnet/ranges or remove pods",
            pool.capacity(),
            conf.name
        )));
    }
    // The nft an ADD would run: only searching the same PATH tells the truth.
    if twill_nft::find_nft().is_none() {
        return Err(unavailable(
            "the nft binary is not on PATH: install the nftables package (or give the runtime a PATH that holds nft)".into(),
        ));
    }
    Ok(())
}

/// GC (spec 1.1.0): "The plugin should remove any resources (e.g. IPAM reservations) for
/// attachments not in cni.dev/valid-attachments."
fn gc(stdin: &[u8], conf: &NetConf) -> Result<(), CniError> {
    let raw: Value = serde_json::from_slice(stdin).expect("already parsed once");
    let list = match raw.get("cni.dev/valid-attachments") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(other) => {
            return Err(CniError::invalid(format!(
                "field \"cni.dev/valid-attachments\": expected a list of {{containerID, ifname}}, found {other}"
            )))
        }
    };
    let mut valid = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let get = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        match (get("containerID"), get("ifname")) {
            (Some(container_id), Some(ifname)) => valid.push(AttachmentKey { container_id, ifname }),
            _ => {
                return Err(CniError::invalid(format!(
                    "field \"cni.dev/valid-attachments[{i}]\": needs \"containerID\" and \"ifname\" strings"
                )))
            }
        }
    }
    let records = records(conf)?;
    let removed = records.gc(&valid).map_err(ipam_error)?;
    let mut problems = Vec::new();
    let mut host = Handle::new().ok();
    for r in removed {
        let extra: Extra = serde_json::from_value(r.extra.clone()).unwrap_or_default();
        let maps = nft_mappings(r.ip, &extra.port_mappings);
        match twill_nft::Table::new() {
            Ok(mut t) => {
                if let Err(e) = t.remove_pod(r.ip, &maps) {
                    problems.push(format!("{}: {e}", r.ip));
                }
                if let Err(e) = unguard(&mut t, conf, &extra, &extra.host_veth, r.ip) {
                    problems.push(e);
                }
            }
            Err(e) => problems.push(format!("{}: opening nftables: {e}", r.ip)),
        }
        if let (Some(h), false) = (host.as_mut(), extra.host_veth.is_empty()) {
            if let Err(e) = wiring::detach(h, &extra.host_veth) {
                problems.push(e.to_string());
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(ErrorCode::Kernel, "GC was incomplete").with_details(problems.join("; ")))
    }
}
