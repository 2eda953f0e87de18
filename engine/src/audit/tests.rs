use std::collections::HashSet;

use proptest::prelude::*;

use super::*;

const T0: u64 = 1_800_000_000_000;
const TENANT_A: &str = "tn_01JAAAAAAAAAAAAAAAAAAAAAAA";
const TENANT_B: &str = "tn_01JBBBBBBBBBBBBBBBBBBBBBBB";

fn a() -> Scope {
    Scope::Tenant(TENANT_A.into())
}

fn b() -> Scope {
    Scope::Tenant(TENANT_B.into())
}

fn entry(at_ms: u64, target: &str) -> Entry {
    Entry {
        at_ms,
        actor: "ak_01JKEY".into(),
        action: "endpoint.create".into(),
        target: Some(target.into()),
        ip: "127.0.0.1".into(),
        user_agent: Some("test/1.0".into()),
    }
}

fn query(limit: usize, now_ms: u64) -> ReadQuery {
    ReadQuery {
        since_ms: None,
        limit,
        cursor: None,
        now_ms,
    }
}

/// Every entry of `scope`, newest first, paging `limit` at a time.
fn read_all(store: &AuditStore, scope: &Scope, limit: usize, now_ms: u64) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut q = query(limit, now_ms);
    for _ in 0..100_000 {
        let page = store.read_blocking(scope, &q).unwrap();
        assert!(page.entries.len() <= limit);
        out.extend(page.entries);
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => return out,
        }
    }
    panic!("paging did not end");
}

fn targets(entries: &[Entry]) -> Vec<String> {
    entries.iter().map(|e| e.target.clone().unwrap()).collect()
}

fn segments(root: &Path, scope: &str) -> Vec<u64> {
    list_segments(&root.join(scope)).unwrap()
}

#[test]
fn appends_are_read_newest_first_with_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path(), T0).unwrap();
    for i in 0..5 {
        store
            .append_blocking(&a(), entry(T0 + i, &format!("ep_{i}")))
            .unwrap();
    }
    let page = store.read_blocking(&a(), &query(50, T0)).unwrap();
    assert_eq!(
        targets(&page.entries),
        ["ep_4", "ep_3", "ep_2", "ep_1", "ep_0"]
    );
    assert_eq!(page.entries[0], entry(T0 + 4, "ep_4"));
    assert_eq!(page.next_cursor, None);
    // Another scope sees nothing of it.
    assert!(
        store
            .read_blocking(&b(), &query(50, T0))
            .unwrap()
            .entries
            .is_empty()
    );
    assert!(
        store
            .read_blocking(&Scope::Operator, &query(50, T0))
            .unwrap()
            .entries
            .is_empty()
    );
}

#[test]
fn cursor_pages_visit_every_entry_once_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open_with(dir.path(), T0, 2048).unwrap();
    for i in 0..300 {
        store
            .append_blocking(&a(), entry(T0 + i / 3, &format!("ep_{i}")))
            .unwrap();
    }
    assert!(
        segments(dir.path(), TENANT_A).len() > 10,
        "small segments roll"
    );
    let expected: Vec<String> = (0..300).rev().map(|i| format!("ep_{i}")).collect();
    for limit in [1, 7, 50, 299, 300, 1000] {
        assert_eq!(
            targets(&read_all(&store, &a(), limit, T0)),
            expected,
            "limit {limit}"
        );
    }
    // A full last page has no cursor: no empty page to fetch.
    let page = store.read_blocking(&a(), &query(300, T0)).unwrap();
    assert_eq!(page.next_cursor, None);
}

#[test]
fn since_limits_how_far_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open_with(dir.path(), T0, 1024).unwrap();
    for i in 0..40 {
        store
            .append_blocking(&a(), entry(T0 + i * 1000, &format!("ep_{i}")))
            .unwrap();
    }
    let mut q = query(5, T0);
    q.since_ms = Some(T0 + 30_000);
    let mut seen = Vec::new();
    loop {
        let page = store.read_blocking(&a(), &q).unwrap();
        seen.extend(targets(&page.entries));
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    let expected: Vec<String> = (30..40).rev().map(|i| format!("ep_{i}")).collect();
    assert_eq!(seen, expected);
}

