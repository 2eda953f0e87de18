//! SSRF protection for deliveries: which addresses a receiver may live at, the create-time check
//! of a destination URL, and the connect-time guard (a DNS resolver that drops forbidden addresses
//! and a connector that refuses forbidden IP literals and re-checks the connected peer).
//!
//! Architecture Invariant: with `allow_private_destinations = false`, no TCP connection is ever
//! opened to a forbidden address. The check runs on the addresses we actually connect to (the
//! resolver's answer), not on an earlier lookup, so DNS rebinding cannot slip past it.
//! Not here: redirects (never followed, see `client.rs`), outbound signatures.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Longest destination URL accepted (bytes). Bounded like every other input.
pub const DESTINATION_URL_BYTES_MAX: usize = 2048;

/// At most this many resolved addresses are tried per connection attempt.
pub const RESOLVED_ADDRS_MAX: usize = 16;

/// IPv4 networks a receiver may not live at: (network, prefix length, why).
/// Mostly the IANA special-purpose registry's "not globally reachable" entries. The documentation
/// ranges (192.0.2/24, 198.51.100/24, 203.0.113/24) are left out on purpose: nothing internal sits
/// there and tests and examples use them as "some public address".
const FORBIDDEN_V4: &[(u32, u8, &str)] = &[
    (0x0000_0000, 8, "unspecified"),     // 0.0.0.0/8 "this network"
    (0x0A00_0000, 8, "private"),         // 10.0.0.0/8
    (0x6440_0000, 10, "shared (CGNAT)"), // 100.64.0.0/10 (also Alibaba's metadata 100.100.100.200)
    (0x7F00_0000, 8, "loopback"),        // 127.0.0.0/8
    (0xA9FE_0000, 16, "link-local"),     // 169.254.0.0/16 (AWS/GCP/Azure metadata 169.254.169.254)
    (0xAC10_0000, 12, "private"),        // 172.16.0.0/12
    (0xC000_0000, 24, "IETF protocol assignments"), // 192.0.0.0/24 (Oracle metadata 192.0.0.192)
    (0xC0A8_0000, 16, "private"),        // 192.168.0.0/16
    (0xC612_0000, 15, "benchmarking"),   // 198.18.0.0/15
    (0xE000_0000, 4, "multicast"),       // 224.0.0.0/4
    (0xF000_0000, 4, "reserved/broadcast"), // 240.0.0.0/4 incl. 255.255.255.255
];

/// Whether a receiver at `ip` is refused when private destinations are not allowed: loopback,
/// private (RFC 1918, fc00::/7), link-local (169.254/16, fe80::/10), unspecified, CGNAT
/// (100.64/10), multicast, broadcast/reserved, cloud metadata addresses, and IPv6 forms that embed
/// an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4) of any of these.
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    forbidden_reason(ip).is_some()
}

/// Why `ip` is forbidden, or `None` when a receiver may live there.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    FORBIDDEN_V4.iter().find_map(|&(net, len, why)| {
        let mask = u32::MAX << (32 - u32::from(len));
        (bits & mask == net).then_some(why)
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    let bits = u128::from(ip);
    let embedded_v4 = Ipv4Addr::from((bits & 0xFFFF_FFFF) as u32);
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // ::ffff:a.b.c.d (IPv4-mapped) and ::ffff:0:a.b.c.d (IPv4-translated): judge the IPv4 address.
    if bits >> 32 == 0xFFFF || bits >> 32 == 0xFFFF_0000 {
        return forbidden_v4(embedded_v4).map(|_| "IPv4-mapped forbidden address");
    }
    // ::/96, the deprecated IPv4-compatible form: never a legitimate receiver.
    if bits >> 32 == 0 {
        return Some("IPv4-compatible");
    }
    // 64:ff9b::/96 well-known NAT64 prefix: the gateway would reach the embedded IPv4 address.
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return forbidden_v4(embedded_v4).map(|_| "NAT64 of a forbidden address");
    }
    // 64:ff9b:1::/48 local-use NAT64: translates into the operator's own network.
    if seg[0] == 0x0064 && seg[1] == 0xff9b && seg[2] == 0x0001 {
        return Some("local-use NAT64");
    }
    // 2002::/16 6to4: the IPv4 address is in bits 16..48.
    if seg[0] == 0x2002 {
        let v4 = Ipv4Addr::from(((u32::from(seg[1])) << 16) | u32::from(seg[2]));
        return forbidden_v4(v4).map(|_| "6to4 of a forbidden address");
    }
    // 100::/64 discard-only.
    if seg[0] == 0x0100 && seg[1] == 0 && seg[2] == 0 && seg[3] == 0 {
        return Some("discard-only");
    }
    match seg[0] {
        s if s & 0xFE00 == 0xFC00 => Some("unique local (private)"), // fc00::/7, incl. fd00:ec2::254
        s if s & 0xFFC0 == 0xFE80 => Some("link-local"),             // fe80::/10
        s if s & 0xFFC0 == 0xFEC0 => Some("site-local"),             // fec0::/10, deprecated
        s if s & 0xFF00 == 0xFF00 => Some("multicast"),              // ff00::/8
        _ => None,
    }
}

