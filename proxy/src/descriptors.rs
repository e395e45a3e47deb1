//! The process's file-descriptor limit and table, prepared before any thread starts.
//!
//! A proxy holds two sockets per proxied connection plus one per listener, so it raises its
//! soft `RLIMIT_NOFILE` to the hard limit, as Go programs and most proxies do. It also grows
//! the kernel's descriptor table up front: in a multi-threaded process every doubling of
//! that table waits for an RCU grace period (`expand_fdtable`), which took 25 ms of the
//! 30 ms needed to bind a thousand listeners here, and would stall an accepting worker later.

use std::os::fd::{FromRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The table is grown to this many descriptors at most (8 bytes of kernel memory each).
const RESERVED: u64 = 16_384;

/// Raises the soft descriptor limit to the hard one and grows the descriptor table to the
/// smaller of that limit and [`RESERVED`]. Call it while the process has a single thread.
/// Returns the soft limit now in force; an error leaves the process as it was.
pub fn prepare() -> Result<u64, String> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| format!("cannot read RLIMIT_NOFILE: {e}"))?;
    // An unlimited hard limit cannot be set as the soft one (the kernel caps at nr_open).
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let highest = i32::try_from(limit.min(RESERVED).saturating_sub(1)).unwrap_or(i32::MAX);
    let fd = fcntl(std::io::stderr(), FcntlArg::F_DUPFD_CLOEXEC(highest))
        .map_err(|e| format!("cannot grow the descriptor table to {highest}: {e}"))?;
    // SAFETY: `fd` was just returned by F_DUPFD_CLOEXEC and nothing else refers to it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_the_soft_limit_and_closes_the_descriptor_it_made() {
        let limit = prepare().unwrap_or(0);
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((0, 0));
        assert_eq!(limit, soft);
        assert!(
            soft == hard || hard == nix::sys::resource::RLIM_INFINITY,
            "{soft} {hard}"
        );
        let highest = limit.min(RESERVED) - 1;
        assert!(!std::path::Path::new(&format!("/proc/self/fd/{highest}")).exists());
    }
}