#[test]
fn times_never_go_backwards_within_a_scope() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path(), T0).unwrap();
    store
        .append_blocking(&a(), entry(T0 + 1000, "ep_1"))
        .unwrap();
    let stored = store.append_blocking(&a(), entry(T0, "ep_2")).unwrap();
    assert_eq!(stored.at_ms, T0 + 1000, "a clock step back is absorbed");
    drop(store);
    let store = AuditStore::open(dir.path(), T0).unwrap();
    let stored = store.append_blocking(&a(), entry(T0 + 5, "ep_3")).unwrap();
    assert_eq!(stored.at_ms, T0 + 1000, "also across a restart");
    // Other scopes have their own clocks.
    assert_eq!(
        store
            .append_blocking(&b(), entry(T0, "ep_4"))
            .unwrap()
            .at_ms,
        T0
    );
}

#[test]
fn fields_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path(), T0).unwrap();
    let mut e = entry(T0, &"t".repeat(10_000));
    e.user_agent = Some("\u{1}é".repeat(5000));
    e.actor = "a".repeat(1000);
    let stored = store.append_blocking(&a(), e).unwrap();
    assert!(stored.user_agent.as_ref().unwrap().len() <= USER_AGENT_BYTES_MAX);
    assert_eq!(stored.target.as_ref().unwrap().len(), TARGET_BYTES_MAX);
    assert_eq!(stored.actor.len(), ACTOR_BYTES_MAX);
    let page = store.read_blocking(&a(), &query(10, T0)).unwrap();
    assert_eq!(page.entries, vec![stored]);
}

#[test]
fn survives_reopen_and_keeps_numbering() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open_with(dir.path(), T0, 1024).unwrap();
    for i in 0..20 {
        store
            .append_blocking(&a(), entry(T0 + i, &format!("ep_{i}")))
            .unwrap();
    }
    let before = segments(dir.path(), TENANT_A);
    drop(store);
    let store = AuditStore::open_with(dir.path(), T0, 1024).unwrap();
    assert_eq!(read_all(&store, &a(), 50, T0).len(), 20);
    for i in 20..40 {
        store
            .append_blocking(&a(), entry(T0 + i, &format!("ep_{i}")))
            .unwrap();
    }
    let after = segments(dir.path(), TENANT_A);
    assert!(
        after.starts_with(&before) && after.len() > before.len(),
        "{before:?} {after:?}"
    );
    let expected: Vec<String> = (0..40).rev().map(|i| format!("ep_{i}")).collect();
    assert_eq!(targets(&read_all(&store, &a(), 9, T0)), expected);
}

#[test]
fn torn_last_line_is_skipped_then_cut() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path(), T0).unwrap();
    for i in 0..3 {
        store
            .append_blocking(&a(), entry(T0 + i, &format!("ep_{i}")))
            .unwrap();
    }
    let path = segment_path(&dir.path().join(TENANT_A), 0);
    let good_len = std::fs::metadata(&path).unwrap().len();
    drop(store);
    // A crash mid-append: half a line at the end.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"1234abcd {\"at_ms\":18000").unwrap();
    drop(f);

    let store = AuditStore::open(dir.path(), T0).unwrap();
    assert_eq!(
        targets(&read_all(&store, &a(), 50, T0)),
        ["ep_2", "ep_1", "ep_0"]
    );
    store.append_blocking(&a(), entry(T0 + 3, "ep_3")).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        !bytes.windows(8).any(|w| w == b"1234abcd"),
        "the torn tail was cut"
    );
    assert!(bytes.len() as u64 > good_len);
    assert_eq!(
        targets(&read_all(&store, &a(), 2, T0)),
        ["ep_3", "ep_2", "ep_1", "ep_0"]
    );
}

