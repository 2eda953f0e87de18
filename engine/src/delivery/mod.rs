//! Delivering to receivers: the HTTP client and outcome classification.

pub mod classify;
pub mod client;
pub mod ssrf;
