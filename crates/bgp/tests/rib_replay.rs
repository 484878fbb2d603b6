//! RIB replay tests: each file in `tests/rib_replay/*.txt` is a recorded sequence of RIB
//! inputs, each followed by exactly the FIB changes and out-updates it must produce. The
//! format is in `tests/rib_replay/README.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use twill_bgp::packet::{
    Afi, AsSegment, AsSegmentKind, Attrs, Community, Family, GracefulRestartFamily, LargeCommunity,
    MpReach, MpUnreach, Origin, Update,
};
use twill_bgp::policy::{Action, Match, Policy, PrefixMatch, Term, Verdict};
use twill_bgp::rib::{
    PeerConfig, PeerGracefulRestart, PeerId, PeerSession, Rib, RibChanges, RibConfig,
};

/// A fixture problem, with its file and line.
fn bad(file: &str, line: usize, what: impl std::fmt::Display) -> ! {
    panic!("{file}:{line}: {what}")
}

fn family(s: &str) -> Option<Family> {
    match s {
        "ipv4" => Some(Family::IPV4_UNICAST),
        "ipv6" => Some(Family::IPV6_UNICAST),
        _ => None,
    }
}

/// `ipv4` or `ipv4/f` (with the Forwarding State bit).
fn gr_family(s: &str) -> Option<GracefulRestartFamily> {
    let (name, f) = match s.strip_suffix("/f") {
        Some(n) => (n, true),
        None => (s, false),
    };
    Some(GracefulRestartFamily {
        family: family(name)?,
        forwarding_preserved: f,
    })
}

fn family_name(f: Family) -> &'static str {
    match f.afi {
        Afi::Ipv4 => "ipv4",
        Afi::Ipv6 => "ipv6",
        Afi::Other(_) => "other",
    }
}

fn community(s: &str) -> Option<Community> {
    let (a, b) = s.split_once(':')?;
    Some(Community(
        (a.parse::<u32>().ok()? << 16) | b.parse::<u16>().ok()? as u32,
    ))
}

fn large(s: &str) -> Option<LargeCommunity> {
    let mut it = s.split(':').map(|x| x.parse::<u32>().ok());
    let (global, local1, local2) = (it.next()??, it.next()??, it.next()??);
    Some(LargeCommunity {
        global,
        local1,
        local2,
    })
}

fn list<T>(s: &str, f: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    s.split(',').map(f).collect()
}

const ATTR_WORDS: &[&str] = &[
    "path",
    "set",
    "nh",
    "origin",
    "med",
    "lp",
    "comm",
    "large",
    "originator",
    "cluster-list",
];

/// Parse attribute words (`path 65001 65010 nh 192.0.2.11 med 5 ...`).
fn parse_attrs(words: &[&str]) -> Result<Attrs, String> {
    let mut a = Attrs::local(Origin::Igp);
    let mut i = 0;
    let args = |i: usize| -> Vec<&str> {
        words[i + 1..]
            .iter()
            .take_while(|w| !ATTR_WORDS.contains(w))
            .copied()
            .collect()
    };
    while i < words.len() {
        let key = words[i];
        let vals = args(i);
        let one = || vals.first().copied().ok_or(format!("{key} needs a value"));
        match key {
            "path" | "set" => {
                let asns: Vec<u32> = vals
                    .iter()
                    .filter(|v| **v != "-")
                    .map(|v| v.parse().map_err(|_| format!("AS {v}")))
                    .collect::<Result<_, _>>()?;
                if !asns.is_empty() {
                    a.as_path.segments.push(AsSegment {
                        kind: if key == "path" {
                            AsSegmentKind::Sequence
                        } else {
                            AsSegmentKind::Set
                        },
                        asns,
                    });
                }
            }
            "nh" => {
                for v in &vals {
                    match v.parse::<IpAddr>().map_err(|_| format!("next hop {v}"))? {
                        IpAddr::V4(x) if a.next_hop.is_none() && a.mp_next_hop.is_empty() => {
                            a.next_hop = Some(x)
                        }
                        other => a.mp_next_hop.push(other),
                    }
                }
            }
            "origin" => {
                a.origin = match one()? {
                    "igp" => Origin::Igp,
                    "egp" => Origin::Egp,
                    "incomplete" => Origin::Incomplete,
                    o => return Err(format!("origin {o}")),
                }
            }
            "med" => a.med = Some(one()?.parse().map_err(|_| "med".to_string())?),
            "lp" => a.local_pref = Some(one()?.parse().map_err(|_| "lp".to_string())?),
            "comm" => a.communities = list(one()?, community).ok_or("comm a:b,c:d")?,
            "large" => a.large_communities = list(one()?, large).ok_or("large a:b:c,...")?,
            "originator" => {
                a.originator_id = Some(one()?.parse().map_err(|_| "originator".to_string())?)
            }
            "cluster-list" => {
                a.cluster_list = list(one()?, |s| s.parse().ok()).ok_or("cluster-list a,b")?
            }
            w => return Err(format!("unknown attribute word {w:?}")),
        }
        i += 1 + vals.len();
    }
    Ok(a)
}

