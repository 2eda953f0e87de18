//! `server.pin_shards` (config reference): by default each shard thread runs on a core of its
//! own; turned off, every shard thread may run on any core the process may use.

use std::collections::BTreeSet;
use std::path::Path;

use hookrelay_tests::server::{Server, ServerOptions};

/// The CPUs a thread (or the process, for `/proc/<pid>`) may run on, from `Cpus_allowed_list`
/// (`0-3,6`).
fn allowed_cpus(proc_dir: &Path) -> BTreeSet<usize> {
    let status = std::fs::read_to_string(proc_dir.join("status")).expect("status");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_owned();
    let mut cpus = BTreeSet::new();
    for part in list.split(',') {
        let (from, to) = part.split_once('-').unwrap_or((part, part));
        let (from, to): (usize, usize) = (
            from.parse().expect("a cpu number"),
            to.parse().expect("a cpu number"),
        );
        cpus.extend(from..=to);
    }
    cpus
}

/// Each `shard-<i>` thread of `pid` and the CPUs it may run on, by shard.
fn shard_threads(pid: u32) -> Vec<BTreeSet<usize>> {
    let mut shards = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let dir = task.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if let Some(i) = comm.trim().strip_prefix("shard-") {
            let i: usize = i.parse().expect("shard index");
            shards.push((i, allowed_cpus(&dir)));
        }
    }
    shards.sort();
    shards.into_iter().map(|(_, cpus)| cpus).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_are_pinned_to_cores_of_their_own_unless_pin_shards_is_off() {
    let usable = allowed_cpus(Path::new("/proc/self"));
    assert!(
        usable.len() >= 2,
        "this test needs 2 usable CPUs (CI has 2), found {usable:?}"
    );

    let pinned = Server::start(ServerOptions::default().shards(2)).await;
    let pid = pinned.pid().expect("running");
    let shards = shard_threads(pid);
    assert_eq!(shards.len(), 2, "{shards:?}");
    for cpus in &shards {
        assert_eq!(cpus.len(), 1, "one core a shard: {shards:?}");
    }
    assert_ne!(shards[0], shards[1], "each shard its own core: {shards:?}");
    drop(pinned);

    let floating = Server::start(
        ServerOptions::default()
            .shards(2)
            .env("HOOKRELAY_SERVER_PIN_SHARDS", "false"),
    )
    .await;
    let pid = floating.pid().expect("running");
    let process = allowed_cpus(Path::new(&format!("/proc/{pid}")));
    let shards = shard_threads(pid);
    assert_eq!(shards.len(), 2, "{shards:?}");
    for cpus in &shards {
        assert_eq!(cpus, &process, "a shard may run wherever the process may");
    }
    assert!(process.len() >= 2, "{process:?}");
}
