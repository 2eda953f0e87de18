//! HookRelay's HTTP surface: the ingest front door, the management API, configuration and the
//! `hookrelay` command line. Architecture Invariant: this crate turns HTTP into calls on
//! `hookrelay_engine` and never touches the log directly.
//!
//! Read first: `serve.rs` (threads and start-up), `app.rs` (router), `routes/ingest.rs`.

pub mod app;
pub mod auth;
pub mod balance;
pub mod body;
pub mod cli;
pub mod config;
pub mod listener;
pub mod problem;
pub mod promote;
pub mod query;
pub mod replay;
pub mod routes;
pub mod serve;
