//! systemd's notification protocol (`Type=notify`): READY=1 once the node serves
//! (listeners, models, APIs up), STOPPING=1 when it begins to shut down. Without
//! `NOTIFY_SOCKET` (not started by systemd) these do nothing. `tests/cli.rs` starts the
//! binary with a socket of its own and reads what arrives.

/// Tells systemd the node is ready.
pub fn notify_ready() {
    notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status("serving")]);
}

/// Tells systemd the node is stopping.
pub fn notify_stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}
