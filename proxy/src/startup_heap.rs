//! glibc's heap settings for the first config load.
//!
//! Loading a large store allocates tens of megabytes in a few milliseconds, on one parse
//! thread per core. glibc grows each thread's heap by the request plus `M_TOP_PAD` (128 KiB)
//! at a time, one `mprotect` and a run of page faults per step: a tenth of start-up's CPU
//! with 1000 services. A 16 MiB pad during the first load makes those steps rare (ready with
//! 1000 services 2-6 ms sooner, medians of alternating runs: 48.5-53.1 -> 46.7-48.2 ms).
//! Afterwards the default comes back and the freed load memory is returned to the kernel
//! (resident after start with 1000 services: 22.5 -> 16.6 MB), so the pad costs no memory
//! later. A pad the operator chose with `GLIBC_TUNABLES` is left alone.

/// glibc's documented default for `M_TOP_PAD` (mallopt(3)).
#[cfg(target_env = "gnu")]
const DEFAULT_TOP_PAD: libc::c_int = 128 * 1024;

/// The pad used while the first config loads.
#[cfg(target_env = "gnu")]
const STARTUP_TOP_PAD: libc::c_int = 16 * 1024 * 1024;

/// Whether the operator set the pad already.
#[cfg(target_env = "gnu")]
fn operator_chose() -> bool {
    std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("top_pad"))
}

/// Widens the heap's growth step for the first load. Call it before the load starts.
pub fn widen() {
    #[cfg(target_env = "gnu")]
    if !operator_chose() {
        // SAFETY: mallopt only changes a malloc tuning parameter; any value is valid.
        unsafe { libc::mallopt(libc::M_TOP_PAD, STARTUP_TOP_PAD) };
    }
}

/// Restores the default growth step and returns the memory the load freed to the kernel.
/// Call it once the first load is done.
pub fn settle() {
    #[cfg(target_env = "gnu")]
    if !operator_chose() {
        // SAFETY: as above; malloc_trim only releases free memory.
        unsafe {
            libc::mallopt(libc::M_TOP_PAD, DEFAULT_TOP_PAD);
            libc::malloc_trim(0);
        }
    }
}
