//! Replay tests for the session FSM: recorded inputs against expected outputs, one text
//! fixture per scenario under `tests/fsm_replay/` (format: `tests/fsm_replay/README.md`).
//!
//! Each fixture is a test of its own (`replay!` below); `every_fixture_is_replayed` fails when
//! a fixture file is not listed, so none is silently skipped.
//!
//! `recorded_sessions` replays the captured BIRD/FRR sessions of `tests/vectors/` too: the
//! session plays one router and is fed, decoded, every message the other one sent.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use twill_bgp::fsm::Reason;
use twill_bgp::fsm::{
    ConnId, Direction, ErrorWait, GracefulRestartConfig, Input, Output, Session, SessionConfig,
    State,
};
use twill_bgp::packet::{
    self, Afi, Capability, ErrorCode, Family, GracefulRestart, GracefulRestartFamily, Message,
    Negotiated, Notification, Open, RouteRefresh, Safi, Update,
};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fsm_replay")
}

// ---- rendering (outputs) and parsing (inputs) share one vocabulary ----

fn family_name(f: Family) -> String {
    match (f.afi, f.safi) {
        (Afi::Ipv4, Safi::Unicast) => "ipv4".into(),
        (Afi::Ipv6, Safi::Unicast) => "ipv6".into(),
        (afi, safi) => {
            let afi = match afi {
                Afi::Ipv4 => 1,
                Afi::Ipv6 => 2,
                Afi::Other(n) => n,
            };
            let safi = match safi {
                Safi::Unicast => 1,
                Safi::Other(n) => n,
            };
            format!("{afi}/{safi}")
        }
    }
}

fn parse_family(s: &str) -> Result<Family, String> {
    match s {
        "ipv4" => Ok(Family::IPV4_UNICAST),
        "ipv6" => Ok(Family::IPV6_UNICAST),
        _ => Err(format!("unknown family {s:?}: want ipv4 or ipv6")),
    }
}

fn code_number(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::MessageHeader => 1,
        ErrorCode::OpenMessage => 2,
        ErrorCode::UpdateMessage => 3,
        ErrorCode::HoldTimerExpired => 4,
        ErrorCode::FsmError => 5,
        ErrorCode::Cease => 6,
        ErrorCode::RouteRefresh => 7,
        ErrorCode::Other(n) => n,
    }
}

fn code_of(n: u8) -> ErrorCode {
    match n {
        1 => ErrorCode::MessageHeader,
        2 => ErrorCode::OpenMessage,
        3 => ErrorCode::UpdateMessage,
        4 => ErrorCode::HoldTimerExpired,
        5 => ErrorCode::FsmError,
        6 => ErrorCode::Cease,
        7 => ErrorCode::RouteRefresh,
        n => ErrorCode::Other(n),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    s.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [_, _] => std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("hex {s:?}: bad digits")),
            _ => Err(format!("hex {s:?}: odd length")),
        })
        .collect()
}

fn render_notification(n: &Notification) -> String {
    let mut s = format!("notification {}/{}", code_number(n.code), n.subcode);
    if !n.data.is_empty() {
        write!(s, " data {}", hex(&n.data)).unwrap();
    }
    s
}

fn render_capability(c: &Capability) -> String {
    match c {
        Capability::Multiprotocol(f) => format!("mp({})", family_name(*f)),
        Capability::RouteRefresh => "rr".into(),
        Capability::FourOctetAs(asn) => format!("as4({asn})"),
        Capability::GracefulRestart(gr) => {
            let mut s = format!("gr({}", gr.restart_time);
            if gr.restarting {
                s.push_str(",r");
            }
            for f in &gr.families {
                write!(s, ",{}", family_name(f.family)).unwrap();
                if f.forwarding_preserved {
                    s.push_str("+f");
                }
            }
            s.push(')');
            s
        }
        Capability::Unknown { code, value } => format!("cap{code}({})", hex(value)),
    }
}

