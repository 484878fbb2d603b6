//! Structured logs on stderr, one line per event: logfmt (`ts=… level=… msg="…" key=value`)
//! or JSON lines, chosen once at start (`logFormat`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Process-wide: several agents in one test process share it, which is harmless.
static JSON: AtomicBool = AtomicBool::new(false);

pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// Writes one event. `fields` are appended in order after `msg`.
pub fn event(level: Level, msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    let format = if JSON.load(Ordering::Relaxed) {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    let line = format_line(format, now_rfc3339(), level, msg, fields);
    // One call per line so lines of concurrent threads do not interleave; eprint! (not a
    // raw stderr write) so test harnesses capture it.
    eprint!("{line}");
}

pub fn info(msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    event(Level::Info, msg, fields)
}
pub fn warn(msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    event(Level::Warn, msg, fields)
}
pub fn error(msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    event(Level::Error, msg, fields)
}

/// Pure: the text of one log line, newline included.
pub fn format_line(
    format: LogFormat,
    ts: String,
    level: Level,
    msg: &str,
    fields: &[(&str, &dyn std::fmt::Display)],
) -> String {
    match format {
        LogFormat::Text => {
            let mut s = format!("ts={ts} level={} msg={}", level.as_str(), quote(msg));
            for (k, v) in fields {
                let v = v.to_string();
                s.push(' ');
                s.push_str(k);
                s.push('=');
                if v.is_empty() || v.contains([' ', '"', '=']) || v.contains(char::is_control) {
                    s.push_str(&quote(&v));
                } else {
                    s.push_str(&v);
                }
            }
            s.push('\n');
            s
        }
        LogFormat::Json => {
            let mut map = serde_json::Map::new();
            map.insert("ts".into(), ts.into());
            map.insert("level".into(), level.as_str().into());
            map.insert("msg".into(), msg.into());
            for (k, v) in fields {
                map.insert((*k).into(), v.to_string().into());
            }
            let mut s = serde_json::Value::Object(map).to_string();
            s.push('\n');
            s
        }
    }
}

fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// UTC time as `2025-01-02T03:04:05.678Z`, without a date crate.
fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_millis())
}

fn rfc3339(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_709_210_096, 5), "2024-02-29T12:34:56.005Z");
    }

    #[test]
    fn text_quotes_what_needs_it_and_json_is_json() {
        let t = format_line(
            LogFormat::Text,
            "T".into(),
            Level::Warn,
            "lease lost",
            &[("node", &"n1"), ("why", &"it expired = gone")],
        );
        assert_eq!(
            t,
            "ts=T level=warn msg=\"lease lost\" node=n1 why=\"it expired = gone\"\n"
        );
        let j = format_line(LogFormat::Json, "T".into(), Level::Info, "x", &[("n", &3)]);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["level"], "info");
        assert_eq!(v["n"], "3");
    }
}
