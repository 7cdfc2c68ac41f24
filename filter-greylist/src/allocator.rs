//! glibc's per-thread malloc caches (tcache), turned off for this process.
//!
//! The sessions run on the main thread and the store calls on a pool of threads
//! (`main.rs`). With glibc's tcache on, the filter's resident size kept creeping up
//! under load though what it holds did not: over 100 000 soak sessions it grew by
//! 10–11 % after the first 1000, while heaptrack found only ~200 KB allocated and still
//! live. Chunks parked in the threads' caches are never coalesced or trimmed, so the
//! main heap spreads over more pages. With the caches off, the same 16 000 sessions
//! (soak seed 777 on 7.4) grew it by 1.7 % instead of 7.2 %, from a resident size
//! 700 KB lower; fewer store threads (two) lowered the start but not the growth, and
//! a single malloc arena changed nothing. The cost is an uncontended lock per
//! allocation, nothing at a mail server's rates.
//!
//! glibc reads its tunables only from the environment when a program starts (`mallopt`
//! has no tcache parameter), so the filter executes itself again, once, before it
//! starts any thread, with `glibc.malloc.tcache_count=0` put in front of `GLIBC_TUNABLES`. The
//! process keeps its PID, arguments and descriptors; smtpd sees nothing. A
//! `glibc.malloc.tcache_count` the operator set is left as it is, which is also what
//! stops the second start from executing a third.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// The environment variable glibc reads its tunables from.
const TUNABLES_VAR: &str = "GLIBC_TUNABLES";

/// The tunable that sizes the per-thread caches.
const TCACHE_COUNT: &[u8] = b"glibc.malloc.tcache_count";

/// `GLIBC_TUNABLES` (`current`) with the tcache count set to 0 in front, or `None`
/// when it already sets a tcache count.
fn tunables_without_tcache(current: Option<&OsStr>) -> Option<OsString> {
    let current = current.map_or(&[][..], OsStr::as_bytes);
    let sets_count = current
        .split(|&b| b == b':')
        .any(|tunable| tunable.split(|&b| b == b'=').next() == Some(TCACHE_COUNT));
    if sets_count {
        return None;
    }
    // first, so that it is what shows in /proc/PID/environ: glibc cuts the variable
    // there after its first tunable (what the program itself sees is whole)
    let mut value = TCACHE_COUNT.to_vec();
    value.extend_from_slice(b"=0");
    if !current.is_empty() {
        value.push(b':');
        value.extend_from_slice(current);
    }
    Some(OsString::from_vec(value))
}

/// Executes this program again with glibc's tcache off (see the module docs). Returns
/// only when there is nothing to do (`None`: the caches are already set, or this is
/// not glibc) or the execution failed (the error; the filter then runs on as it is).
/// Call it before any thread is started.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn reexec_without_tcache() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    let tunables = tunables_without_tcache(std::env::var_os(TUNABLES_VAR).as_deref())?;
    let mut args = std::env::args_os();
    let arg0 = args.next()?;
    // /proc/self/exe rather than a path: it is this very binary even when a package
    // upgrade has just replaced the file
    let error = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env(TUNABLES_VAR, tunables)
        .exec();
    Some(error)
}

/// Not glibc: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn reexec_without_tcache() -> Option<std::io::Error> {
    None
}

/// Gives the process back its own name after [`reexec_without_tcache`]. The kernel
/// names a process after the file it executes, here `/proc/self/exe`, so the second
/// start is called `exe` in `/proc/PID/comm`: what `ps`, `top` and `pkill -x` go by,
/// and `pkill -HUP -x filter-greylist` is how the manual reloads the lists. The name
/// is taken from the first argument (the path smtpd executed), as the first start had
/// it; the kernel cuts it to 15 bytes as it did then.
#[cfg(target_os = "linux")]
pub fn restore_name() {
    const COMM: &str = "/proc/self/comm";
    let Ok(comm) = std::fs::read(COMM) else {
        return;
    };
    if comm.strip_suffix(b"\n").unwrap_or(&comm) != b"exe" {
        return;
    }
    let Some(arg0) = std::env::args_os().next() else {
        return;
    };
    if let Some(name) = std::path::Path::new(&arg0).file_name() {
        // /proc/self is the main thread's entry whichever thread writes it
        if let Err(e) = std::fs::write(COMM, name.as_bytes()) {
            log::warn!("cannot set the process name back from `exe` ({e})");
        }
    }
}

/// Not Linux: the name is not touched.
#[cfg(not(target_os = "linux"))]
pub fn restore_name() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(current: Option<&str>) -> Option<String> {
        tunables_without_tcache(current.map(OsStr::new)).map(|v| v.into_string().unwrap())
    }

    #[test]
    fn the_count_is_added_to_what_is_there() {
        assert_eq!(with(None).as_deref(), Some("glibc.malloc.tcache_count=0"));
        assert_eq!(
            with(Some("")).as_deref(),
            Some("glibc.malloc.tcache_count=0")
        );
        assert_eq!(
            with(Some("glibc.malloc.arena_max=2")).as_deref(),
            Some("glibc.malloc.tcache_count=0:glibc.malloc.arena_max=2")
        );
        // a name that merely starts like it is another tunable
        assert_eq!(
            with(Some("glibc.malloc.tcache_counter=1")).as_deref(),
            Some("glibc.malloc.tcache_count=0:glibc.malloc.tcache_counter=1")
        );
    }

    #[test]
    fn a_count_already_set_is_kept() {
        assert_eq!(with(Some("glibc.malloc.tcache_count=0")), None);
        assert_eq!(with(Some("glibc.malloc.tcache_count=7")), None);
        assert_eq!(
            with(Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=3")),
            None
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_survive() {
        let current = OsStr::from_bytes(b"x=\xff");
        let value = tunables_without_tcache(Some(current)).unwrap();
        assert_eq!(value.as_bytes(), b"glibc.malloc.tcache_count=0:x=\xff");
    }
}
