//! Identifiers. Every id is a prefixed ULID (`tn_`, `ep_`, `dl_`, `ak_`, `rp_`).
//!
//! Delivery ids carry their shard and per-shard sequence number inside the ULID's random part,
//! so a lookup by id goes straight to the owning shard and to the delivery's slot in that shard's
//! state table, without any id → location index in memory. The layout of the 80 random bits is:
//! `shard: 8 | seq: 40 | random: 32`. The 48-bit timestamp prefix keeps ids sortable by time.

use ulid::Ulid;

pub use crate::clock::now_ms;

/// Highest number of shards a node can have; the shard number is 8 bits of a delivery id.
pub const SHARDS_MAX: usize = 256;
/// Highest per-shard delivery sequence number (40 bits: a trillion deliveries per shard).
pub const SEQ_MAX: u64 = (1 << 40) - 1;

/// A fresh prefixed id such as `tn_01J...`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", Ulid::new())
}

/// The id of delivery `seq` of shard `shard`, created at `created_ms`.
pub fn delivery_id(created_ms: u64, shard: usize, seq: u64) -> String {
    assert!(shard < SHARDS_MAX, "shard {shard} out of range");
    assert!(seq <= SEQ_MAX, "sequence {seq} out of range");
    let noise = u128::from(rand::random::<u32>());
    let random = ((shard as u128) << 72) | (u128::from(seq) << 32) | noise;
    format!("dl_{}", Ulid::from_parts(created_ms, random))
}

/// Where a delivery lives, decoded from its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryLocation {
    pub shard: usize,
    pub seq: u64,
    pub created_ms: u64,
}

/// Decodes a `dl_` id; `None` when it is not one of ours.
pub fn parse_delivery_id(id: &str) -> Option<DeliveryLocation> {
    let ulid = Ulid::from_string(id.strip_prefix("dl_")?).ok()?;
    let random = ulid.random();
    Some(DeliveryLocation {
        shard: ((random >> 72) & 0xff) as usize,
        seq: ((random >> 32) & u128::from(SEQ_MAX)) as u64,
        created_ms: ulid.timestamp_ms(),
    })
}

/// True when `id` is `prefix_` followed by a valid ULID (safe to use in paths and keys).
pub fn is_valid(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|u| u.len() == 26 && Ulid::from_string(u).is_ok())
}

/// The shard that owns an endpoint: a stable hash of its id (crc32), so the mapping survives
/// restarts as long as the shard count does not change.
pub fn shard_of(endpoint_id: &str, shards: usize) -> usize {
    assert!(shards > 0 && shards <= SHARDS_MAX);
    (crc32fast::hash(endpoint_id.as_bytes()) as usize) % shards
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn delivery_id_round_trips(shard in 0usize..SHARDS_MAX, seq in 0u64..=SEQ_MAX, ms in 0u64..(1u64 << 47)) {
            let id = delivery_id(ms, shard, seq);
            prop_assert!(is_valid(&id, "dl"));
            let loc = parse_delivery_id(&id).expect("parses");
            prop_assert_eq!(loc, DeliveryLocation { shard, seq, created_ms: ms });
        }
    }

    #[test]
    fn rejects_foreign_ids() {
        assert!(parse_delivery_id("ep_01J0000000000000000000000").is_none());
        assert!(parse_delivery_id("dl_notaulid").is_none());
        assert!(!is_valid("ep_../../etc", "ep"));
        assert!(is_valid(&new_id("ep"), "ep"));
    }

    #[test]
    fn shard_of_is_stable_and_in_range() {
        let id = "ep_01J9ZQ4K6V8Y3W0000000000AB";
        assert_eq!(shard_of(id, 4), shard_of(id, 4));
        for n in 1..16 {
            assert!(shard_of(id, n) < n);
        }
    }
}