fn render_message(m: &Message) -> String {
    match m {
        Message::Open(o) => {
            let mut s = format!(
                "open my-as {} hold {} id {}",
                o.my_as, o.hold_time, o.router_id
            );
            if o.version != 4 {
                write!(s, " version {}", o.version).unwrap();
            }
            if !o.capabilities.is_empty() {
                s.push_str(" caps");
                for c in &o.capabilities {
                    write!(s, " {}", render_capability(c)).unwrap();
                }
            }
            s
        }
        Message::Keepalive => "keepalive".into(),
        Message::Notification(n) => render_notification(n),
        Message::RouteRefresh(r) => format!("route-refresh {}", family_name(r.family)),
        Message::Update(u) => render_update(u),
    }
}

fn render_update(u: &Update) -> String {
    let mut s = "update".to_string();
    if !u.withdrawn.is_empty() {
        s.push_str(" withdrawn");
        for p in &u.withdrawn {
            write!(s, " {p}").unwrap();
        }
    }
    if !u.nlri.is_empty() {
        s.push_str(" nlri");
        for p in &u.nlri {
            write!(s, " {p}").unwrap();
        }
    }
    s
}

fn render_output(o: &Output) -> String {
    match o {
        Output::Connect => "connect".into(),
        Output::CancelConnect => "cancel-connect".into(),
        Output::Send(id, m) => format!("send {} {}", id.0, render_message(m)),
        Output::Close(id) => format!("close {}", id.0),
        Output::Established(e) => {
            let mut s = format!(
                "established {} {} hold {}",
                e.conn.0,
                match e.direction {
                    Direction::Outgoing => "out",
                    Direction::Incoming => "in",
                },
                e.hold_time
            );
            if let Some(k) = e.keepalive {
                write!(s, " keepalive {}", k.as_secs()).unwrap();
            }
            s.push_str(" families");
            for f in &e.negotiated.families {
                write!(s, " {}", family_name(*f)).unwrap();
            }
            if e.negotiated.four_octet_as {
                s.push_str(" as4");
            }
            if e.internal {
                s.push_str(" internal");
            }
            if e.peer_route_refresh {
                s.push_str(" peer-rr");
            }
            if let Some(gr) = &e.peer_graceful_restart {
                write!(
                    s,
                    " peer-{}",
                    render_capability(&Capability::GracefulRestart(gr.clone()))
                )
                .unwrap();
            }
            s
        }
        Output::Routes(u) => format!("routes {}", render_update(u)),
        Output::RefreshRequested(f) => format!("refresh-requested {}", family_name(*f)),
        Output::Down {
            reason,
            keep_stale,
            stale_families,
        } => {
            let mut s = format!("down ({reason})");
            if let Some(t) = keep_stale {
                write!(s, " stale {}", t.as_secs()).unwrap();
                for f in stale_families {
                    write!(s, " {}", family_name(*f)).unwrap();
                }
            }
            s
        }
    }
}

fn num<T: std::str::FromStr>(s: Option<&str>, what: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let s = s.ok_or_else(|| format!("missing {what}"))?;
    s.parse().map_err(|e| format!("{what} {s:?}: {e}"))
}