/// The canonical text of attributes: what `expect out` lines say.
fn render_attrs(a: &Attrs) -> String {
    let mut s = String::new();
    if a.as_path.segments.is_empty() {
        s.push_str("path -");
    }
    for (i, seg) in a.as_path.segments.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(match seg.kind {
            AsSegmentKind::Sequence => "path",
            AsSegmentKind::Set => "set",
        });
        for asn in &seg.asns {
            write!(s, " {asn}").unwrap();
        }
    }
    s.push_str(" nh");
    if let Some(nh) = a.next_hop {
        write!(s, " {nh}").unwrap();
    }
    for nh in &a.mp_next_hop {
        write!(s, " {nh}").unwrap();
    }
    if a.origin != Origin::Igp {
        let o = if a.origin == Origin::Egp {
            "egp"
        } else {
            "incomplete"
        };
        write!(s, " origin {o}").unwrap();
    }
    if let Some(m) = a.med {
        write!(s, " med {m}").unwrap();
    }
    if let Some(l) = a.local_pref {
        write!(s, " lp {l}").unwrap();
    }
    let join = |v: Vec<String>| v.join(",");
    if !a.communities.is_empty() {
        let v = a
            .communities
            .iter()
            .map(|c| format!("{}:{}", c.0 >> 16, c.0 & 0xFFFF))
            .collect();
        write!(s, " comm {}", join(v)).unwrap();
    }
    if !a.large_communities.is_empty() {
        let v = a
            .large_communities
            .iter()
            .map(|c| format!("{}:{}:{}", c.global, c.local1, c.local2))
            .collect();
        write!(s, " large {}", join(v)).unwrap();
    }
    if let Some(o) = a.originator_id {
        write!(s, " originator {o}").unwrap();
    }
    if !a.cluster_list.is_empty() {
        let v = a.cluster_list.iter().map(|c| c.to_string()).collect();
        write!(s, " cluster-list {}", join(v)).unwrap();
    }
    s
}

/// The canonical lines of a change set, sorted.
fn render(c: &RibChanges) -> Vec<String> {
    let mut v = Vec::new();
    for f in &c.fib {
        if f.next_hops.is_empty() {
            v.push(format!("fib {} remove", f.prefix));
        } else {
            let nhs: Vec<String> = f.next_hops.iter().map(|n| n.to_string()).collect();
            v.push(format!("fib {} via {}", f.prefix, nhs.join(" ")));
        }
    }
    for (peer, u) in &c.out {
        if !u.withdraw.is_empty() {
            let ps: Vec<String> = u.withdraw.iter().map(|p| p.to_string()).collect();
            v.push(format!("out {} withdraw {}", peer.0, ps.join(" ")));
        }
        for (attrs, ps) in &u.announce {
            let ps: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
            v.push(format!(
                "out {} announce {} : {}",
                peer.0,
                ps.join(" "),
                render_attrs(attrs)
            ));
        }
        for f in &u.end_of_rib {
            v.push(format!("out {} eor {}", peer.0, family_name(*f)));
        }
    }
    v.sort();
    v
}

