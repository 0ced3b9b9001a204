//! Dropping root: bind the listeners as root (port 110/995), then run as the
//! configured user and group, as Dovecot's `mail_uid`/`mail_gid` do.
#![forbid(unsafe_code)]

use std::fmt;

use nix::unistd::{Gid, Group, Uid, User, setgid, setgroups, setuid};

/// Why the process could not switch to the configured user.
#[derive(Debug)]
pub enum PrivilegeError {
    /// Looking the user or group up failed.
    Lookup {
        /// "user alice" or "group mail".
        what: String,
        /// What the system said.
        source: nix::Error,
    },
    /// No such user or group.
    Missing(String),
    /// setgroups, setgid or setuid failed.
    Call {
        /// The call.
        call: &'static str,
        /// What the system said.
        source: nix::Error,
    },
    /// Root could be regained after the switch: refuse to run like that.
    Regained,
}

impl fmt::Display for PrivilegeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivilegeError::Lookup { what, source } => write!(f, "cannot look up {what}: {source}"),
            PrivilegeError::Missing(what) => write!(f, "no such {what}"),
            PrivilegeError::Call { call, source } => write!(f, "{call}: {source}"),
            PrivilegeError::Regained => {
                f.write_str("still able to regain root after dropping privileges")
            }
        }
    }
}

impl std::error::Error for PrivilegeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PrivilegeError::Lookup { source, .. } | PrivilegeError::Call { source, .. } => {
                Some(source)
            }
            PrivilegeError::Missing(_) | PrivilegeError::Regained => None,
        }
    }
}

/// Switches the whole process to `user` (and `group`, default the user's
/// primary group) when running as root. Returns what it did, for the log.
pub fn drop_to(user: Option<&str>, group: Option<&str>) -> Result<Option<String>, PrivilegeError> {
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
    let lookup = |what: String| move |source| PrivilegeError::Lookup { what, source };
    let account = User::from_name(name)
        .map_err(lookup(format!("user {name}")))?
        .ok_or_else(|| PrivilegeError::Missing(format!("user: {name}")))?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .map_err(lookup(format!("group {g}")))?
                .ok_or_else(|| PrivilegeError::Missing(format!("group: {g}")))?
                .gid
        }
        None => account.gid,
    };
    let call = |call| move |source| PrivilegeError::Call { call, source };
    // Order matters: supplementary groups and the gid can only be changed
    // while still root.
    setgroups(&[gid]).map_err(call("setgroups"))?;
    setgid(gid).map_err(call("setgid"))?;
    setuid(account.uid).map_err(call("setuid"))?;
    if setuid(Uid::from_raw(0)).is_ok() {
        return Err(PrivilegeError::Regained);
    }
    Ok(Some(format!("uid={} gid={}", account.uid, Gid::current())))
}