/// `gr(120,r,ipv4+f,ipv6)`, `mp(ipv4)`, `as4(65001)`, `rr`, `cap70()`.
fn parse_capability(s: &str) -> Result<Capability, String> {
    if s == "rr" {
        return Ok(Capability::RouteRefresh);
    }
    let (name, rest) = s
        .split_once('(')
        .ok_or_else(|| format!("capability {s:?}: want name(args)"))?;
    let args = rest
        .strip_suffix(')')
        .ok_or_else(|| format!("capability {s:?}: missing ')'"))?;
    match name {
        "mp" => Ok(Capability::Multiprotocol(parse_family(args)?)),
        "as4" => Ok(Capability::FourOctetAs(num(Some(args), "as4")?)),
        "gr" => {
            let mut parts = args.split(',');
            let restart_time = num(parts.next(), "restart time")?;
            let mut gr = GracefulRestart {
                restarting: false,
                restart_time,
                families: Vec::new(),
            };
            for p in parts {
                if p == "r" {
                    gr.restarting = true;
                } else {
                    let (f, fbit) = match p.strip_suffix("+f") {
                        Some(f) => (f, true),
                        None => (p, false),
                    };
                    gr.families.push(GracefulRestartFamily {
                        family: parse_family(f)?,
                        forwarding_preserved: fbit,
                    });
                }
            }
            Ok(Capability::GracefulRestart(gr))
        }
        _ => match name.strip_prefix("cap") {
            Some(code) => Ok(Capability::Unknown {
                code: num(Some(code), "capability code")?,
                value: unhex(args)?,
            }),
            None => Err(format!("unknown capability {s:?}")),
        },
    }
}

fn parse_notification<'a>(
    words: &mut impl Iterator<Item = &'a str>,
) -> Result<Notification, String> {
    let cs = words.next().ok_or("notification: missing code/subcode")?;
    let (c, sc) = cs
        .split_once('/')
        .ok_or_else(|| format!("notification {cs:?}: want code/subcode"))?;
    let mut n = Notification {
        code: code_of(num(Some(c), "error code")?),
        subcode: num(Some(sc), "error subcode")?,
        data: Vec::new(),
    };
    if let Some(w) = words.next() {
        if w != "data" {
            return Err(format!("notification: unexpected {w:?}"));
        }
        n.data = unhex(words.next().ok_or("notification data: missing hex")?)?;
    }
    Ok(n)
}

fn parse_message<'a>(mut words: impl Iterator<Item = &'a str>) -> Result<Message, String> {
    let kind = words.next().ok_or("missing message")?;
    let m = match kind {
        "keepalive" => Message::Keepalive,
        "notification" => Message::Notification(parse_notification(&mut words)?),
        "route-refresh" => Message::RouteRefresh(RouteRefresh {
            family: parse_family(words.next().ok_or("route-refresh: missing family")?)?,
        }),
        "update" => {
            let mut u = Update::default();
            let mut section = "";
            for w in words.by_ref() {
                match w {
                    "withdrawn" | "nlri" => section = w,
                    p => {
                        let p = p.parse().map_err(|e| format!("prefix {p:?}: {e}"))?;
                        match section {
                            "withdrawn" => u.withdrawn.push(p),
                            "nlri" => u.nlri.push(p),
                            _ => return Err(format!("update: prefix {p} before withdrawn/nlri")),
                        }
                    }
                }
            }
            Message::Update(Box::new(u))
        }
        "open" => {
            let mut o = Open {
                version: 4,
                my_as: 0,
                hold_time: 0,
                router_id: Ipv4Addr::UNSPECIFIED,
                capabilities: Vec::new(),
            };
            while let Some(w) = words.next() {
                match w {
                    "my-as" => o.my_as = num(words.next(), "my-as")?,
                    "hold" => o.hold_time = num(words.next(), "hold")?,
                    "id" => o.router_id = num(words.next(), "id")?,
                    "version" => o.version = num(words.next(), "version")?,
                    "caps" => {
                        for c in words.by_ref() {
                            o.capabilities.push(parse_capability(c)?);
                        }
                    }
                    _ => return Err(format!("open: unknown field {w:?}")),
                }
            }
            Message::Open(o)
        }
        _ => return Err(format!("unknown message {kind:?}")),
    };
    if let Some(w) = words.next() {
        return Err(format!("{kind}: trailing {w:?}"));
    }
    Ok(m)
}

fn conn(s: Option<&str>) -> Result<ConnId, String> {
    Ok(ConnId(num(s, "connection id")?))
}