fn normalise(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn parse_policy_term(words: &[&str]) -> Result<Term, String> {
    let verdict = match words.first() {
        Some(&"accept") => Verdict::Accept,
        Some(&"reject") => Verdict::Reject,
        _ => return Err("a term starts with accept or reject".into()),
    };
    let mut term = Term {
        matches: Vec::new(),
        actions: Vec::new(),
        verdict,
    };
    let mut i = 1;
    let val = |i: usize| {
        words
            .get(i + 1)
            .copied()
            .ok_or(format!("{} needs a value", words[i]))
    };
    while i < words.len() {
        match words[i] {
            "prefix" => {
                let p: IpNet = val(i)?.parse().map_err(|_| "prefix")?;
                let (mut ge, mut le) = (None, None);
                i += 2;
                while let Some(&w) = words.get(i) {
                    match w {
                        "ge" => ge = Some(val(i)?.parse().map_err(|_| "ge")?),
                        "le" => le = Some(val(i)?.parse().map_err(|_| "le")?),
                        _ => break,
                    }
                    i += 2;
                }
                let e = PrefixMatch::new(p, ge, le).map_err(|e| e.to_string())?;
                term.matches.push(Match::Prefix(vec![e]));
                continue;
            }
            "community" => term.matches.push(Match::Community(
                list(val(i)?, community).ok_or("community a:b")?,
            )),
            "large" => term.matches.push(Match::LargeCommunity(
                list(val(i)?, large).ok_or("large a:b:c")?,
            )),
            "set-lp" => term
                .actions
                .push(Action::SetLocalPref(val(i)?.parse().map_err(|_| "set-lp")?)),
            "set-med" => term
                .actions
                .push(Action::SetMed(val(i)?.parse().map_err(|_| "set-med")?)),
            "add-comm" => term.actions.push(Action::AddCommunity(
                community(val(i)?).ok_or("add-comm a:b")?,
            )),
            "del-comm" => term.actions.push(Action::RemoveCommunity(
                community(val(i)?).ok_or("del-comm a:b")?,
            )),
            "add-large" => term.actions.push(Action::AddLargeCommunity(
                large(val(i)?).ok_or("add-large a:b:c")?,
            )),
            "del-large" => term.actions.push(Action::RemoveLargeCommunity(
                large(val(i)?).ok_or("del-large a:b:c")?,
            )),
            "nhs" => {
                term.actions.push(Action::NextHopSelf);
                i += 1;
                continue;
            }
            w => return Err(format!("unknown term word {w:?}")),
        }
        i += 2;
    }
    Ok(term)
}

fn prefixes(words: &[&str]) -> Result<Vec<IpNet>, String> {
    words
        .iter()
        .map(|w| w.parse().map_err(|_| format!("prefix {w}")))
        .collect()
}

/// An UPDATE announcing `nets` with `attrs`: IPv4 in the body, IPv6 in MP_REACH (with the
/// attributes' MP next hops, as a decoder hands them over).
fn announce_update(mut attrs: Attrs, nets: &[IpNet]) -> Update {
    let mp_nh = std::mem::take(&mut attrs.mp_next_hop);
    let v4 = nets
        .iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(*n),
            _ => None,
        })
        .collect();
    let v6: Vec<IpNet> = nets
        .iter()
        .filter(|n| n.addr().is_ipv6())
        .copied()
        .collect();
    Update {
        attrs: Some(attrs),
        nlri: v4,
        mp_reach: (!v6.is_empty()).then_some(MpReach {
            family: Family::IPV6_UNICAST,
            next_hops: mp_nh,
            nlri: v6,
        }),
        ..Update::default()
    }
}

fn withdraw_update(nets: &[IpNet]) -> Update {
    let v6: Vec<IpNet> = nets
        .iter()
        .filter(|n| n.addr().is_ipv6())
        .copied()
        .collect();
    Update {
        withdrawn: nets
            .iter()
            .filter_map(|n| match n {
                IpNet::V4(n) => Some(*n),
                _ => None,
            })
            .collect(),
        mp_unreach: (!v6.is_empty()).then_some(MpUnreach {
            family: Family::IPV6_UNICAST,
            withdrawn: v6,
        }),
        ..Update::default()
    }
}

