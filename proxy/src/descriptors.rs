//! The process's file-descriptor limit and table, prepared before any thread starts.
//!
//! A proxy holds two sockets per proxied connection plus one per listener, so it raises its
//! soft `RLIMIT_NOFILE` to the hard limit, as Go programs and most proxies do. It also grows
//! the kernel's descriptor table up front: in a multi-threaded process every doubling of
//! that table waits for an RCU grace period (`expand_fdtable`), which took 25 ms of the
//! 30 ms needed to bind a thousand listeners here, and would stall an accepting worker later.
//!
//! At the limit itself (a flood of connections), two reserves of descriptors parked on
//! `/dev/null` keep the proxy in hand, as nginx and HAProxy keep a spare descriptor: the
//! admin API's ([`ADMIN`]) is closed one at a time to accept an admin connection when
//! `accept` fails with EMFILE/ENFILE, so `/ready` and `/stats/prometheus` keep answering, and
//! put back when that connection ends; the data path's ([`ACCEPT`]) is closed to accept the
//! connection waiting on a listener and close it at once (the client learns now, instead of
//! waiting in the backlog), then put back. The parked descriptors also make the data path
//! meet the limit that many descriptors early, so its new upstream connects fail (503) first.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Mutex;

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

/// Descriptors the admin API may use when the process has no other left.
pub static ADMIN: Reserve = Reserve::new(8);
/// The descriptor the data path's listeners use to accept and close a connection they
/// cannot serve for lack of descriptors.
pub static ACCEPT: Reserve = Reserve::new(1);

/// Descriptors parked on `/dev/null` for use when the process is out of them. Its lock is
/// taken only at start-up and when descriptors are exhausted, never on the hot path.
pub struct Reserve {
    size: usize,
    parked: Mutex<Vec<std::fs::File>>,
}

impl Reserve {
    const fn new(size: usize) -> Self {
        Reserve {
            size,
            parked: Mutex::new(Vec::new()),
        }
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, Vec<std::fs::File>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks descriptors until the reserve is full again, as far as the limit allows;
    /// returns how many are parked.
    pub fn refill(&self) -> usize {
        let mut parked = self.parked();
        while parked.len() < self.size {
            match std::fs::File::open("/dev/null") {
                Ok(f) => parked.push(f),
                Err(_) => break,
            }
        }
        parked.len()
    }

    /// Closes one parked descriptor, so that the next one the process opens can be had;
    /// false when none is parked.
    pub fn release_one(&self) -> bool {
        self.parked().pop().is_some()
    }
}

/// Whether `e` says the process (EMFILE) or the system (ENFILE) has no descriptor left.
pub fn is_exhausted(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// After `accept` on `listener` failed for lack of descriptors: closes the [`ACCEPT`]
/// reserve's descriptor, accepts the waiting connection and closes it, and parks a
/// descriptor again. Returns whether a connection was shed.
pub fn shed_one(listener: &impl std::os::fd::AsFd) -> bool {
    if !ACCEPT.release_one() {
        ACCEPT.refill();
        return false;
    }
    let shed = socket2::SockRef::from(listener).accept().is_ok();
    ACCEPT.refill();
    shed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_parks_descriptors_and_gives_them_up_one_at_a_time() {
        let reserve = Reserve::new(3);
        assert_eq!(reserve.refill(), 3);
        assert_eq!(reserve.refill(), 3, "a full reserve opens nothing more");
        assert!(reserve.release_one());
        assert_eq!(reserve.parked().len(), 2);
        assert!(reserve.release_one() && reserve.release_one());
        assert!(!reserve.release_one(), "nothing parked");
        assert!(is_exhausted(&std::io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(is_exhausted(&std::io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_exhausted(&std::io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }

    #[test]
    fn a_connection_that_cannot_be_served_is_accepted_and_closed() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        ACCEPT.refill();
        assert!(shed_one(&listener));
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap_or(0), 0, "closed by the proxy");
        assert_eq!(ACCEPT.parked().len(), 1, "the reserve is parked again");
        assert!(!shed_one(&listener), "no connection waiting");
    }

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
