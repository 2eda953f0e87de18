//! The dead-letter queue: the contract's JSON object and its stores.

pub mod error;
pub mod local;
pub mod object;

pub use error::{Error, Result};