fn parse_input(line: &str) -> Result<Input, String> {
    let mut w = line.split_whitespace();
    let kind = w.next().ok_or("empty input")?;
    let input = match kind {
        "start" => Input::Start,
        "stop" => Input::Stop,
        "tick" => Input::Tick,
        "connect-failed" => Input::ConnectFailed,
        "connected" => {
            let id = conn(w.next())?;
            let dir = match w.next() {
                Some("out") => Direction::Outgoing,
                Some("in") => Direction::Incoming,
                other => return Err(format!("connected: want in or out, got {other:?}")),
            };
            Input::Connected(id, dir)
        }
        "closed" => Input::Closed(conn(w.next())?),
        "recv" => {
            let id = conn(w.next())?;
            return Ok(Input::Received(id, parse_message(w)?));
        }
        "decode-error" => {
            let id = conn(w.next())?;
            let n = parse_notification(&mut w)?;
            Input::DecodeError(id, n)
        }
        "updates-sent" => Input::UpdatesSent(num(w.next(), "count")?),
        "send-refresh" => Input::SendRefresh(parse_family(
            w.next().ok_or("send-refresh: missing family")?,
        )?),
        _ => return Err(format!("unknown input {kind:?}")),
    };
    if let Some(x) = w.next() {
        return Err(format!("{kind}: trailing {x:?}"));
    }
    Ok(input)
}

fn secs(s: Option<&str>, what: &str) -> Result<Duration, String> {
    Ok(Duration::from_secs_f64(num(s, what)?))
}

fn apply_config(c: &mut SessionConfig, line: &str) -> Result<(), String> {
    let mut w = line.split_whitespace().peekable();
    while let Some(key) = w.next() {
        match key {
            "local-as" => c.local_as = num(w.next(), key)?,
            "peer-as" => c.peer_as = num(w.next(), key)?,
            "router-id" => c.router_id = num(w.next(), key)?,
            "passive" => c.passive = true,
            "hold" => c.hold_time = num(w.next(), key)?,
            "keepalive" => c.keepalive = Some(num(w.next(), key)?),
            "open-hold" => c.open_hold_time = num(w.next(), key)?,
            "connect-retry" => c.connect_retry = secs(w.next(), key)?,
            "error-wait" => {
                c.error_wait = ErrorWait {
                    min: secs(w.next(), "error-wait min")?,
                    max: secs(w.next(), "error-wait max")?,
                    forget: secs(w.next(), "error-wait forget")?,
                }
            }
            "families" => {
                c.families.clear();
                while let Some(f) = w.next_if(|f| parse_family(f).is_ok()) {
                    c.families.push(parse_family(f)?);
                }
            }
            "no-route-refresh" => c.route_refresh = false,
            "gr" => {
                let mut gr = GracefulRestartConfig {
                    restart_time: num(w.next(), "gr restart time")?,
                    restarting: false,
                    forwarding_preserved: false,
                };
                while let Some(flag) = w.next_if(|f| ["restarting", "forwarding"].contains(f)) {
                    match flag {
                        "restarting" => gr.restarting = true,
                        _ => gr.forwarding_preserved = true,
                    }
                }
                c.graceful_restart = Some(gr);
            }
            _ => return Err(format!("config: unknown key {key:?}")),
        }
    }
    Ok(())
}

fn parse_state(s: &str) -> Result<State, String> {
    Ok(match s {
        "Idle" => State::Idle,
        "Connect" => State::Connect,
        "Active" => State::Active,
        "OpenSent" => State::OpenSent,
        "OpenConfirm" => State::OpenConfirm,
        "Established" => State::Established,
        _ => return Err(format!("unknown state {s:?}")),
    })
}

/// A fixture being replayed.
struct Replay {
    base: Instant,
    config: SessionConfig,
    session: Option<Session>,
    /// Outputs of the last input not yet matched by `>` lines, and that input's line.
    pending: Vec<String>,
    pending_line: usize,
    last_time: f64,
}

