//! `GET /v1/usage?from=YYYY-MM-DD&to=YYYY-MM-DD`: successful deliveries of the caller's tenant
//! per UTC day.
//!
//! Every day of the range is listed, oldest first, days without deliveries as 0. Both bounds
//! are inclusive; `to` defaults to today (UTC) and `from` to 29 days before `to`. A range over
//! 366 days, a malformed date or `from` after `to` is 422 `validation_failed`. The operator key
//! names the tenant with `tenant_id=` (for billing); a tenant key reads only its own usage.

use std::rc::Rc;

use hookrelay_engine::clock::now_ms;
use hookrelay_engine::meta::Role;
use hookrelay_engine::meta::Snapshot;
use hookrelay_engine::metrics::usage::{USAGE_RANGE_DAYS_MAX, day_of_ms, format_day, parse_day};
use hyper::Request;
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::app::{App, HttpResponse};
use crate::auth::Caller;
use crate::problem::{Code, Problem, json_response};
use crate::query::Query;
use crate::routes::metrics::unavailable;

/// Days `from` reaches back from `to` when absent.
const DEFAULT_RANGE_DAYS: u32 = 30;

pub async fn get(
    app: &Rc<App>,
    snapshot: &Snapshot,
    caller: &Caller,
    req: &Request<Incoming>,
) -> Result<HttpResponse, Problem> {
    let query = Query::parse(req.uri().query());
    let tenant_id = match (caller.role(), query.get("tenant_id")) {
        (Role::Root, Some(t)) => {
            if !snapshot.tenants.contains_key(t) {
                return Err(Problem::new(Code::NotFound, format!("no tenant {t}")));
            }
            t.to_string()
        }
        (Role::Root, None) => {
            return Err(Problem::new(
                Code::ValidationFailed,
                "the operator key must name a tenant: tenant_id=",
            ));
        }
        (_, Some(t)) if Some(t) != caller.key.tenant_id.as_deref() => {
            return Err(Problem::new(Code::NotFound, format!("no tenant {t}")));
        }
        _ => caller.tenant()?.to_string(),
    };
    let date = |name: &str| -> Result<Option<u32>, Problem> {
        query
            .get(name)
            .map(|v| {
                parse_day(v).ok_or_else(|| {
                    Problem::new(
                        Code::ValidationFailed,
                        format!("{name} must be a date YYYY-MM-DD, got {v:?}"),
                    )
                })
            })
            .transpose()
    };
    let to = date("to")?.unwrap_or_else(|| day_of_ms(now_ms()));
    let from = date("from")?.unwrap_or_else(|| to.saturating_sub(DEFAULT_RANGE_DAYS - 1));
    if from > to {
        return Err(Problem::new(
            Code::ValidationFailed,
            "from must not be after to",
        ));
    }
    if to - from + 1 > USAGE_RANGE_DAYS_MAX {
        return Err(Problem::new(
            Code::ValidationFailed,
            format!("the range may span at most {USAGE_RANGE_DAYS_MAX} days"),
        ));
    }
    let counted = app
        .shard
        .usage(&tenant_id, from, to)
        .await
        .map_err(unavailable)?;
    let mut counted = counted.into_iter().peekable();
    let mut data: Vec<Value> = Vec::with_capacity((to - from + 1) as usize);
    for day in from..=to {
        let n = match counted.peek() {
            Some((d, n)) if *d == day => {
                let n = *n;
                counted.next();
                n
            }
            _ => 0,
        };
        data.push(json!({"date": format_day(day), "successful_deliveries": n}));
    }
    Ok(json_response(
        200,
        &json!({"data": data, "next_cursor": null}),
    ))
}
