//! Harness for the end-to-end tests: starts the real `hookrelay` binary, talks to it over HTTP
//! as senders, tenants and operators do, and plays the receiver HookRelay forwards to.
//!
//! Code map:
//! - [`server`]: spawn, kill -9, SIGTERM and restart the binary on a temporary data dir.
//! - [`http`]: a small HTTP client that returns status, headers and body.
//! - [`api`]: the management and ingest calls the tests repeat (tenants, endpoints, deliveries).
//! - [`audit`]: management calls with a chosen User-Agent, and reading `GET /v1/audit`.
//! - [`receiver`]: a scriptable local HTTP server that records what HookRelay sends it.
//! - [`signing`]: sender-side signatures for every verification mode, and the Standard Webhooks
//!   check of what HookRelay forwards.
//! - [`payload`]: unique sender bodies, so that content-based deduplication never joins two
//!   deliveries a test meant to keep apart.
//! - [`problem`]: checks on RFC 9457 error bodies.
//! - [`raw`]: a raw TCP client for what a well-behaved client cannot do (a slow, oversized upload).
//! - [`scenario`]: the shared set-up: a server and one tenant.
//! - [`replication`]: two-node set-ups (a node's replication settings) and the replication
//!   operator calls, with polling helpers.
//! - [`proxy`]: a TCP forwarder a test can cut and heal, to break a replication link.
//! - [`s3`]: a real S3-compatible server (s3s-fs, `scripts/s3-server`) for the DLQ on S3, and
//!   a recording HTTP proxy to put in front of it.
//!
//! Architecture Invariant: the harness only knows the contract (`shared/CONTRACT.md`): it never
//! links the product's crates, so a test passes only through the binary's real outside.

pub mod api;
pub mod audit;
pub mod http;
pub mod payload;
pub mod problem;
pub mod proxy;
pub mod raw;
pub mod receiver;
pub mod replication;
pub mod s3;
pub mod scenario;
pub mod server;
pub mod signing;
