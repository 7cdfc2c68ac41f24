//! `filter-greylist`: an SPF-aware greylisting filter for OpenSMTPD with persistent
//! state. A drop-in for poolpOrg's Go filter-greylist; see the README and
//! filter-greylist(8).
//!
//! Layers: [`config`] (the command line), [`policy`] (keys, timing and the decision,
//! pure, fake clock), [`lists`] (allowlists, SIGHUP-swappable), [`spf`] (mail-auth over
//! hickory-resolver), [`store`] (the embedded redb store), [`redis_store`] (the shared
//! one) with [`white_cache`] (its recent whitelist reads), and [`filter`], the glue to
//! the [`opensmtpd_filter::Filter`] trait; `main.rs` wires them, after [`allocator`] has
//! turned glibc's per-thread malloc caches off.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod allocator;
pub mod config;
pub mod control;
pub mod filter;
pub mod lists;
pub mod policy;
pub mod redis_store;
pub mod spf;
pub mod store;
pub mod white_cache;
