//! Reads of the active segment: the newest batches come from memory (`recent_bytes_max`), older
//! frames from the file.

mod common;

use std::os::unix::fs::FileExt as _;

use hookrelay_log::{Error, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};

const PAYLOAD: usize = 100;
const FRAME: usize = FRAME_HEADER_BYTES + PAYLOAD;

/// Appends records `0..n` one at a time: every batch holds one frame.
async fn append_one_by_one(log: &hookrelay_log::Log, n: u64) {
    for i in 0..n {
        let offset = log
            .append(1, common::payload(i, PAYLOAD))
            .await
            .expect("append");
        assert_eq!(offset, i);
    }
}

fn assert_reads(log: &hookrelay_log::Log, offsets: impl IntoIterator<Item = u64>) {
    for i in offsets {
        assert_eq!(
            log.read(i).expect("read").payload,
            common::payload(i, PAYLOAD)
        );
    }
}

/// Overwrites `frames` frames of the first segment on disk, from frame `first`, with junk.
fn damage(dir: &std::path::Path, first: usize, frames: usize) {
    let seg = dir.join(format!("{:020}.seg", 0));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open");
    let at = (SEGMENT_HEADER_BYTES + first * FRAME) as u64;
    f.write_all_at(&vec![0xA5; frames * FRAME], at)
        .expect("damage");
}

#[test]
fn the_newest_batches_are_read_from_memory_and_older_frames_from_the_file() {
    common::run(|| async {
        // Under the target directory: on the project's disk, which takes O_DIRECT (a tmpfs
        // /tmp would not, and nothing would be kept).
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let mut o = common::opts(dir.path());
        // Room for the last three one-frame batches; an index entry for every frame, so that a
        // read by offset starts at its own frame.
        o.recent_bytes_max = 3 * FRAME + FRAME / 2;
        o.index_interval_bytes = 1;
        let (log, _) = common::open(o).await;
        assert!(
            log.direct_io(),
            "the test directory's filesystem takes O_DIRECT"
        );
        append_one_by_one(&log, 20).await;
        assert_reads(&log, 0..20);
        // Damage every frame on disk: the three kept in memory still read, the others are
        // read from the file and reported damaged.
        damage(dir.path(), 0, 20);
        assert_reads(&log, 17..20);
        for i in [0, 10, 16] {
            assert!(
                matches!(log.read(i), Err(Error::Corrupt { .. })),
                "record {i} read from the file"
            );
        }
    });
}

#[test]
fn with_nothing_kept_every_read_comes_from_the_file() {
    common::run(|| async {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let mut o = common::opts(dir.path());
        o.recent_bytes_max = 0;
        let (log, _) = common::open(o).await;
        append_one_by_one(&log, 5).await;
        assert_reads(&log, 0..5);
        damage(dir.path(), 4, 1);
        assert!(matches!(log.read(4), Err(Error::Corrupt { .. })));
    });
}

#[test]
fn buffered_writes_keep_nothing_in_memory() {
    common::run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = common::opts(dir.path());
        o.direct_io = false;
        let (log, _) = common::open(o).await;
        assert!(!log.direct_io());
        append_one_by_one(&log, 1).await;
        damage(dir.path(), 0, 1);
        assert!(
            matches!(log.read(0), Err(Error::Corrupt { .. })),
            "read from the file"
        );
    });
}
