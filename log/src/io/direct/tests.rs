use std::io::Write as _;
use std::os::unix::fs::FileExt as _;

use proptest::prelude::*;

use super::*;

/// A file holding `prefix`, opened read + write.
fn file_with(prefix: &[u8]) -> (tempfile::NamedTempFile, File) {
    let mut tmp = tempfile::NamedTempFile::new().expect("temp file");
    tmp.write_all(prefix).expect("write prefix");
    let f = tmp.reopen().expect("reopen");
    (tmp, f)
}

/// Applies a staged write to `model` (the file's bytes) as the device would.
fn apply(model: &mut Vec<u8>, buf: &AlignedBuf, start: u64) {
    let start = start as usize;
    let end = start + buf.as_slice().len();
    if model.len() < end {
        model.resize(end, 0);
    }
    model[start..end].copy_from_slice(buf.as_slice());
}

#[test]
fn aligned_buffers_are_block_aligned_and_zeroed() {
    for min in [0, 1, 4095, 4096, 4097, 70_000] {
        let b = AlignedBuf::zeroed(min);
        assert_eq!(
            b.ptr.as_ptr() as usize % BLOCK as usize,
            0,
            "memory of {min}"
        );
        assert_eq!(b.capacity() % BLOCK as usize, 0);
        assert!(b.capacity() >= min.max(1));
        assert!(b.as_slice().is_empty());
        // SAFETY: the whole capacity is initialised (zeroed on allocation).
        let all = unsafe { std::slice::from_raw_parts(b.ptr.as_ptr(), b.cap) };
        assert!(all.iter().all(|&x| x == 0));
    }
}

proptest! {
    /// Appends of any sizes from an unaligned start: every staged write is aligned in position
    /// and length, begins with the bytes already there, and the file reads back as the appends
    /// in order followed by zeros only.
    #[test]
    fn appends_read_back_in_order(
        head in proptest::collection::vec(any::<u8>(), 1..200),
        sizes in proptest::collection::vec(1usize..20_000, 1..40),
    ) {
        let (_tmp, f) = file_with(&head);
        let mut tail = DirectTail::new(f);
        let mut model = head.clone();
        let mut expect = head.clone();
        let mut pos = head.len() as u64;
        for (i, n) in sizes.into_iter().enumerate() {
            let data: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8 | 1).collect();
            let (buf, start) = tail.stage(&data, pos).expect("stage");
            prop_assert_eq!(start % BLOCK, 0);
            prop_assert_eq!(buf.as_slice().len() as u64 % BLOCK, 0);
            prop_assert!(start <= pos && start + buf.as_slice().len() as u64 >= pos + n as u64);
            let before = (pos - start) as usize;
            prop_assert_eq!(&buf.as_slice()[..before], &expect[start as usize..pos as usize]);
            apply(&mut model, &buf, start);
            expect.extend_from_slice(&data);
            pos += n as u64;
            tail.finish(buf, start, pos, true);
        }
        prop_assert_eq!(&model[..expect.len()], &expect[..]);
        prop_assert!(model[expect.len()..].iter().all(|&b| b == 0));
    }
}

#[test]
fn a_write_elsewhere_or_after_a_failure_reads_its_partial_block_from_the_file() {
    let on_disk: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8 + 1).collect();
    let (_tmp, f) = file_with(&on_disk);
    let mut tail = DirectTail::new(f);

    // A first write at 9000 (a reopened segment): the block from 8192 comes from the file.
    let (buf, start) = tail.stage(b"abc", 9000).expect("stage");
    assert_eq!(start, 8192);
    assert_eq!(&buf.as_slice()[..808], &on_disk[8192..9000]);
    assert_eq!(&buf.as_slice()[808..811], b"abc");
    assert!(buf.as_slice()[811..].iter().all(|&b| b == 0));
    // The write failed: nothing of it is assumed to be on disk.
    tail.finish(buf, start, 9003, false);
    let (buf, start) = tail.stage(b"xyz", 9003).expect("stage");
    assert_eq!(start, 8192);
    assert_eq!(
        &buf.as_slice()[..811],
        &on_disk[8192..9003],
        "read back, not remembered"
    );
    tail.finish(buf, start, 9006, true);

    // The remembered tail serves the next append without a read: make the file say otherwise
    // and see the remembered bytes win.
    tail.plain
        .write_all_at(&[0xEE; 16], 9000)
        .expect("scribble");
    let (buf, _) = tail.stage(b"!", 9006).expect("stage");
    assert_eq!(&buf.as_slice()[808..811], &on_disk[9000..9003]);
    assert_eq!(&buf.as_slice()[811..815], b"xyz!");
}

#[test]
fn direct_writes_land_on_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("seg");
    let header = vec![7u8; 32];
    std::fs::write(&path, &header).expect("create");
    let Some(handle) = open(&path).expect("open") else {
        // This filesystem refuses O_DIRECT: `open` says so instead of failing, and the log
        // writes buffered. Nothing more to check here.
        return;
    };
    let mut tail = DirectTail::new(File::open(&path).expect("plain"));
    let mut expect = header.clone();
    let mut pos = header.len() as u64;
    for n in [1, 4000, 95, 8192, 3] {
        let data = vec![n as u8; n];
        let (buf, start) = tail.stage(&data, pos).expect("stage");
        handle
            .write_all_at(buf.as_slice(), start)
            .expect("direct write");
        pos += n as u64;
        tail.finish(buf, start, pos, true);
        expect.extend_from_slice(&data);
    }
    let got = std::fs::read(&path).expect("read back");
    assert_eq!(&got[..expect.len()], &expect[..]);
    assert_eq!(got.len() as u64, pos.next_multiple_of(BLOCK));
    assert!(got[expect.len()..].iter().all(|&b| b == 0));
}