impl Replay {
    fn since(&self, i: Instant) -> f64 {
        i.duration_since(self.base).as_secs_f64()
    }

    /// Outputs of the last input that no `>` line claimed.
    fn unclaimed(&mut self) -> Vec<(usize, String)> {
        let line = self.pending_line;
        self.pending.drain(..).map(|p| (line, p)).collect()
    }

    fn expect(&mut self, want: &str) -> Result<(), String> {
        if self.pending.is_empty() {
            return Err(format!("expected output missing: {want}"));
        }
        let got = self.pending.remove(0);
        if got != want {
            return Err(format!("output differs\n   want: {want}\n    got: {got}"));
        }
        Ok(())
    }

    fn input(&mut self, time: &str, input: &str, line: usize) -> Result<(), String> {
        let t: f64 = num(Some(time), "time")?;
        if t < self.last_time {
            return Err(format!("time {t} goes back from {}", self.last_time));
        }
        self.last_time = t;
        let input = parse_input(input)?;
        if self.session.is_none() {
            let s =
                Session::new(self.config.clone(), self.base).map_err(|e| format!("config: {e}"))?;
            self.session = Some(s);
        }
        let now = self.base + Duration::from_secs_f64(t);
        let s = self.session.as_mut().expect("made above");
        self.pending = s.handle(input, now).iter().map(render_output).collect();
        self.pending_line = line;
        Ok(())
    }

    fn check(&self, check: &str) -> Result<(), String> {
        let s = self
            .session
            .as_ref()
            .ok_or("a check before the first input")?;
        let mut w = check.split_whitespace();
        match w.next() {
            Some("state") => {
                let want = parse_state(w.next().ok_or("state: missing name")?)?;
                if s.state() != want {
                    return Err(format!("state {}, want {want}", s.state()));
                }
            }
            Some("deadline") => {
                let got = s.next_deadline().map(|t| self.since(t));
                let want = match w.next() {
                    Some("none") => None,
                    v => Some(num::<f64>(v, "deadline")?),
                };
                let same = match (got, want) {
                    (Some(g), Some(w)) => (g - w).abs() < 1e-6,
                    (g, w) => g == w,
                };
                if !same {
                    return Err(format!("deadline {got:?}, want {want:?}"));
                }
            }
            Some("flaps") => {
                let want: u64 = num(w.next(), "flaps")?;
                let got = s.status().flaps;
                if got != want {
                    return Err(format!("flaps {got}, want {want}"));
                }
            }
            Some("last-error") => {
                let want = w.collect::<Vec<_>>().join(" ");
                let got = s
                    .status()
                    .last_error
                    .map_or_else(|| "none".to_string(), |(_, r)| r.to_string());
                if got != want {
                    return Err(format!("last error {got:?}, want {want:?}"));
                }
            }
            other => return Err(format!("unknown check {other:?}")),
        }
        Ok(())
    }
}

/// Replays one fixture; returns every mismatch, with its line number.
fn replay(name: &str, text: &str) -> Vec<String> {
    let mut r = Replay {
        base: Instant::now(),
        config: SessionConfig::new(65001, 65002, Ipv4Addr::new(192, 0, 2, 1)),
        session: None,
        pending: Vec::new(),
        pending_line: 0,
        last_time: 0.0,
    };
    let mut errors = Vec::new();
    let unclaimed = |r: &mut Replay, errors: &mut Vec<String>| {
        for (line, p) in r.unclaimed() {
            errors.push(format!("{name}:{line}: unexpected output: {p}"));
        }
    };
    for (n, raw) in text.lines().enumerate() {
        let n = n + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let result = if let Some(rest) = line.strip_prefix("config ") {
            if r.session.is_some() {
                Err("config after the first input".to_string())
            } else {
                apply_config(&mut r.config, rest)
            }
        } else if let Some(want) = line.strip_prefix('>') {
            r.expect(want.trim())
        } else if let Some(check) = line.strip_prefix('?') {
            r.check(check)
        } else {
            unclaimed(&mut r, &mut errors);
            match line.split_once(char::is_whitespace) {
                Some((time, input)) => r.input(time, input.trim(), n),
                None => Err(format!("want \"<seconds> <input>\", got {line:?}")),
            }
        };
        if let Err(e) = result {
            errors.push(format!("{name}:{n}: {e}"));
        }
    }
    unclaimed(&mut r, &mut errors);
    if r.session.is_none() {
        errors.push(format!("{name}: no input at all"));
    }
    errors
}

