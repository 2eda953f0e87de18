//! What the harnesses that drive a real `hookrelay` (the bench, the chaos suite, the
//! end-to-end tests) share. They talk to the server over HTTP only and depend on none of its
//! crates; this one holds what they would otherwise each copy.

/// A port that was free a moment ago on 127.0.0.1, picked below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`) when there is room. A port from `bind(:0)` comes from that
/// range, so any outgoing connection made before the server binds it can take it as its source
/// port (CI's chaos failover once failed at start-up with "Address already in use"); below the
/// range only another explicit bind can.
pub fn free_port() -> std::io::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    const FLOOR: u16 = 10_000;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(0);
    if low > FLOOR + 1_000 {
        // RandomState's keys are random: a different start for every call.
        let start = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let span = u64::from(low - FLOOR);
        for i in 0..64u64 {
            let port = FLOOR + (start.wrapping_add(i.wrapping_mul(7_919)) % span) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_bindable_and_vary() {
        let ports: Vec<u16> = (0..8).map(|_| super::free_port().unwrap()).collect();
        for &port in &ports {
            assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        }
        assert!(ports.iter().any(|&p| p != ports[0]), "{ports:?}");
    }
}
