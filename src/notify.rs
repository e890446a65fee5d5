//! systemd readiness notification (`Type=notify`): `READY=1` once every listener is bound
//! and the queue is open, `RELOADING=1` … `READY=1` around a reload, `STOPPING=1` at
//! shutdown. Without `NOTIFY_SOCKET` (not started by systemd) these do nothing.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Serving.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// A reload has started (followed by [`ready`]).
pub fn reloading() {
    // MONOTONIC_USEC lets `Type=notify-reload` (systemd 253+) match the reload too.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading"),
        ]),
        Err(_) => send(&[NotifyState::Reloading, NotifyState::Status("reloading")]),
    }
}

/// Shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}
