//! `twilld`: parse the config, run the agent until SIGTERM or SIGINT. Exiting keeps the
//! lease: pods keep their addresses and a restart takes the same blocks back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use twilld::config::{self, Command};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
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
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    {
        let shutdown = shutdown.clone();
        std::thread::spawn(move || loop {
            if STOP.load(Ordering::Relaxed) {
                shutdown.store(true, Ordering::Relaxed);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        });
    }
    twilld::Agent::run(config, shutdown)?;
    Ok(())
}