fn run_fixture(name: &str) {
    let path = fixture_dir().join(format!("{name}.txt"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let errors = replay(name, &text);
    assert!(errors.is_empty(), "\n{}\n", errors.join("\n"));
}

macro_rules! replay {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { run_fixture(stringify!($name)); } )*
        const FIXTURES: &[&str] = &[$(stringify!($name)),*];
    };
}

replay!(
    bird_graceful_restart,
    bird_restart_unseen,
    collision_peer_wins,
    collision_we_win,
    ebgp_with_bird,
    four_octet_local_as,
    fsm_errors,
    hold_timer,
    no_common_family,
    open_errors,
    passive_frr,
    peer_connects_first,
    restarting_speaker,
    stop_start,
    two_octet_peer,
);

#[test]
fn every_fixture_is_replayed() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture_dir())
        .expect("tests/fsm_replay exists")
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "txt").then(|| p.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = FIXTURES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "list every fixture file in replay!(...)");
}

/// The harness itself catches a wrong expectation, a missing output and an extra one.
#[test]
fn the_harness_reports_mismatches() {
    let text = "0 start\n> connect\n0 connected 1 out\n> send 1 keepalive\n0 stop\n";
    let errors = replay("t", text);
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].starts_with("t:4: output differs"), "{errors:?}");
    assert_eq!(errors[1], "t:5: unexpected output: send 1 notification 6/2");
    assert_eq!(errors[2], "t:5: unexpected output: close 1");
    let errors = replay("t", "0 start\n> connect\n> connect\n? state Idle\n");
    assert_eq!(
        errors,
        vec![
            "t:3: expected output missing: connect".to_string(),
            "t:4: state Connect, want Idle".to_string()
        ]
    );
}

// ---- the captured sessions of tests/vectors ----

/// One captured TCP session: its negotiated context and every message with its sender.
struct Capture {
    name: String,
    negotiated: Negotiated,
    messages: Vec<(String, Message)>,
}

