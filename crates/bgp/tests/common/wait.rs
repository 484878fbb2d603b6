//! Polling with a deadline: the only way the harness waits for a daemon.

use std::time::{Duration, Instant};

/// How often [`until`] asks again.
pub const POLL: Duration = Duration::from_millis(50);

/// Calls `probe` every [`POLL`] until it returns `Ok`, and returns that value with the time
/// it took. Past `timeout` the test fails, naming `what` and the probe's last `Err` (which
/// should say what was seen instead).
pub fn until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(v) => return (v, start.elapsed()),
            Err(last) => {
                if start.elapsed() >= timeout {
                    panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Like [`until`], but returns the probe's last `Err` at the deadline instead of failing:
/// for waits whose failure the test itself checks.
pub fn try_until<T>(
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<(T, Duration), String> {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(v) => return Ok((v, start.elapsed())),
            Err(last) if start.elapsed() >= timeout => return Err(last),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Asserts that `probe` holds (returns `Ok`) at every poll for the whole of `period`: for
/// "stays up", "keeps the route" and "never establishes" checks.
pub fn holds_for(what: &str, period: Duration, mut probe: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    while start.elapsed() < period {
        if let Err(e) = probe() {
            panic!("{what} stopped holding after {:?}: {e}", start.elapsed());
        }
        std::thread::sleep(POLL);
    }
}
