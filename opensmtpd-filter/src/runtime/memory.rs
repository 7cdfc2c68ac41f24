//! Handing freed memory back to the system, so that a filter's resident size follows
//! what it holds rather than the most it ever held.
//!
//! glibc's malloc keeps freed memory inside its heap: only the free space at the very
//! top is returned, and its mmap threshold rises after the first large buffer is freed,
//! so later message-sized buffers come from the heap too and stay resident after use.
//! On a mail server that runs for months this shows as a resident size that creeps up
//! with every burst of large messages (the soak measured 5.6 MB of 14.8 MB held free by
//! filter-rspamd after 4000 sessions). Go's runtime and jemalloc return such memory on
//! their own; with glibc the runtime does it:
//!
//! - buffers of [`MMAP_THRESHOLD`] and more always get their own mapping, given back
//!   to the system the moment they are freed;
//! - when the last session ends, `malloc_trim` releases the free pages left inside the
//!   heap — at most once per [`TRIM_INTERVAL`], so a server flapping between zero and
//!   one session does not pay for it each time.
//!
//! Other C libraries (musl, the BSDs' malloc) return memory themselves: nothing is done
//! there. [`Config::release_memory`](super::Config::release_memory) turns all of it off.

// mallopt and malloc_trim are foreign functions: the crate's only unsafe code.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

/// Allocations this large (and larger) are mapped on their own.
pub(crate) const MMAP_THRESHOLD: usize = 256 * 1024;

/// The shortest time between two trims.
pub(crate) const TRIM_INTERVAL: Duration = Duration::from_millis(100);

/// When the heap was last trimmed.
#[derive(Debug, Default)]
pub(crate) struct Releaser {
    last_trim: Option<Instant>,
}

impl Releaser {
    /// Sets the allocator up to give large buffers back at once.
    pub(crate) fn new() -> Self {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes a tuning parameter of glibc's allocator; it is
        // safe to call at any time from any thread.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        }
        Releaser { last_trim: None }
    }

    /// No session is open: give the heap's free pages back, unless that was done less
    /// than [`TRIM_INTERVAL`] ago.
    pub(crate) fn idle(&mut self) {
        let now = Instant::now();
        if self
            .last_trim
            .is_some_and(|t| now.duration_since(t) < TRIM_INTERVAL)
        {
            return;
        }
        self.last_trim = Some(now);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim takes glibc's allocator locks itself and only releases
        // pages no allocation uses.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_at_most_once_per_interval() {
        let mut r = Releaser::new();
        r.idle();
        let first = r.last_trim.expect("the first idle moment trims");
        r.idle();
        assert_eq!(
            r.last_trim,
            Some(first),
            "a second trim right away is skipped"
        );
        r.last_trim = Some(first - TRIM_INTERVAL);
        r.idle();
        assert!(r.last_trim.expect("trimmed") > first - TRIM_INTERVAL);
    }
}