/// Create-time validation of a destination URL (no DNS): scheme `http`/`https`, a host, at most
/// [`DESTINATION_URL_BYTES_MAX`] bytes; when the host is an IP literal (or `localhost`, which
/// always means loopback) the address rules of [`is_forbidden_ip`] apply unless `allow_private`.
/// Hostnames are checked again on the resolved address at connect time (and, if the caller wants
/// it at create time, by [`check_destination_resolved`]). The error is a sentence for a 422.
pub fn check_destination_url(url: &str, allow_private: bool) -> Result<(), String> {
    let uri = parse_destination(url)?;
    if allow_private {
        return Ok(());
    }
    let host = uri.host().unwrap_or_default();
    if let Some(ip) = ip_literal(host) {
        if let Some(why) = forbidden_reason(ip) {
            return Err(format!("destination address {ip} is not allowed ({why})"));
        }
    } else if is_localhost_name(host) {
        return Err(format!("destination host {host} is not allowed (loopback)"));
    }
    Ok(())
}

/// [`check_destination_url`] plus a DNS lookup of a hostname: refused when every address it
/// resolves to is forbidden (the connect-time guard would refuse it anyway). A name that does not
/// resolve (yet) is accepted: receivers are often configured before their DNS exists, and the
/// connect-time guard still applies. Needs a tokio runtime (the lookup runs on its blocking pool).
pub async fn check_destination_resolved(url: &str, allow_private: bool) -> Result<(), String> {
    check_destination_url(url, allow_private)?;
    if allow_private {
        return Ok(());
    }
    let uri = parse_destination(url)?;
    let host = uri.host().unwrap_or_default();
    if ip_literal(host).is_some() {
        return Ok(());
    }
    let Ok(addrs) = tokio::net::lookup_host((host, 0)).await else {
        return Ok(());
    };
    let mut seen = 0usize;
    let mut first_forbidden = None;
    for addr in addrs.take(RESOLVED_ADDRS_MAX) {
        seen += 1;
        match forbidden_reason(addr.ip()) {
            None => return Ok(()),
            Some(why) => {
                first_forbidden.get_or_insert((addr.ip(), why));
            }
        }
    }
    match first_forbidden {
        Some((ip, why)) if seen > 0 => Err(format!(
            "destination host {host} resolves to {ip}, which is not allowed ({why})"
        )),
        _ => Ok(()),
    }
}

fn parse_destination(url: &str) -> Result<Uri, String> {
    if url.len() > DESTINATION_URL_BYTES_MAX {
        return Err(format!(
            "destination_url is longer than {DESTINATION_URL_BYTES_MAX} bytes"
        ));
    }
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("destination_url is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {}
        Some(s) => {
            return Err(format!(
                "destination_url scheme must be http or https, not {s}"
            ));
        }
        None => return Err("destination_url must be an absolute http or https URL".to_owned()),
    }
    match uri.host() {
        Some(h) if !h.is_empty() && h != "[]" => Ok(uri),
        _ => Err("destination_url has no host".to_owned()),
    }
}

/// The IP address of a URI host that is an IP literal (`1.2.3.4` or `[::1]`).
pub(crate) fn ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// `localhost` and `*.localhost` always resolve to loopback (RFC 6761).
fn is_localhost_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost")
}

/// Why a connection attempt failed before any byte was sent. Lives in the error chain of the
/// hyper client's error so `client.rs` can tell DNS failures and SSRF refusals apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GuardError {
    /// The destination (literal, resolved or connected) address is forbidden.
    Forbidden(String),
    /// The name did not resolve, or resolved to nothing.
    Dns(String),
}

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardError::Forbidden(m) => write!(f, "destination not allowed: {m}"),
            GuardError::Dns(m) => write!(f, "dns error: {m}"),
        }
    }
}

impl StdError for GuardError {}

type BoxError = Box<dyn StdError + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// DNS resolver for the hyper connector: resolves with the system resolver (tokio's blocking pool)
/// and, unless private destinations are allowed, drops forbidden addresses; an answer with only
/// forbidden addresses is a [`GuardError::Forbidden`].
#[derive(Clone, Debug)]
pub(crate) struct GuardedResolver {
    pub(crate) allow_private: bool,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = BoxFuture<Result<Self::Response, io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str();
            let resolved = tokio::net::lookup_host((host, 0))
                .await
                .map_err(|e| io::Error::other(GuardError::Dns(format!("{host}: {e}"))))?;
            let mut allowed = Vec::new();
            let mut refused = None;
            for addr in resolved.take(RESOLVED_ADDRS_MAX) {
                match forbidden_reason(addr.ip()) {
                    Some(why) if !allow_private => {
                        refused.get_or_insert((addr.ip(), why));
                    }
                    _ => allowed.push(addr),
                }
            }
            if allowed.is_empty() {
                let err = match refused {
                    Some((ip, why)) => {
                        GuardError::Forbidden(format!("{host} resolves to {ip} ({why})"))
                    }
                    None => GuardError::Dns(format!("{host}: no addresses")),
                };
                return Err(io::Error::other(err));
            }
            Ok(allowed.into_iter())
        })
    }
}

