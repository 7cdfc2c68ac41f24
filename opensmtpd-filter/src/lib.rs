#![doc = include_str!("../README.md")]
// The only unsafe code: two glibc calls in runtime/memory.rs, and registering a socket
// with tokio for one kind of readiness in runtime/stdio.rs (each allows it where it is).
#![deny(unsafe_code)]
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