#[test]
fn a_bad_line_in_the_middle_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path(), T0).unwrap();
    for i in 0..3 {
        store
            .append_blocking(&a(), entry(T0 + i, &format!("ep_{i}")))
            .unwrap();
    }
    let path = segment_path(&dir.path().join(TENANT_A), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let first_nl = bytes.iter().position(|b| *b == b'\n').unwrap();
    bytes[first_nl + 20] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(targets(&read_all(&store, &a(), 50, T0)), ["ep_2", "ep_0"]);
}

#[test]
fn retention_hides_and_then_drops_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let month = 31 * DAY_MS;
    let now = T0 + 23 * month + DAY_MS;
    // Opened "now", so the back-dated appends below trigger no sweep of their own.
    let store = AuditStore::open(dir.path(), now).unwrap();
    // Monthly entries for two years: the age limit rolls a segment every month.
    for i in 0..24 {
        store
            .append_blocking(&a(), entry(T0 + i * month, &format!("ep_{i}")))
            .unwrap();
    }
    store.append_blocking(&b(), entry(T0, "ep_old")).unwrap();
    let cutoff = now - RETENTION_MS;
    let visible: Vec<String> = (0..24)
        .rev()
        .filter(|i| T0 + i * month >= cutoff)
        .map(|i| format!("ep_{i}"))
        .collect();
    assert!(visible.len() < 24 && !visible.is_empty());
    // Before any sweep the old entries are on disk but never returned.
    assert_eq!(targets(&read_all(&store, &a(), 5, now)), visible);
    assert!(read_all(&store, &b(), 5, now).is_empty());

    let before = segments(dir.path(), TENANT_A).len();
    let dropped = store.drop_expired(now).unwrap();
    let after = segments(dir.path(), TENANT_A).len();
    assert_eq!(
        before - after + 1,
        dropped,
        "tenant B's only segment went too"
    );
    assert!(segments(dir.path(), TENANT_B).is_empty());
    assert!(
        dropped >= 24 - visible.len(),
        "each old month was its own segment"
    );
    assert_eq!(targets(&read_all(&store, &a(), 5, now)), visible);

    // Tenant B writes again after its log was emptied.
    store.append_blocking(&b(), entry(now, "ep_new")).unwrap();
    assert_eq!(targets(&read_all(&store, &b(), 5, now)), ["ep_new"]);
    // Opening sweeps too.
    drop(store);
    let later = now + RETENTION_MS;
    let store = AuditStore::open(dir.path(), later).unwrap();
    assert!(segments(dir.path(), TENANT_A).is_empty());
    assert!(read_all(&store, &a(), 5, later).is_empty());
}

#[test]
fn appends_trigger_a_daily_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path(), T0).unwrap();
    store.append_blocking(&b(), entry(T0, "ep_old")).unwrap();
    let now = T0 + RETENTION_MS + 2 * DAY_MS;
    store.append_blocking(&a(), entry(now, "ep_new")).unwrap();
    assert!(
        segments(dir.path(), TENANT_B).is_empty(),
        "B's expired segment was swept"
    );
    assert_eq!(segments(dir.path(), TENANT_A).len(), 1);
}

#[test]
fn purge_deletes_one_tenant_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open_with(dir.path(), T0, 1024).unwrap();
    for i in 0..30 {
        store
            .append_blocking(&a(), entry(T0 + i, &format!("ep_a{i}")))
            .unwrap();
        store
            .append_blocking(&b(), entry(T0 + i, &format!("ep_b{i}")))
            .unwrap();
    }
    store
        .append_blocking(&Scope::Operator, entry(T0, TENANT_A))
        .unwrap();
    store.purge_tenant_blocking(TENANT_A).unwrap();
    assert!(!dir.path().join(TENANT_A).exists());
    assert!(read_all(&store, &a(), 50, T0).is_empty());
    assert_eq!(read_all(&store, &b(), 50, T0).len(), 30);
    assert_eq!(read_all(&store, &Scope::Operator, 50, T0).len(), 1);
    // Purging twice, or a tenant without entries, is fine.
    store.purge_tenant_blocking(TENANT_A).unwrap();
    // The tenant's log starts again afterwards.
    store
        .append_blocking(&a(), entry(T0 + 100, "ep_after"))
        .unwrap();
    assert_eq!(targets(&read_all(&store, &a(), 50, T0)), ["ep_after"]);
    assert!(matches!(
        store.purge_tenant_blocking("../etc"),
        Err(Error::InvalidScope(_))
    ));
}

