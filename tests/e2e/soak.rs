//! The short soak through the three-filter chain on each daemon (the long one is
//! `cargo run --release -p opensmtpd-e2e --bin soak`; see `opensmtpd_e2e::soak` for what
//! is checked and how the chain lets the clients through).
//!
//! 50 concurrent clients, 1000 random sessions (1–20 recipients, bodies up to 256 KiB,
//! RSET, pipelining, drops at every phase, stalls of 0.5–2 s, non-UTF-8 bodies, long and
//! dot-stuffed lines) through debug builds of the filters, filter-rspamd spooling
//! messages over 16 KiB to its temporary files. The filters' VmRSS is taken after 350
//! sessions (the warm-up: caches, connection pools and allocator arenas filled) and
//! compared with the end: more than 10 % and more than 2 MB (a leak of about 3 KB per
//! session) fails; the long run has no such slack. The seed is printed; `SOAK_SEED=N`
//! replays a run.
//!
//! Needs the debug filters: `cargo build -p filter-senderscore -p filter-greylist -p
//! filter-rspamd` (scripts/test does).

use std::time::Duration;

use opensmtpd_e2e::Daemon;
use opensmtpd_e2e::chain::Profile;
use opensmtpd_e2e::load::Outcome;
use opensmtpd_e2e::soak::{SoakOptions, run_soak};

fn short_soak(daemon: Daemon) {
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let mut o = SoakOptions::new(daemon, 1000, seed);
    o.profile = Profile::Debug;
    o.shape.max_size = 256 * 1024;
    o.shape.max_line = o.shape.max_line.min(daemon.max_filtered_line());
    o.shape.stall = (Duration::from_millis(500), Duration::from_secs(2));
    o.warm_up = 350;
    o.rss_every = 100;
    // most messages spooled: the run covers spooling under load, and filter-rspamd's
    // VmRSS shows what lasts rather than the most bodies ever held at once
    o.rspamd_spool_above = Some("16K".into());
    // 650 sessions after the reference: 2 MB is a leak of 3 KB a session; less is
    // within what a 50-client run's busiest moment leaves in a pool or malloc
    o.rss_slack_kb = 2048;
    o.deadline = Duration::from_secs(60);
    eprintln!("{daemon}: soak seed {seed} (replay with SOAK_SEED={seed})");
    let report = run_soak(&o).unwrap_or_else(|e| panic!("{daemon}: {e}"));
    eprintln!("{}", report.table());
    let problems = report.problems();
    assert!(
        problems.is_empty(),
        "{daemon}: the soak failed (seed {seed}):\n{}",
        problems.join("\n")
    );
    // the run did what a soak is for: messages through, and clients dropping at every
    // phase (after connect, after EHLO, mid-RCPT, mid-DATA, instead of QUIT)
    assert!(
        report.accepted >= 500 && report.delivered_files >= report.accepted,
        "{daemon}: only {} messages accepted, {} files delivered",
        report.accepted,
        report.delivered_files
    );
    let drops = report
        .run
        .results
        .iter()
        .filter_map(|r| match r.outcome {
            Outcome::Dropped(p) => Some(p),
            _ => None,
        })
        .collect::<std::collections::BTreeSet<_>>();
    assert!(drops.len() >= 5, "{daemon}: drops only at {drops:?}");
}

#[test]
fn smtpd68_soak_through_the_chain() {
    short_soak(Daemon::Smtpd68);
}

#[test]
fn smtpd74_soak_through_the_chain() {
    short_soak(Daemon::Smtpd74);
}
