#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod protocol;
pub mod session;

#[cfg(feature = "runtime")]
pub mod runtime;
#[cfg(feature = "testkit")]
pub mod testkit;
#[cfg(feature = "runtime")]
pub use runtime::{Config, DataMode, Filter, Message, MessageVerdict, Session, run, run_with};