fn split_colon<'a>(words: &'a [&'a str]) -> (&'a [&'a str], &'a [&'a str]) {
    match words.iter().position(|w| *w == ":") {
        Some(i) => (&words[..i], &words[i + 1..]),
        None => (words, &[]),
    }
}

fn peer_id(s: &str) -> Result<PeerId, String> {
    s.parse()
        .map(PeerId)
        .map_err(|_| format!("peer number {s}"))
}

struct Replay {
    file: String,
    rib: Option<Rib>,
    policies: BTreeMap<String, Policy>,
    /// The policy being defined (`policy NAME` ... `end`).
    defining: Option<(String, Policy)>,
    /// The last input's changes not yet matched by `expect` lines, and its line.
    pending: Option<(usize, Vec<String>)>,
    steps: usize,
}

impl Replay {
    fn rib(&mut self, line: usize) -> &mut Rib {
        let file = self.file.clone();
        self.rib
            .as_mut()
            .unwrap_or_else(|| bad(&file, line, "`config` must come first"))
    }

    fn finish_pending(&mut self) {
        if let Some((line, rest)) = self.pending.take() {
            if !rest.is_empty() {
                bad(
                    &self.file,
                    line,
                    format!(
                        "this input produced changes no `expect` line names:\n  {}",
                        rest.join("\n  ")
                    ),
                );
            }
        }
    }

    fn run_line(&mut self, n: usize, raw: &str) -> Result<(), String> {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            return Ok(());
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some((name, policy)) = &mut self.defining {
            match words[0] {
                "term" => policy.terms.push(parse_policy_term(&words[1..])?),
                "end" => {
                    let (name, policy) = (name.clone(), std::mem::take(policy));
                    self.policies.insert(name, policy);
                    self.defining = None;
                }
                w => return Err(format!("in a policy only `term` and `end`, not {w:?}")),
            }
            return Ok(());
        }
        if words[0] == "expect" {
            let Some((_, rest)) = self.pending.as_mut() else {
                return Err("`expect` with no input before it".into());
            };
            let want = normalise(&words[1..].join(" "));
            if want == "nothing" {
                if !rest.is_empty() {
                    return Err(format!("expected nothing, got:\n  {}", rest.join("\n  ")));
                }
                return Ok(());
            }
            match rest.iter().position(|g| *g == want) {
                Some(i) => {
                    rest.remove(i);
                    Ok(())
                }
                None => Err(format!(
                    "expected `{want}`, the input's remaining changes are:\n  {}",
                    if rest.is_empty() {
                        "(none)".to_string()
                    } else {
                        rest.join("\n  ")
                    }
                )),
            }?;
            return Ok(());
        }
        self.finish_pending();
        let changes: Option<RibChanges> = match words[0] {
            "config" => {
                let (mut asn, mut id, mut cluster, mut max_paths) = (None, None, None, 1);
                for kv in words[1..].chunks(2) {
                    let v = kv.get(1).ok_or("config words come in pairs")?;
                    match kv[0] {
                        "as" => asn = v.parse().ok(),
                        "id" => id = v.parse().ok(),
                        "cluster" => cluster = v.parse().ok(),
                        "max-paths" => max_paths = v.parse().map_err(|_| "max-paths")?,
                        w => return Err(format!("unknown config word {w:?}")),
                    }
                }
                let mut cfg = RibConfig::new(
                    asn.ok_or("config needs `as N`")?,
                    id.ok_or("config needs `id A.B.C.D`")?,
                );
                cfg.cluster_id = cluster;
                cfg.max_paths = max_paths;
                self.rib = Some(Rib::new(cfg));
                None
            }
            "policy" => {
                let name = words.get(1).ok_or("policy NAME")?;
                self.defining = Some((name.to_string(), Policy::default()));
                None
            }
            "peer" => {
                let id = peer_id(words.get(1).ok_or("peer N ...")?)?;
                let mut asn = None;
                let mut addr = None;
                let (mut client, mut nhs) = (false, false);
                let (mut import, mut export) = (None, None);
                let mut i = 2;
                while i < words.len() {
                    let v = words.get(i + 1).copied();
                    let pol = |v: Option<&str>| -> Result<Policy, String> {
                        match v {
                            Some("accept") => Ok(Policy::accept_all()),
                            Some(name) => self
                                .policies
                                .get(name)
                                .cloned()
                                .ok_or(format!("no policy {name:?} defined")),
                            None => Err("import/export needs accept or a policy name".into()),
                        }
                    };
                    match words[i] {
                        "as" => asn = v.and_then(|v| v.parse().ok()),
                        "addr" => addr = v.and_then(|v| v.parse::<IpAddr>().ok()),
                        "client" => {
                            client = true;
                            i += 1;
                            continue;
                        }
                        "nhs" => {
                            nhs = true;
                            i += 1;
                            continue;
                        }
                        "import" => import = Some(pol(v)?),
                        "export" => export = Some(pol(v)?),
                        w => return Err(format!("unknown peer word {w:?}")),
                    }
                    i += 2;
                }
                let mut cfg = PeerConfig::new(
                    asn.ok_or("peer needs `as N`")?,
                    addr.ok_or("peer needs `addr IP`")?,
                );
                cfg.rr_client = client;
                cfg.next_hop_self = nhs;
                cfg.import = import;
                cfg.export = export;
                self.rib(n).add_peer(id, cfg).map_err(|e| e.to_string())?;
                None
            }
            "up" => {
                let id = peer_id(words.get(1).ok_or("up N ...")?)?;
                let (mut local, mut rid) = (None, None);
                let mut fams = vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST];
                let mut gr = PeerGracefulRestart::Unknown;
                for kv in words[2..].chunks(2) {
                    let v = kv.get(1).ok_or("up words come in pairs")?;
                    match kv[0] {
                        "local" => local = v.parse::<IpAddr>().ok(),
                        "id" => rid = v.parse::<Ipv4Addr>().ok(),
                        "families" => fams = list(v, family).ok_or("families ipv4,ipv6")?,
                        "gr" => {
                            gr = if *v == "none" {
                                PeerGracefulRestart::NotAdvertised
                            } else {
                                PeerGracefulRestart::Families(
                                    list(v, gr_family).ok_or("gr none | gr ipv4/f,ipv6")?,
                                )
                            }
                        }
                        w => return Err(format!("unknown up word {w:?}")),
                    }
                }
                let mut s = PeerSession::new(
                    local.ok_or("up needs `local IP`")?,
                    rid.ok_or("up needs `id A.B.C.D`")?,
                    fams,
                );
                s.graceful_restart = gr;
                Some(self.rib(n).peer_up(id, s).map_err(|e| e.to_string())?)
            }
            "announce" => {
                let id = peer_id(words.get(1).ok_or("announce N ...")?)?;
                let (attrs, nets) = split_colon(&words[2..]);
                let u = announce_update(parse_attrs(attrs)?, &prefixes(nets)?);
                Some(self.rib(n).apply(id, &u).map_err(|e| e.to_string())?)
            }
            "withdraw" => {
                let id = peer_id(words.get(1).ok_or("withdraw N : ...")?)?;
                let (_, nets) = split_colon(&words[2..]);
                let u = withdraw_update(&prefixes(nets)?);
                Some(self.rib(n).apply(id, &u).map_err(|e| e.to_string())?)
            }
            "originate" => {
                let (attrs, nets) = split_colon(&words[1..]);
                let attrs = parse_attrs(attrs)?;
                let mut all = RibChanges::default();
                for p in prefixes(nets)? {
                    let c = self.rib(n).originate(p, attrs.clone());
                    all.fib.extend(c.fib);
                    all.out.extend(c.out);
                }
                Some(all)
            }
            "unoriginate" => {
                let mut all = RibChanges::default();
                for p in prefixes(&words[1..])? {
                    let c = self.rib(n).withdraw_originated(p);
                    all.fib.extend(c.fib);
                    all.out.extend(c.out);
                }
                Some(all)
            }
            "down" => {
                let id = peer_id(words.get(1).ok_or("down N [stale]")?)?;
                let keep = (words.get(2) == Some(&"stale")).then(|| Duration::from_secs(120));
                Some(self.rib(n).peer_down(id, keep).map_err(|e| e.to_string())?)
            }
            "eor" => {
                let id = peer_id(words.get(1).ok_or("eor N FAMILY")?)?;
                let f = words
                    .get(2)
                    .and_then(|f| family(f))
                    .ok_or("eor N ipv4|ipv6")?;
                Some(self.rib(n).end_of_rib(id, f).map_err(|e| e.to_string())?)
            }
            "stale-expired" => {
                let id = peer_id(words.get(1).ok_or("stale-expired N")?)?;
                Some(self.rib(n).stale_expired(id).map_err(|e| e.to_string())?)
            }
            "refresh" => {
                let id = peer_id(words.get(1).ok_or("refresh N FAMILY")?)?;
                let f = words
                    .get(2)
                    .and_then(|f| family(f))
                    .ok_or("refresh N ipv4|ipv6")?;
                Some(self.rib(n).refresh(id, f).map_err(|e| e.to_string())?)
            }
            "remove" => {
                let id = peer_id(words.get(1).ok_or("remove N")?)?;
                Some(self.rib(n).remove_peer(id).map_err(|e| e.to_string())?)
            }
            "error" => {
                // `error <input...>`: the input must be refused (and change nothing).
                let inner = words[1..].join(" ");
                let before = self.rib(n).routes();
                match self.try_input(n, &inner) {
                    Ok(_) => return Err(format!("`{inner}` was accepted, want an error")),
                    Err(_) => {
                        if self.rib(n).routes() != before {
                            return Err(format!("refused `{inner}` changed the RIB"));
                        }
                    }
                }
                None
            }
            w => return Err(format!("unknown input {w:?}")),
        };
        if let Some(c) = changes {
            self.steps += 1;
            self.pending = Some((n, render(&c)));
        }
        Ok(())
    }

    fn try_input(&mut self, n: usize, line: &str) -> Result<(), String> {
        let saved = self.pending.take();
        let r = self.run_line(n, line);
        self.pending = saved;
        r
    }
}

fn run_file(path: &Path) -> usize {
    let file = path.file_name().unwrap().to_string_lossy().to_string();
    let text = std::fs::read_to_string(path).unwrap();
    let mut r = Replay {
        file: file.clone(),
        rib: None,
        policies: BTreeMap::new(),
        defining: None,
        pending: None,
        steps: 0,
    };
    for (i, line) in text.lines().enumerate() {
        if let Err(e) = r.run_line(i + 1, line) {
            bad(&file, i + 1, format!("{}\n  at: {}", e, line.trim()));
        }
    }
    r.finish_pending();
    assert!(r.defining.is_none(), "{file}: a policy without `end`");
    r.steps
}

#[test]
fn rib_replay_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rib_replay");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the fixtures in {}", dir.display());
    for f in &files {
        let steps = run_file(f);
        assert!(steps > 0, "{}: no inputs", f.display());
        println!("{}: {steps} inputs replayed", f.display());
    }
}

/// The harness itself must fail on a wrong expectation and on an unexpected change.
#[test]
fn a_wrong_or_missing_expectation_fails() {
    let dir = std::env::temp_dir().join(format!("twl-rib-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = "config as 65000 id 10.0.0.1\n\
                peer 1 as 65001 addr 192.0.2.11 import accept\n\
                up 1 local 192.0.2.1 id 192.0.2.11\n\
                expect out 1 eor ipv4\n\
                expect out 1 eor ipv6\n\
                announce 1 path 65001 nh 192.0.2.11 : 203.0.113.0/24\n";
    let cases = [
        (
            "wrong",
            format!("{base}expect fib 203.0.113.0/24 via 192.0.2.99\n"),
        ),
        ("missing", base.to_string()),
    ];
    for (name, text) in cases {
        let p = dir.join(format!("{name}.txt"));
        std::fs::write(&p, text).unwrap();
        let r = std::panic::catch_unwind(|| run_file(&p));
        assert!(r.is_err(), "{name}: must fail");
    }
    let ok = dir.join("ok.txt");
    std::fs::write(
        &ok,
        format!("{base}expect fib 203.0.113.0/24 via 192.0.2.11\n"),
    )
    .unwrap();
    assert_eq!(run_file(&ok), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}
