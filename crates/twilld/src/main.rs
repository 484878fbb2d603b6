//! `twilld`: parse the config, run the agent until SIGTERM or SIGINT. Exiting keeps the
//! lease: pods keep their addresses and a restart takes the same blocks back.
//!
//! `twilld datapath ARGS…` (hidden) is the udp backend's datapath process instead
//! ([`twill_datapath::run::run`]).
//!
//! Exit codes: 0 after a clean stop, 2 for a usage error (a bad flag, value or missing
//! setting: one line naming it and the fix, nothing started), 1 when the agent cannot run.
//! Errors are one line on stderr, `twilld: …`, never a debug dump or backtrace.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};
use std::sync::Arc;
use twilld::config::{self, Command};

/// The agent's shutdown flag, for the signal handler (set once, before the handlers).
static STOP: AtomicPtr<AtomicBool> = AtomicPtr::new(std::ptr::null_mut());

/// A bad command line, environment or config file (as BSD's EX_USAGE is for many tools,
/// and clap's error exit).
const EXIT_USAGE: u8 = 2;

/// The write end of the pipe the handler wakes the signal thread through (-1: none).
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_: libc::c_int) {
    let flag = STOP.load(Ordering::Acquire);
    if !flag.is_null() {
        // SAFETY: the pointer comes from an Arc leaked in main and never freed; an atomic
        // store is async-signal-safe.
        unsafe { (*flag).store(true, Ordering::Relaxed) };
    }
    let fd = WAKE_FD.load(Ordering::Acquire);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the byte is only a wake-up (a full pipe
        // already holds one).
        unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
    }
}

/// A thread asleep on a pipe the signal handler writes to: it wakes the agent's loop, so a
/// SIGTERM is acted on at once (the BGP Cease goes out in milliseconds, not at the loop's
/// next tick). Without the pipe the loop still sees the flag within its tick.
fn start_signal_thread() {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two descriptors it was given room for.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    let read_fd = fds[0];
    let spawned = std::thread::Builder::new()
        .name("twilld-signals".into())
        .spawn(move || {
            let mut buf = [0u8; 16];
            loop {
                // SAFETY: reads into a buffer of its length from the pipe this thread owns.
                let n = unsafe { libc::read(read_fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n > 0 {
                    twilld::agent::wake_for_shutdown();
                } else if n == 0
                    || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    return;
                }
            }
        });
    if spawned.is_ok() {
        WAKE_FD.store(fds[1], Ordering::Release);
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Hidden: the udp backend's datapath process (twilld spawns /proc/self/exe datapath
    // ARGS…, so nothing else is installed); it outlives the agent.
    if args.first().map(String::as_str) == Some("datapath") {
        return twill_datapath::run::run(&args[1..]);
    }
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
    // The handler sets the agent's own flag and wakes its loop through a pipe: no thread
    // polling for signals (an idle agent should sleep, not wake 20 times a second).
    let shutdown = Arc::new(AtomicBool::new(false));
    STOP.store(
        Arc::into_raw(shutdown.clone()) as *mut AtomicBool,
        Ordering::Release,
    );
    start_signal_thread();
    // SAFETY: the handler only stores to atomics and writes to a pipe, both
    // async-signal-safe.
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
