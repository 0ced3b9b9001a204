//! Can this process use io_uring the way the backend does? Builds a small
//! ring with the shard's flags, asks the kernel which opcodes it supports
//! (`IORING_REGISTER_PROBE`) and registers a buffer ring, so every refusal
//! (seccomp, `kernel.io_uring_disabled`, an old kernel, a missing opcode)
//! shows up here at startup, with its likely cause, and not in a shard.

use std::fmt;
use std::io;

use io_uring::{Probe, opcode};

use super::bufring::BufRing;
use super::ops;

/// Set to anything but `0` or empty to make the probe fail, as a kernel
/// that refuses io_uring would (for testing the fallback).
pub const FORCE_FAIL_ENV: &str = "SHARDPOP_URING_FORCE_FAIL";

/// The opcodes the backend submits, with their names for the log.
const OPCODES: [(u8, &str); 7] = [
    (opcode::AcceptMulti::CODE, "ACCEPT"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::Send::CODE, "SEND"),
    (opcode::SendMsg::CODE, "SENDMSG"),
    (opcode::Close::CODE, "CLOSE"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::Read::CODE, "READ"),
];

/// Why io_uring cannot be used.
#[derive(Debug)]
pub enum Refused {
    /// `SHARDPOP_URING_FORCE_FAIL` is set.
    Forced,
    /// io_uring_setup(2) failed.
    Setup(io::Error),
    /// The kernel lacks an opcode the backend uses.
    Opcode(&'static str),
    /// The kernel lacks a ring feature the backend needs.
    Feature(&'static str),
    /// Registering a provided-buffer ring (5.19) failed.
    BufRing(io::Error),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Forced => write!(f, "forced off by {FORCE_FAIL_ENV}"),
            Refused::Setup(e) => match e.raw_os_error() {
                Some(libc::EPERM) => match disabled_sysctl().as_deref() {
                    Some("2") => write!(
                        f,
                        "io_uring_setup: EPERM: sysctl kernel.io_uring_disabled=2"
                    ),
                    Some("1") => write!(
                        f,
                        "io_uring_setup: EPERM: sysctl kernel.io_uring_disabled=1 and this user is not in kernel.io_uring_group"
                    ),
                    _ => write!(
                        f,
                        "io_uring_setup: EPERM: blocked by a seccomp filter or container policy"
                    ),
                },
                Some(libc::ENOSYS) => write!(
                    f,
                    "io_uring_setup: ENOSYS: kernel built without io_uring, or a seccomp filter"
                ),
                Some(libc::EINVAL) => write!(
                    f,
                    "io_uring_setup: EINVAL: kernel older than 6.1 (no SINGLE_ISSUER/DEFER_TASKRUN)"
                ),
                _ => write!(f, "io_uring_setup: {e}"),
            },
            Refused::Opcode(name) => write!(f, "the kernel lacks IORING_OP_{name}"),
            Refused::Feature(name) => write!(f, "the kernel lacks {name}"),
            Refused::BufRing(e) => write!(
                f,
                "registering a provided-buffer ring failed ({e}): kernel older than 5.19?"
            ),
        }
    }
}

impl std::error::Error for Refused {}

fn disabled_sysctl() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .map(|s| s.trim().to_string())
}

/// True when the force-fail variable is set.
fn forced() -> bool {
    std::env::var_os(FORCE_FAIL_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Checks everything the backend will ask of the kernel.
pub fn probe() -> Result<(), Refused> {
    if forced() {
        return Err(Refused::Forced);
    }
    // Declared before the ring so it is dropped after it on every path.
    let bufs = BufRing::new(2, 64, 0).map_err(Refused::BufRing)?;
    let ring = ops::builder().build(8).map_err(Refused::Setup)?;
    if !ring.params().is_feature_ext_arg() {
        return Err(Refused::Feature("IORING_FEAT_EXT_ARG (5.11)"));
    }
    if !ring.params().is_feature_nodrop() {
        return Err(Refused::Feature("IORING_FEAT_NODROP (5.5)"));
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|_| Refused::Feature("IORING_REGISTER_PROBE (5.6)"))?;
    if let Some((_, name)) = OPCODES.iter().find(|(code, _)| !probe.is_supported(*code)) {
        return Err(Refused::Opcode(name));
    }
    // SAFETY: `bufs` outlives the registration: it is unregistered below,
    // and on every early return `ring` (declared later) is dropped first.
    unsafe { bufs.register(&ring.submitter()) }.map_err(Refused::BufRing)?;
    ring.submitter()
        .unregister_buf_ring(0)
        .map_err(Refused::BufRing)?;
    drop(ring);
    drop(bufs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_their_cause() {
        let eperm = Refused::Setup(io::Error::from_raw_os_error(libc::EPERM)).to_string();
        assert!(eperm.starts_with("io_uring_setup: EPERM"), "{eperm}");
        let enosys = Refused::Setup(io::Error::from_raw_os_error(libc::ENOSYS)).to_string();
        assert!(enosys.contains("seccomp"), "{enosys}");
        let old = Refused::Setup(io::Error::from_raw_os_error(libc::EINVAL)).to_string();
        assert!(old.contains("older than 6.1"), "{old}");
        assert!(Refused::Forced.to_string().contains(FORCE_FAIL_ENV));
        assert_eq!(
            Refused::Opcode("SEND").to_string(),
            "the kernel lacks IORING_OP_SEND"
        );
    }
}
