//! What a scenario is, what it gets ([`Ctx`]), what it returns ([`Outcome`]), and the
//! [`Rig`] most scenarios start from: a receiver, a real `hookrelay`, a tenant and endpoints.
//!
//! Adding a scenario: write `scenarios/<name>.rs` with `pub const SCENARIO: Scenario` and an
//! `async fn run(ctx: &mut Ctx) -> anyhow::Result<Outcome>`, and add one line to
//! `scenarios::ALL`.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use serde_json::{Value, json};

use crate::api::{Api, Endpoint};
use crate::ledger::{self, Tally};
use crate::load::LoadSpec;
use crate::receiver::{Policy, Receiver};
use crate::rng::Rng;
use crate::server::{READY_TIMEOUT, Server, ServerSpec, free_port};

/// A running scenario.
pub type ScenarioFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Outcome>> + 'a>>;

/// One fault scenario.
pub struct Scenario {
    pub name: &'static str,
    /// One line for `list` and the README.
    pub about: &'static str,
    /// Whether it needs root (mounts, ...); it then skips itself with a message when not root.
    pub needs_root: bool,
    /// Wall-clock bound of the whole scenario, quick and full; past it the scenario is a hang.
    pub budget_quick: Duration,
    pub budget_full: Duration,
    pub run: for<'a> fn(&'a mut Ctx) -> ScenarioFuture<'a>,
}

/// What a scenario gets.
pub struct Ctx {
    pub bin: PathBuf,
    pub quick: bool,
    /// This scenario's seed (derived from `--seed` and its name).
    pub seed: u64,
    pub rng: Rng,
    /// A fresh directory for this scenario (data dirs, logs, mounts).
    pub dir: PathBuf,
    pub shards: usize,
    /// `--server-env`: set on every server before the scenario's own settings.
    pub server_env: Vec<(String, String)>,
}

impl Ctx {
    /// `quick` in `--quick` runs, `full` otherwise.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// How a scenario ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Pass,
    /// Nothing lost, but something the issue asks for is not (yet) what the product does.
    Gap,
    /// A loss, a crash, a hang or a wrong status.
    Fail,
    Skip,
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Gap => "GAP",
            Self::Fail => "FAIL",
            Self::Skip => "SKIP",
        }
    }
}

/// A scenario's result: the loss count, plus what else it checked.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub tally: Tally,
    /// Bugs: each makes the verdict FAIL.
    pub failures: Vec<String>,
    /// Missing behaviour without loss: each makes the verdict GAP (unless something failed).
    pub gaps: Vec<String>,
    pub notes: Vec<String>,
    /// Why the scenario did not run.
    pub skipped: Option<String>,
}

impl Outcome {
    pub fn skip(why: impl Into<String>) -> Self {
        Self {
            skipped: Some(why.into()),
            ..Self::default()
        }
    }

    pub fn verdict(&self) -> Verdict {
        if self.skipped.is_some() {
            Verdict::Skip
        } else if self.tally.lost > 0
            || !self.tally.problems.is_empty()
            || !self.failures.is_empty()
        {
            Verdict::Fail
        } else if !self.gaps.is_empty() {
            Verdict::Gap
        } else {
            Verdict::Pass
        }
    }

    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }
}

/// The endpoint settings scenarios start from: fast retries so everything settles in seconds.
pub fn endpoint_spec() -> Value {
    json!({
        "retry": {"max_attempts": 5, "base_delay_ms": 200, "factor": 2.0, "max_delay_ms": 2000,
                  "jitter": 0.2, "retry_client_errors_once": false},
        "timeout_ms": 2000,
        "max_in_flight": 64
    })
}

/// How to build a [`Rig`].
pub struct RigOptions {
    pub env: Vec<(String, String)>,
    pub endpoints: usize,
    /// Endpoint fields (without `destination_url` and `verification`, which the rig sets).
    pub endpoint: Value,
    /// Defaults to `<ctx.dir>/data`.
    pub data_dir: Option<PathBuf>,
    pub policy: Policy,
}

impl Default for RigOptions {
    fn default() -> Self {
        Self {
            env: Vec::new(),
            endpoints: 4,
            endpoint: endpoint_spec(),
            data_dir: None,
            policy: crate::receiver::always_ok(),
        }
    }
}

/// A receiver, a ready `hookrelay` and a tenant with endpoints that deliver to the receiver.
pub struct Rig {
    pub receiver: Receiver,
    pub server: Server,
    pub api: Api,
    pub endpoints: Vec<Endpoint>,
}

impl Rig {
    pub async fn start(ctx: &mut Ctx, opts: RigOptions) -> anyhow::Result<Self> {
        let receiver = Receiver::start(opts.policy).await?;
        let mut env = ctx.server_env.clone();
        env.extend([
            // One probe per second while a circuit is open (default 30 s), so a scenario's
            // drain is bounded by seconds, not by the breaker.
            (
                "HOOKRELAY_DELIVERY_CIRCUIT_PROBE_INTERVAL_MS".to_string(),
                "1000".to_string(),
            ),
        ]);
        env.extend(opts.env);
        let spec = ServerSpec {
            bin: ctx.bin.clone(),
            data_dir: opts.data_dir.unwrap_or_else(|| ctx.dir.join("data")),
            log_dir: ctx.dir.clone(),
            port: free_port()?,
            shards: ctx.shards,
            env,
        };
        let mut server = Server::spawn(spec)?;
        server.wait_ready(READY_TIMEOUT).await?;
        let api = Api::create_tenant(&server.base_url(), "chaos").await?;
        let mut endpoints = Vec::new();
        for i in 0..opts.endpoints.max(1) {
            let tag = format!("ep{i}");
            let mut spec = opts.endpoint.clone();
            spec["destination_url"] = json!(receiver.url(&tag));
            spec["name"] = json!(format!("chaos-{tag}"));
            let secret = format!("chaos-secret-{}-{i}", ctx.seed);
            let endpoint = api.create_endpoint(spec, &secret).await?;
            receiver.add_endpoint(&tag, &endpoint.signing_secret);
            endpoints.push(endpoint);
        }
        Ok(Self {
            receiver,
            server,
            api,
            endpoints,
        })
    }

    /// A load against every endpoint, tagged `tag` (unique per load run).
    pub fn load_spec(&self, tag: &str) -> LoadSpec {
        LoadSpec::new(self.server.base_url(), self.endpoints.clone(), tag)
    }

    /// Starts the server again on the same data dir (it must be stopped) and waits for ready.
    pub async fn restart(&mut self) -> anyhow::Result<Duration> {
        self.server.kill9();
        self.server.start()?;
        self.server.wait_ready(READY_TIMEOUT).await
    }

    /// Waits until every ACKed id is final and counts (see [`ledger::settle`]).
    pub async fn settle(
        &self,
        acked: &BTreeSet<String>,
        deadline: Duration,
        policy: ledger::Policy,
    ) -> Tally {
        ledger::settle(
            &self.api,
            acked,
            &self.receiver,
            self.server.data_dir(),
            deadline,
            policy,
        )
        .await
    }
}
