//! Ctrl-C and SIGTERM during a checkpoint or restore: noted, never acted on mid-step. The
//! operation stops at its next safe point and rolls back as a failed export does, so an
//! interrupted checkpoint leaves the container running and no partial archive.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(signal: libc::c_int) {
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM only set a flag that [`check`] reports.
pub fn install() {
    let action = SigAction::new(SigHandler::Handler(note), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { nix::sys::signal::sigaction(signal, &action) };
    }
}

/// The signal that asked ckpt to stop, if one did.
pub fn received() -> Option<Signal> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        n => Signal::try_from(n).ok(),
    }
}

/// A safe point: an error once a stop was asked for.
pub fn check() -> Result<(), crate::base_error::BaseError> {
    match received() {
        Some(signal) => Err(crate::base_error::BaseError::Interrupted(signal.as_str().to_string())),
        None => Ok(()),
    }
}

/// [`check`] for code that reports `io::Error`, such as the archive writer.
pub fn check_io() -> std::io::Result<()> {
    match received() {
        Some(signal) => Err(std::io::Error::new(std::io::ErrorKind::Interrupted, format!("interrupted by {signal}"))),
        None => Ok(()),
    }
}
