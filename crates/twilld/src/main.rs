//! `twilld`: parse the config, run the agent until SIGTERM or SIGINT. Exiting keeps the
//! lease: pods keep their addresses and a restart takes the same blocks back.
//!
//! Exit codes: 0 after a clean stop, 2 for a usage error (a bad flag, value or missing
//! setting: one line naming it and the fix, nothing started), 1 when the agent cannot run.
//! Errors are one line on stderr, `twilld: …`, never a debug dump or backtrace.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Arc;
use twilld::config::{self, Command};

/// The agent's shutdown flag, for the signal handler (set once, before the handlers).
static STOP: AtomicPtr<AtomicBool> = AtomicPtr::new(std::ptr::null_mut());

/// A bad command line, environment or config file (as BSD's EX_USAGE is for many tools,
/// and clap's error exit).
const EXIT_USAGE: u8 = 2;

extern "C" fn on_signal(_: libc::c_int) {
    let flag = STOP.load(Ordering::Acquire);
    if !flag.is_null() {
        // SAFETY: the pointer comes from an Arc leaked in main and never freed; an atomic
        // store is async-signal-safe.
        unsafe { (*flag).store(true, Ordering::Relaxed) };
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match config::load(&args) {
        Ok(Command::Run(c)) => *c,
        Ok(Command::Help(h)) => {
            print!("{h}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("twilld {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("twilld: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    twilld::log::set_format(config.log_format);
    // The handler sets the agent's own flag: no thread polling for signals (an idle agent
    // should sleep, not wake 20 times a second).
    let shutdown = Arc::new(AtomicBool::new(false));
    STOP.store(
        Arc::into_raw(shutdown.clone()) as *mut AtomicBool,
        Ordering::Release,
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    match twilld::Agent::run(config, shutdown) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twilld: {e}");
            ExitCode::FAILURE
        }
    }
}