/// The TCP connector under TLS: refuses forbidden IP literals before connecting (hyper-util's
/// `HttpConnector` does not pass literals through the resolver) and re-checks the connected peer
/// address before any byte is written — belt and braces for whatever the resolver missed (for
/// example `http://2130706433/`, which getaddrinfo turns into 127.0.0.1).
#[derive(Clone, Debug)]
pub(crate) struct GuardedConnector {
    pub(crate) inner: HttpConnector<GuardedResolver>,
    pub(crate) allow_private: bool,
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        // tower's contract: the readied service is the one called; leave a fresh clone behind.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let allow_private = self.allow_private;
        Box::pin(async move {
            if !allow_private {
                let host = dst.host().unwrap_or_default();
                if let Some(ip) = ip_literal(host)
                    && let Some(why) = forbidden_reason(ip)
                {
                    return Err(GuardError::Forbidden(format!("{ip} ({why})")).into());
                }
            }
            let io = tower_service::Service::call(&mut inner, dst).await?;
            if !allow_private {
                let peer = io.inner().peer_addr()?;
                if let Some(why) = forbidden_reason(peer.ip()) {
                    return Err(GuardError::Forbidden(format!(
                        "connected to {} ({why})",
                        peer.ip()
                    ))
                    .into());
                }
            }
            Ok(io)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_ip_table() {
        let cases: &[(&str, bool)] = &[
            ("127.0.0.1", true),
            ("127.255.255.254", true),
            ("10.0.0.1", true),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("172.32.0.1", false),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("169.254.0.1", true),
            ("100.64.0.1", true),
            ("100.127.255.255", true),
            ("100.128.0.1", false),
            ("0.0.0.0", true),
            ("224.0.0.1", true),
            ("239.255.255.250", true),
            ("255.255.255.255", true),
            ("192.0.0.192", true),
            ("8.8.8.8", false),
            ("1.1.1.1", false),
            ("93.184.216.34", false),
            ("203.0.113.7", false),
            ("::", true),
            ("::1", true),
            ("::ffff:10.0.0.1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:169.254.169.254", true),
            ("::ffff:8.8.8.8", false),
            ("::127.0.0.1", true),
            ("64:ff9b::a9fe:a9fe", true),
            ("64:ff9b::808:808", false),
            ("2002:7f00:1::", true),
            ("2002:808:808::", false),
            ("fc00::1", true),
            ("fd00:ec2::254", true),
            ("fe80::1", true),
            ("fec0::1", true),
            ("ff02::1", true),
            ("100::1", true),
            ("2606:4700:4700::1111", false),
            ("2001:db8::1", false),
        ];
        for (ip, forbidden) in cases {
            let parsed: IpAddr = ip.parse().expect("test IP parses");
            assert_eq!(is_forbidden_ip(parsed), *forbidden, "{ip}");
        }
    }

    #[test]
    fn destination_url_rules() {
        let ok = [
            "https://receiver.example/hooks",
            "http://receiver.example:8080/a?b=c",
            "HTTPS://Receiver.Example/",
            "http://8.8.8.8/",
            "http://[2606:4700:4700::1111]/x",
        ];
        for u in ok {
            assert_eq!(check_destination_url(u, false), Ok(()), "{u}");
        }
        let refused = [
            "ftp://receiver.example/",
            "receiver.example/hooks",
            "/hooks",
            "http:///nohost",
            "http://127.0.0.1:8080/",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://[fd00:ec2::254]/",
            "http://0.0.0.0/",
            "http://localhost:3000/",
            "http://api.LOCALHOST./",
            "not a url",
        ];
        for u in refused {
            assert!(check_destination_url(u, false).is_err(), "{u}");
        }
        // allow_private lifts the address rules but not the scheme/host rules.
        assert_eq!(check_destination_url("http://127.0.0.1:9/", true), Ok(()));
        assert_eq!(check_destination_url("http://localhost/", true), Ok(()));
        assert!(check_destination_url("ftp://127.0.0.1/", true).is_err());
        let long = format!(
            "https://receiver.example/{}",
            "a".repeat(DESTINATION_URL_BYTES_MAX)
        );
        assert!(check_destination_url(&long, true).is_err());
    }

    #[tokio::test]
    async fn resolved_check_refuses_names_of_loopback_and_accepts_unresolvable() {
        assert!(
            check_destination_resolved("http://localhost:1/", false)
                .await
                .is_err()
        );
        // Not an IP literal to the URL parser, but getaddrinfo reads it as 127.0.0.1.
        assert_eq!(check_destination_url("http://127.1:1/", false), Ok(()));
        assert!(
            check_destination_resolved("http://127.1:1/", false)
                .await
                .is_err()
        );
        // `.invalid` never resolves (RFC 6761): accepted, the connect-time guard still applies.
        assert_eq!(
            check_destination_resolved("https://receiver.invalid/hooks", false).await,
            Ok(())
        );
        assert_eq!(
            check_destination_resolved("http://localhost:1/", true).await,
            Ok(())
        );
    }
}