fn load_capture(path: &Path) -> Capture {
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut four_octet_as = None;
    let mut families = None;
    let mut raw = Vec::new();
    for line in text.lines() {
        if let Some(ctx) = line.strip_prefix("#!") {
            let (k, v) = ctx.split_once(':').expect("#! key: value");
            match k.trim() {
                "four-octet-as" => four_octet_as = Some(v.trim() == "yes"),
                "families" => {
                    families = Some(
                        v.split(',')
                            .map(|f| match f.trim() {
                                "ipv4-unicast" => Family::IPV4_UNICAST,
                                "ipv6-unicast" => Family::IPV6_UNICAST,
                                other => panic!("{name}: family {other:?}"),
                            })
                            .collect::<Vec<_>>(),
                    )
                }
                other => panic!("{name}: context {other:?}"),
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (bytes, comment) = line.split_once('#').expect("hex  # from NAME ...");
        let sender = comment
            .trim()
            .strip_prefix("from ")
            .and_then(|c| c.split_whitespace().next())
            .unwrap_or_else(|| panic!("{name}: no sender in {comment:?}"))
            .to_string();
        raw.push((sender, unhex(bytes.trim()).unwrap()));
    }
    let negotiated = Negotiated {
        four_octet_as: four_octet_as.expect("four-octet-as context"),
        families: families.expect("families context"),
        ibgp: false, // set from the OPENs below
    };
    // OPENs first (they do not depend on the context), then the rest with it.
    let opens: Vec<Open> = raw
        .iter()
        .filter_map(|(_, b)| match packet::decode(b, &negotiated) {
            Ok(Message::Open(o)) => Some(o),
            _ => None,
        })
        .collect();
    assert_eq!(opens.len(), 2, "{name}: one OPEN from each side");
    let negotiated = Negotiated {
        ibgp: opens[0].asn() == opens[1].asn(),
        ..negotiated
    };
    let messages = raw
        .into_iter()
        .map(|(sender, b)| {
            let m = packet::decode(&b, &negotiated)
                .unwrap_or_else(|n| panic!("{name}: {sender}'s message does not decode: {n}"));
            (sender, m)
        })
        .collect();
    Capture {
        name,
        negotiated,
        messages,
    }
}

/// The configuration that makes a session send what `played` sent, towards `peer`.
fn config_like(played: &Open, peer: &Open) -> SessionConfig {
    let mut c = SessionConfig::new(played.asn(), peer.asn(), played.router_id);
    c.hold_time = played.hold_time;
    c.families = played
        .capabilities
        .iter()
        .filter_map(|cap| match cap {
            Capability::Multiprotocol(f) => Some(*f),
            _ => None,
        })
        .collect();
    c.route_refresh = played.capabilities.contains(&Capability::RouteRefresh);
    c.graceful_restart = played.capabilities.iter().find_map(|cap| match cap {
        Capability::GracefulRestart(gr) => Some(GracefulRestartConfig {
            restart_time: gr.restart_time,
            restarting: gr.restarting,
            forwarding_preserved: gr.families.iter().any(|f| f.forwarding_preserved),
        }),
        _ => None,
    });
    c
}

/// The capabilities Twill acts on, in a stable order (the routers order theirs freely and
/// add ones Twill does not know).
fn known_caps(o: &Open) -> Vec<String> {
    let mut caps: Vec<String> = o
        .capabilities
        .iter()
        .filter(|c| !matches!(c, Capability::Unknown { .. }))
        .map(render_capability)
        .collect();
    caps.sort();
    caps
}

/// Plays `played` of `capture` against the recorded messages of the other side.
fn replay_capture(capture: &Capture, played: &str) -> Result<(), String> {
    let name = &capture.name;
    let open_of = |who: &str, pick: bool| {
        capture.messages.iter().find_map(|(s, m)| match m {
            Message::Open(o) if (s == who) == pick => Some(o.clone()),
            _ => None,
        })
    };
    let ours = open_of(played, true).ok_or("no OPEN from the played side")?;
    let theirs = open_of(played, false).ok_or("no OPEN from the peer")?;
    let config = config_like(&ours, &theirs);
    let base = Instant::now();
    let mut s = Session::new(config.clone(), base).map_err(|e| e.to_string())?;
    let c1 = ConnId(1);
    let mut t = 0.0;
    let mut step = |s: &mut Session, input: Input| {
        t += 0.05;
        s.handle(input, base + Duration::from_secs_f64(t))
    };
    if step(&mut s, Input::Start) != vec![Output::Connect] {
        return Err("Start does not connect".into());
    }
    let out = step(&mut s, Input::Connected(c1, Direction::Outgoing));
    let [Output::Send(_, Message::Open(sent))] = out.as_slice() else {
        return Err(format!("no OPEN on connect: {out:?}"));
    };
    // Our OPEN is the played router's, but for what Twill does not know.
    if (sent.my_as, sent.hold_time, sent.router_id, known_caps(sent))
        != (
            ours.my_as,
            ours.hold_time,
            ours.router_id,
            known_caps(&ours),
        )
    {
        return Err(format!(
            "{name}: our OPEN {}\n  differs from {played}'s {}",
            render_message(&Message::Open(sent.clone())),
            render_message(&Message::Open(ours))
        ));
    }
    let mut established = None;
    let mut notified = false;
    for (i, (sender, m)) in capture.messages.iter().enumerate() {
        if sender == played {
            continue;
        }
        let want: Vec<Output> = match m {
            Message::Open(_) => vec![Output::Send(c1, Message::Keepalive)],
            // The first KEEPALIVE establishes (checked below); later ones say nothing.
            Message::Keepalive => Vec::new(),
            Message::Update(u) => vec![Output::Routes(u.clone())],
            Message::RouteRefresh(r) => vec![Output::RefreshRequested(r.family)],
            Message::Notification(n) => {
                notified = true;
                vec![
                    Output::Close(c1),
                    Output::Down {
                        reason: Reason::NotificationReceived(n.clone()),
                        keep_stale: None,
                        stale_families: Vec::new(),
                    },
                ]
            }
        };
        let out = step(&mut s, Input::Received(c1, m.clone()));
        if established.is_none() && matches!(m, Message::Keepalive) {
            match out.as_slice() {
                [Output::Established(e)] => established = Some(e.clone()),
                other => {
                    return Err(format!(
                        "message {i}: KEEPALIVE did not establish: {other:?}"
                    ))
                }
            }
            continue;
        }
        if out != want {
            return Err(format!(
                "message {i} ({}):\n   want: {:?}\n    got: {:?}",
                render_message(m),
                want.iter().map(render_output).collect::<Vec<_>>(),
                out.iter().map(render_output).collect::<Vec<_>>()
            ));
        }
        if notified {
            break;
        }
    }
    let e = established.ok_or("never established")?;
    // What the FSM negotiated is what the routers did (the capture's context).
    if e.negotiated != capture.negotiated {
        return Err(format!(
            "negotiated {:?}, the routers {:?}",
            e.negotiated, capture.negotiated
        ));
    }
    if !notified {
        // The capture ends with the session up: a reset keeps the routes stale when both
        // routers advertised graceful restart with families.
        let stale = match (&config.graceful_restart, &e.peer_graceful_restart) {
            (Some(_), Some(gr)) if !gr.families.is_empty() && gr.restart_time > 0 => Some((
                Duration::from_secs(gr.restart_time.into()),
                gr.families.iter().map(|f| f.family).collect::<Vec<_>>(),
            )),
            _ => None,
        };
        let want = vec![Output::Down {
            reason: Reason::ConnectionClosed,
            keep_stale: stale.as_ref().map(|s| s.0),
            stale_families: stale.map(|s| s.1).unwrap_or_default(),
        }];
        let out = step(&mut s, Input::Closed(c1));
        if out != want {
            return Err(format!("reset: want {want:?}, got {out:?}"));
        }
    }
    Ok(())
}

#[test]
fn recorded_sessions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/vectors exists")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 8,
        "the captured sessions are missing from {}",
        dir.display()
    );
    let mut errors = Vec::new();
    let mut played = 0;
    for path in &paths {
        let capture = load_capture(path);
        let mut senders: Vec<&str> = capture.messages.iter().map(|(s, _)| s.as_str()).collect();
        senders.sort();
        senders.dedup();
        for side in senders {
            // Twill always offers four-octet AS numbers: a router that did not (BIRD with
            // "enable as4 off") cannot be played.
            let sent_as4 = capture.messages.iter().any(|(s, m)| {
                s == side
                    && matches!(m, Message::Open(o)
                        if o.capabilities.iter().any(|c| matches!(c, Capability::FourOctetAs(_))))
            });
            if !sent_as4 {
                continue;
            }
            played += 1;
            if let Err(e) = replay_capture(&capture, side) {
                errors.push(format!("{} as {side}: {e}", capture.name));
            }
        }
    }
    assert!(errors.is_empty(), "\n{}\n", errors.join("\n\n"));
    assert!(played >= 15, "only {played} sides played");
}
