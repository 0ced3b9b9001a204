//! SIGHUP: the whole configuration is read again and what can change
//! without a restart changes for new connections and new logins. Sessions
//! in progress keep going with what they started with. A file that does not
//! parse or validate, or names a passdb that does not load, is refused with
//! one log line and nothing changes. Settings that need a restart are named
//! in the log when they differ, and keep their running values.
#![forbid(unsafe_code)]

use super::context::{Process, Settings};
use super::guard::GuardConfig;
use super::worker::Logins;
use crate::config::Config;

/// Reads the configuration with `read` and applies it; returns what now
/// runs (restart-only settings kept as they were), or `None` when refused.
pub fn apply(
    read: &super::ReloadHook,
    log_level: Option<&super::LogLevelHook>,
    running: &Config,
    process: &Process,
    logins: &Logins,
) -> Option<Config> {
    let refuse = |why: &str| {
        tracing::error!("SIGHUP: configuration refused, the running one stays: {why}");
        None
    };
    let mut next = match read() {
        Ok(config) => config,
        Err(e) => return refuse(&e),
    };
    if let Err(e) = next.validate() {
        return refuse(&e.to_string());
    }
    let ctx = match super::login_context(&next) {
        Ok(ctx) => ctx,
        Err(e) => return refuse(&e.to_string()),
    };
    for name in next.keep_restart_only(running) {
        tracing::warn!("SIGHUP: {name} changed; it takes effect at the next restart");
    }
    logins.replace(ctx);
    process.guard.reconfigure(GuardConfig::new(
        &next.auth,
        next.limits.connections_per_address_max,
    ));
    process.replace_settings(Settings::new(&next));
    tls(process.tls.as_deref());
    tracing::info!("SIGHUP: configuration reloaded");
    // Last, so the line above is written at the level it was asked at.
    // `validate` has parsed the filter already.
    if let (Some(set), Some(level)) = (log_level, &next.log.level)
        && running.log.level.as_ref() != Some(level)
        && let Err(e) = set(level)
    {
        tracing::error!("SIGHUP: log.level {level:?} not applied: {e}");
    }
    Some(next)
}

/// Re-reads the certificates, keys and ticket keys (same files): new
/// connections get them, sessions keep theirs.
pub fn tls(tls: Option<&crate::tls::TlsReloader>) {
    match tls {
        Some(reloader) => match reloader.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the old certificate")
            }
        },
        None => tracing::info!("SIGHUP: no TLS certificate configured; nothing to reload"),
    }
}
