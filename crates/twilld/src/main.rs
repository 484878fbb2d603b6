//! `twilld`: parse the config, run the agent until SIGTERM or SIGINT. Exiting keeps the
//! lease: pods keep their addresses and a restart takes the same blocks back.

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Arc;
use twilld::config::{self, Command};

/// The agent's shutdown flag, for the signal handler (set once, before the handlers).
static STOP: AtomicPtr<AtomicBool> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_signal(_: libc::c_int) {
    let flag = STOP.load(Ordering::Acquire);
    if !flag.is_null() {
        // SAFETY: the pointer comes from an Arc leaked in main and never freed; an atomic
        // store is async-signal-safe.
        unsafe { (*flag).store(true, Ordering::Relaxed) };
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match config::load(&args)? {
        Command::Run(c) => *c,
        Command::Help(h) => {
            print!("{h}");
            return Ok(());
        }
        Command::Version => {
            println!("twilld {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
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
    twilld::Agent::run(config, shutdown)?;
    Ok(())
}
