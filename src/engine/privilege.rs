//! Dropping root: bind the listeners as root (port 110/995), then run as the
//! configured user and group, as Dovecot's `mail_uid`/`mail_gid` do.
#![forbid(unsafe_code)]

use nix::unistd::{Gid, Group, Uid, User, setgid, setgroups, setuid};

/// Switches the whole process to `user` (and `group`, default the user's
/// primary group) when running as root. Returns what it did, for the log.
pub fn drop_to(user: Option<&str>, group: Option<&str>) -> Result<Option<String>, String> {
    if !Uid::effective().is_root() {
        if user.is_some() {
            tracing::info!("not running as root: server.user is ignored");
        }
        return Ok(None);
    }
    let Some(name) = user else {
        tracing::warn!(
            "running as root: set server.user so sessions do not run with root's rights"
        );
        return Ok(None);
    };
    let account = User::from_name(name)
        .map_err(|e| format!("cannot look up user {name}: {e}"))?
        .ok_or_else(|| format!("no such user: {name}"))?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .map_err(|e| format!("cannot look up group {g}: {e}"))?
                .ok_or_else(|| format!("no such group: {g}"))?
                .gid
        }
        None => account.gid,
    };
    // Order matters: supplementary groups and the gid can only be changed
    // while still root.
    setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
    setgid(gid).map_err(|e| format!("setgid({gid}): {e}"))?;
    setuid(account.uid).map_err(|e| format!("setuid({}): {e}", account.uid))?;
    if setuid(Uid::from_raw(0)).is_ok() {
        return Err("still able to regain root after dropping privileges".into());
    }
    Ok(Some(format!("uid={} gid={}", account.uid, Gid::current())))
}
