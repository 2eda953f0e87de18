//! The dead-letter queue: the contract's JSON object and its stores.

pub mod local;
pub mod object;
