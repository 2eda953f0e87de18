//! Reads of the active segment: the newest batches come from memory (`recent_bytes_max`), older
//! frames from the file.

mod common;

use std::os::unix::fs::FileExt as _;

use hookrelay_log::{Error, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};

const PAYLOAD: usize = 100;
const FRAME: usize = FRAME_HEADER_BYTES + PAYLOAD;

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
        for i in 0..20 {
            // One append at a time: every batch holds one frame.
            assert_eq!(
                log.append(1, common::payload(i, PAYLOAD))
                    .await
                    .expect("append"),
                i
            );
        }
        for i in 0..20 {
            assert_eq!(
                log.read(i).expect("read").payload,
                common::payload(i, PAYLOAD)
            );
        }
        // Damage every frame on disk: the three kept in memory still read, the others are
        // read from the file and reported damaged.
        let seg = dir.path().join(format!("{:020}.seg", 0));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open");
        f.write_all_at(&vec![0xA5; 20 * FRAME], SEGMENT_HEADER_BYTES as u64)
            .expect("damage");
        for i in 17..20 {
            assert_eq!(
                log.read(i).expect("from memory").payload,
                common::payload(i, PAYLOAD)
            );
        }
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
        // Under the target directory: on the project's disk, which takes O_DIRECT (a tmpfs
        // /tmp would not, and nothing would be kept).
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let mut o = common::opts(dir.path());
        o.recent_bytes_max = 0;
        let (log, _) = common::open(o).await;
        for i in 0..5 {
            log.append(1, common::payload(i, PAYLOAD))
                .await
                .expect("append");
        }
        for i in 0..5 {
            assert_eq!(
                log.read(i).expect("read").payload,
                common::payload(i, PAYLOAD)
            );
        }
        let seg = dir.path().join(format!("{:020}.seg", 0));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open");
        f.write_all_at(
            &[0xA5; FRAME],
            SEGMENT_HEADER_BYTES as u64 + 4 * FRAME as u64,
        )
        .expect("damage");
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
        log.append(1, common::payload(0, PAYLOAD))
            .await
            .expect("append");
        let seg = dir.path().join(format!("{:020}.seg", 0));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open");
        f.write_all_at(&[0xA5; FRAME], SEGMENT_HEADER_BYTES as u64)
            .expect("damage");
        assert!(
            matches!(log.read(0), Err(Error::Corrupt { .. })),
            "read from the file"
        );
    });
}
