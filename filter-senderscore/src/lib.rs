//! `filter-senderscore`: an OpenSMTPD filter that blocks, junks or slows down SMTP
//! clients by IP reputation (SenderScore and zones like it). A drop-in for the Go
//! filter of the same name; see the README and filter-senderscore(8).
//!
//! Layers: [`config`] (the command line), [`policy`] (the rules, pure),
//! [`allowlist`], [`cache`] (pure, fake clock), [`dns`] (hickory-resolver and the
//! [`Scorer`](dns::Scorer)), and [`filter`], the glue to the
//! [`opensmtpd_filter::Filter`] trait; `main.rs` wires them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod allowlist;
pub mod cache;
pub mod config;
pub mod dns;
pub mod filter;
pub mod policy;
