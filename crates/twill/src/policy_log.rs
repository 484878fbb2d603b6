//! `twill policy log [-f]`: the packets GlobalNetworkPolicy `Log` rules logged on a node,
//! from its twilld (`GET /policy/log?after=SEQ` on its listen address; twilld reads them
//! from NFLOG). `-f` follows: it asks again every half second for what came after.

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Args, Clone)]
pub struct LogArgs {
    /// The node's twilld (its `listen` address).
    #[arg(long, default_value = "127.0.0.1:9099")]
    pub agent: String,
    /// Keep printing what comes (until interrupted).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// `json`: the lines as twilld serves them, one object a line.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: crate::policy_cmd::Output,
}

/// One logged packet as twilld serves it.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    pub seq: u64,
    pub time_ms: u64,
    pub prefix: String,
    pub src: Option<String>,
    pub dst: Option<String>,
    pub protocol: Option<u8>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

fn proto(p: Option<u8>) -> String {
    match p {
        Some(6) => "tcp".into(),
        Some(17) => "udp".into(),
        Some(132) => "sctp".into(),
        Some(1) => "icmp".into(),
        Some(n) => format!("proto {n}"),
        None => "-".into(),
    }
}

/// Pure: a line for people: `HH:MM:SS.mmm  PREFIX  tcp 10.244.1.2:40000 -> 10.244.1.3:80`.
pub fn render(l: &Line) -> String {
    let day_ms = l.time_ms % 86_400_000;
    let (h, m, s, ms) = (
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000,
    );
    let end = |a: &Option<String>, p: Option<u16>| match (a, p) {
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.clone(),
        _ => "?".into(),
    };
    format!(
        "{h:02}:{m:02}:{s:02}.{ms:03}Z  {}  {} {} -> {}",
        l.prefix,
        proto(l.protocol),
        end(&l.src, l.sport),
        end(&l.dst, l.dport)
    )
}

fn fetch(addr: &SocketAddr, after: u64) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(addr, Duration::from_secs(2)).with_context(|| {
        format!("cannot reach twilld at {addr}: is it running (and with --policy true)? Give its listen address with --agent")
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /policy/log?after={after} HTTP/1.1\r\nHost: twilld\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("twilld answered something that is not HTTP")?;
    let code = head.split_whitespace().nth(1).unwrap_or("");
    match code {
        "200" => Ok(body.to_string()),
        "404" => bail!(
            "twilld at {addr} runs without network policy (no /policy/log): start it with --policy true"
        ),
        _ => bail!("twilld at {addr} answered {code}: {}", body.trim()),
    }
}

pub fn run(a: LogArgs) -> anyhow::Result<i32> {
    let addr = a
        .agent
        .to_socket_addrs()
        .with_context(|| format!("--agent {:?} is not an address:port", a.agent))?
        .next()
        .with_context(|| format!("--agent {:?} names no address", a.agent))?;
    let mut after = 0;
    loop {
        let body = fetch(&addr, after)?;
        let mut out = std::io::stdout().lock();
        for raw in body.lines().filter(|l| !l.trim().is_empty()) {
            let line: Line = serde_json::from_str(raw)
                .with_context(|| format!("twilld sent a log line twill cannot read: {raw}"))?;
            after = after.max(line.seq);
            match a.output {
                crate::policy_cmd::Output::Text => writeln!(out, "{}", render(&line))?,
                crate::policy_cmd::Output::Json => writeln!(out, "{raw}")?,
            }
        }
        out.flush()?;
        if !a.follow {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_reads_as_time_prefix_and_the_flow() {
        let l: Line = serde_json::from_str(
            r#"{"seq":3,"timeMs":3723004,"prefix":"in g1 rule 0","src":"10.244.1.10","dst":"10.244.1.11","protocol":6,"length":60,"sport":40000,"dport":80}"#,
        )
        .unwrap();
        assert_eq!(
            render(&l),
            "01:02:03.004Z  in g1 rule 0  tcp 10.244.1.10:40000 -> 10.244.1.11:80"
        );
    }
}
