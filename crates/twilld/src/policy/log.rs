//! Log actions: the packets GlobalNetworkPolicy `Log` rules send to NFLOG group
//! [`LOG_GROUP`], read by a thread of their own into a bounded ring that
//! `GET /policy/log?after=SEQ` serves (`twill policy log [-f]`).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use twill_netlink::nflog::{LogPacket, NflogSocket};
use twill_policy::compile::LOG_GROUP;

use crate::log;

/// Lines kept; older ones go first.
pub const RING: usize = 2048;

/// One logged packet, as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1, 2, …: `after=SEQ` asks for the later ones.
    pub seq: u64,
    /// Milliseconds since the epoch when twilld read it.
    pub time_ms: u64,
    pub packet: LogPacket,
}

/// The bounded ring.
#[derive(Debug, Default)]
pub struct Ring {
    entries: Mutex<(u64, VecDeque<Entry>)>,
}

impl Ring {
    pub fn push(&self, packet: LogPacket, time_ms: u64) {
        let mut g = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        let seq = g.0;
        if g.1.len() == RING {
            g.1.pop_front();
        }
        g.1.push_back(Entry {
            seq,
            time_ms,
            packet,
        });
    }

    /// The entries after `after`, oldest first.
    pub fn after(&self, after: u64) -> Vec<Entry> {
        let g = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        g.1.iter().filter(|e| e.seq > after).cloned().collect()
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Pure: one JSON object per line, `{"seq":…,"timeMs":…,"prefix":…,"src":…,…}`.
pub fn render(entries: &[Entry]) -> String {
    let mut out = String::new();
    for e in entries {
        let p = &e.packet;
        let _ = write!(
            out,
            "{{\"seq\":{},\"timeMs\":{},\"prefix\":{}",
            e.seq,
            e.time_ms,
            json_str(&p.prefix)
        );
        if let Some(v) = &p.ipv4 {
            let _ = write!(
                out,
                ",\"src\":\"{}\",\"dst\":\"{}\",\"protocol\":{},\"length\":{}",
                v.src, v.dst, v.protocol, v.length
            );
            if let Some((s, d)) = v.ports {
                let _ = write!(out, ",\"sport\":{s},\"dport\":{d}");
            }
        }
        if let Some(i) = p.indev {
            let _ = write!(out, ",\"inIfindex\":{i}");
        }
        if let Some(i) = p.outdev {
            let _ = write!(out, ",\"outIfindex\":{i}");
        }
        out.push_str("}\n");
    }
    out
}

/// The `after` of a query string (`after=12&…`); 0 if absent or bad.
pub fn after_of(query: &str) -> u64 {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("after="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reads NFLOG until shutdown (the namespace's group [`LOG_GROUP`]).
pub fn start(ring: Arc<Ring>, shutdown: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("twilld-nflog".into())
        .spawn(move || {
            let mut sock = match NflogSocket::bind(LOG_GROUP) {
                Ok(s) => s,
                Err(e) => {
                    log::error(
                        "policy: cannot read NFLOG; Log rules log nothing to twill policy log",
                        &[("error", &e)],
                    );
                    return;
                }
            };
            while !shutdown.load(Ordering::Relaxed) {
                match sock.recv(Duration::from_millis(500)) {
                    Ok(packets) => {
                        let now = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_millis() as u64)
                            .unwrap_or(0);
                        for p in packets {
                            ring.push(p, now);
                        }
                    }
                    Err(e) => {
                        log::warn("policy: NFLOG read failed", &[("error", &e)]);
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            }
        })
        .expect("spawn the NFLOG thread")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_and_serves_what_follows_a_seq() {
        let r = Ring::default();
        for i in 0..(RING + 5) {
            r.push(
                LogPacket {
                    prefix: format!("p{i}"),
                    ..LogPacket::default()
                },
                1,
            );
        }
        let all = r.after(0);
        assert_eq!(all.len(), RING);
        assert_eq!(all[0].seq, 6);
        assert_eq!(r.after(RING as u64 + 3).len(), 2);
        let text = render(&all[..1]);
        assert_eq!(text, "{\"seq\":6,\"timeMs\":1,\"prefix\":\"p5\"}\n");
        assert_eq!(after_of("after=12"), 12);
        assert_eq!(after_of("x=1&after=bad"), 0);
        assert_eq!(json_str("a\"b\n"), "\"a\\\"b\\u000a\"");
    }
}
