//! On-disk format fixture: `tests/fixtures/v1/` was written by format version 1 (two sealed
//! segments with index files and an active segment). A format change that cannot read it fails
//! here. Regenerate only for a new format version, into a new directory:
//! `UPDATE_LOG_FIXTURE=1 cargo test -p hookrelay-log --test fixture` (then move it to a new
//! directory and keep v1 with its test).

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;

const RECORDS: u64 = 25;

fn expected(i: u64) -> (u32, u8, Bytes) {
    let epoch = if i < 12 { 1 } else { 2 };
    let payload = format!("hookrelay fixture record {i} ").repeat((i % 4) as usize);
    (epoch, (i % 7) as u8, Bytes::from(payload))
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

fn copy_fixture(to: &Path) {
    for entry in std::fs::read_dir(fixture_dir()).expect("fixture dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[test]
fn version_1_fixture_reads_back() {
    for verify in [true, false] {
        common::run(move || async move {
            let dir = tempfile::tempdir().expect("tempdir");
            copy_fixture(dir.path());
            let mut o = common::opts(dir.path());
            o.verify_sealed_on_open = verify;
            let (log, rec) = common::open(o).await;
            assert_eq!(rec.segments, 3);
            assert_eq!(rec.records, RECORDS);
            assert_eq!(rec.truncated_bytes, 0);
            assert_eq!(rec.next_offset, RECORDS);
            assert_eq!(log.epoch(), 2);
            for i in 0..RECORDS {
                let r = log.read(i).expect("read");
                let (epoch, record_type, payload) = expected(i);
                assert_eq!(
                    (r.offset, r.epoch, r.record_type, r.payload),
                    (i, epoch, record_type, payload)
                );
            }
            assert_eq!(log.reader(0).count() as u64, RECORDS);
            // The fixture's index files were accepted as they are (not rebuilt).
            for base in [0u64, 10] {
                let name = format!("{base:020}.idx");
                assert_eq!(
                    std::fs::read(dir.path().join(&name)).expect("idx"),
                    std::fs::read(fixture_dir().join(&name)).expect("fixture idx"),
                );
            }
        });
    }
}

/// Writes the fixture of the current format into `out`.
async fn write_fixture(out: &std::path::Path) {
    let mut o = common::opts(out);
    o.index_interval_bytes = 64;
    let (log, _) = common::open(o).await;
    log.set_epoch(1);
    for i in 0..RECORDS {
        if i == 12 {
            log.set_epoch(2);
        }
        if i == 10 || i == 20 {
            log.roll().await.expect("roll");
        }
        let (_, record_type, payload) = expected(i);
        log.append(record_type, payload).await.expect("append");
    }
    log.close().await.expect("close");
}

/// The fixture writer itself: what it writes today has the committed fixture's layout (same
/// files, same index files byte for byte). With `UPDATE_LOG_FIXTURE=1` it rewrites the committed
/// fixture instead — only for a new format version.
#[test]
fn fixture_writer_matches_the_committed_fixture() {
    common::run(|| async {
        if std::env::var_os("UPDATE_LOG_FIXTURE").is_some() {
            let out = fixture_dir();
            let _ = std::fs::remove_dir_all(&out);
            write_fixture(&out).await;
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        write_fixture(dir.path()).await;
        let names = |d: &std::path::Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .expect("dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(dir.path()), names(&fixture_dir()));
        for name in names(&fixture_dir()).iter().filter(|n| n.ends_with(".idx")) {
            assert_eq!(
                std::fs::read(dir.path().join(name)).expect("idx"),
                std::fs::read(fixture_dir().join(name)).expect("fixture idx"),
                "{name} differs from the committed fixture"
            );
        }
    });
}