#[test]
fn an_interrupted_purge_is_finished_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path(), T0).unwrap();
    store.append_blocking(&a(), entry(T0, "ep_1")).unwrap();
    drop(store);
    // A crash between the rename and the delete.
    let doomed = dir.path().join(format!("{PURGING_PREFIX}{TENANT_A}"));
    std::fs::rename(dir.path().join(TENANT_A), &doomed).unwrap();
    let store = AuditStore::open(dir.path(), T0).unwrap();
    assert!(!doomed.exists());
    assert!(read_all(&store, &a(), 50, T0).is_empty());
}

#[test]
fn bad_scopes_and_cursors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path(), T0).unwrap();
    for bad in ["../x", "tn_", "ep_01JAAAAAAAAAAAAAAAAAAAAAAA", "operator"] {
        let scope = Scope::Tenant(bad.into());
        assert!(
            matches!(
                store.append_blocking(&scope, entry(T0, "x")),
                Err(Error::InvalidScope(_))
            ),
            "{bad}"
        );
    }
    for bad in ["", "!!", "YTEuMS4y", &URL_SAFE_NO_PAD.encode("a1.x.1.2")] {
        let mut q = query(10, T0);
        q.cursor = Some(bad.to_string());
        assert!(
            matches!(store.read_blocking(&a(), &q), Err(Error::BadCursor)),
            "{bad:?}"
        );
    }
}

#[test]
fn concurrent_appends_are_all_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open_with(dir.path(), T0, 4096).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let scope = if i % 2 == 0 { a() } else { b() };
                    store
                        .append_blocking(&scope, entry(T0 + i, &format!("ep_{t}_{i}")))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let seen: HashSet<String> = targets(&read_all(&store, &a(), 13, T0))
        .into_iter()
        .chain(targets(&read_all(&store, &b(), 13, T0)))
        .collect();
    assert_eq!(seen.len(), 200);
    let times: Vec<u64> = read_all(&store, &a(), 1000, T0)
        .iter()
        .map(|e| e.at_ms)
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// The store against a `Vec` model: whatever the appends (times may step back), reopenings
    /// and page sizes, paging returns the model reversed, with times clamped to never decrease.
    #[test]
    fn model(steps in proptest::collection::vec((0u64..5000, any::<bool>(), any::<bool>()), 1..40),
             limit in 1usize..12, segment_bytes_max in 300u64..3000) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = AuditStore::open_with(dir.path(), T0, segment_bytes_max).unwrap();
        let mut model: Vec<(u64, String)> = Vec::new();
        for (i, (offset_ms, reopen, other_scope)) in steps.into_iter().enumerate() {
            if reopen {
                drop(store);
                store = AuditStore::open_with(dir.path(), T0, segment_bytes_max).unwrap();
            }
            if other_scope {
                store.append_blocking(&b(), entry(T0, "noise")).unwrap();
            }
            let at = (T0 + offset_ms).max(model.last().map_or(0, |m| m.0));
            let target = format!("ep_{i}");
            let stored = store.append_blocking(&a(), entry(T0 + offset_ms, &target)).unwrap();
            prop_assert_eq!(stored.at_ms, at);
            model.push((at, target));
        }
        let got: Vec<(u64, String)> = read_all(&store, &a(), limit, T0)
            .into_iter()
            .map(|e| (e.at_ms, e.target.unwrap()))
            .collect();
        model.reverse();
        prop_assert_eq!(got, model);
    }
}
