//! `hookrelay promote`: asks the running node to become the primary
//! (`POST /v1/admin/promote` with the operator key) and prints its answer.

use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;

use crate::cli::PromoteArgs;
use crate::config::Config;

/// Exit codes: 0 promoted, 1 the node refused or could not be reached, 2 usage.
pub fn run(config: &Config, args: &PromoteArgs) -> ExitCode {
    let Some(key) = args.root_key.as_deref().filter(|k| !k.trim().is_empty()) else {
        eprintln!("hookrelay promote: give the operator key with --root-key or HOOKRELAY_ROOT_KEY");
        return ExitCode::from(2);
    };
    let base = args
        .url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.server.listen));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hookrelay promote: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(post(&base, key.trim())) {
        Ok((200, body)) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("hookrelay promote: {base} answered {status}: {body}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("hookrelay promote: {base}: {e}");
            ExitCode::from(1)
        }
    }
}

async fn post(base: &str, key: &str) -> Result<(u16, String), String> {
    let uri: hyper::Uri = format!("{}/v1/admin/promote", base.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("bad --url: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs are supported (the node's own listener)".into());
    }
    let host = uri.host().ok_or("the URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::post(uri.path())
        .header("host", format!("{host}:{port}"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), sender.send_request(req))
        .await
        .map_err(|_| "no answer within 30 s".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
