//! `filter-rspamd`: an OpenSMTPD filter that scans each message with rspamd and applies
//! its verdict. A drop-in for the Go filter of the same name; see the README and
//! filter-rspamd(8).
//!
//! Layers: [`config`] (the command line), [`request`] (the `/checkv2` headers, pure),
//! [`verdict`] (rspamd's JSON to smtpd's answer and the header edits, pure),
//! [`client`] (the [`Scanner`](client::Scanner) trait and hyper behind it), and
//! [`filter`], the glue to the [`opensmtpd_filter::Filter`] trait; `main.rs` wires them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod filter;
pub mod request;
pub mod verdict;
