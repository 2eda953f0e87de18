//! One audit entry on disk: `<crc32 hex> <json>\n` (the metadata log's line format), and a
//! reader that walks a segment's lines from the end towards the start in bounded memory.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::Entry;

/// Longest line the store writes or accepts on read. Entries are bounded field by field
/// ([`Entry::bounded`]); the worst case, every byte of every field escaped as `\u00XX`, stays
/// under this.
pub(super) const LINE_BYTES_MAX: usize = 16 << 10;
/// How much of a segment the reverse reader reads at a time.
const BLOCK_BYTES: usize = 64 << 10;

/// The line for `entry`, terminator included.
pub(super) fn encode(entry: &Entry) -> Vec<u8> {
    let mut line = Vec::new();
    crate::checked_line::encode_into(entry, &mut line);
    // Pair assertion: what we write must be what the reader accepts.
    assert!(
        line.len() <= LINE_BYTES_MAX,
        "audit line of {} bytes",
        line.len()
    );
    debug_assert_eq!(parse(&line[..line.len() - 1]).as_ref(), Ok(entry));
    line
}

/// Parses a line without its terminator.
pub(super) fn parse(line: &[u8]) -> Result<Entry, String> {
    crate::checked_line::parse(line)
}

/// What the reverse reader finds, newest first.
#[derive(Debug, PartialEq)]
pub(super) enum RawLine {
    /// A complete line (terminator stripped) starting at byte `start` of the segment.
    Line { start: u64, bytes: Vec<u8> },
    /// Bytes after the last terminator: a torn append, or one still being written.
    Partial { start: u64 },
    /// A line longer than [`LINE_BYTES_MAX`]: corruption, skipped without buffering it.
    Overlong,
}

/// Walks the lines of `file[..end]` from the end. Holds at most one block plus one line.
pub(super) struct ReverseLines<'a> {
    file: &'a File,
    /// `buf` holds the bytes `[pos, pos + buf.len())` not yet handed out.
    pos: u64,
    buf: Vec<u8>,
    /// Inside an overlong line: its bytes are dropped until its start is found.
    discarding: bool,
}

impl<'a> ReverseLines<'a> {
    pub(super) fn new(file: &'a File, end: u64) -> Self {
        ReverseLines {
            file,
            pos: end,
            buf: Vec::new(),
            discarding: false,
        }
    }

    pub(super) fn next_line(&mut self) -> io::Result<Option<RawLine>> {
        loop {
            // While discarding, a terminator at the very end is the overlong line's start.
            let terminated = !self.discarding && self.buf.last() == Some(&b'\n');
            let content_end = self.buf.len() - usize::from(terminated);
            let boundary = self.buf[..content_end].iter().rposition(|b| *b == b'\n');
            if boundary.is_some() || (self.pos == 0 && !self.buf.is_empty()) {
                let from = boundary.map_or(0, |i| i + 1);
                let start = self.pos + from as u64;
                let bytes = self.buf[from..content_end].to_vec();
                self.buf.truncate(from);
                if std::mem::take(&mut self.discarding) || bytes.len() > LINE_BYTES_MAX {
                    return Ok(Some(RawLine::Overlong));
                }
                if !terminated {
                    return Ok(Some(RawLine::Partial { start }));
                }
                return Ok(Some(RawLine::Line { start, bytes }));
            }
            if self.pos == 0 {
                return Ok(std::mem::take(&mut self.discarding).then_some(RawLine::Overlong));
            }
            if content_end > LINE_BYTES_MAX {
                // No line of ours is this long: drop what we hold of it and keep looking for its
                // start, so a run of garbage (say zeroes after a crash) costs no memory.
                self.discarding = true;
                self.buf.clear();
            }
            let n = BLOCK_BYTES.min(usize::try_from(self.pos).unwrap_or(BLOCK_BYTES));
            self.pos -= n as u64;
            let mut block = vec![0u8; n + self.buf.len()];
            self.file.read_exact_at(&mut block[..n], self.pos)?;
            block[n..].copy_from_slice(&self.buf);
            self.buf = block;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn entry(i: u64) -> Entry {
        Entry {
            at_ms: i,
            actor: "ak_x".into(),
            action: "endpoint.create".into(),
            target: Some(format!("ep_{i}")),
            ip: "127.0.0.1".into(),
            user_agent: None,
        }
    }

    fn kind(l: &RawLine) -> &'static str {
        match l {
            RawLine::Line { .. } => "line",
            RawLine::Partial { .. } => "partial",
            RawLine::Overlong => "overlong",
        }
    }

    fn lines_of(bytes: &[u8]) -> Vec<RawLine> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        let mut r = ReverseLines::new(&f, bytes.len() as u64);
        let mut out = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn reads_lines_backwards_across_blocks() {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for i in 0..5000 {
            starts.push(bytes.len() as u64);
            bytes.extend(encode(&entry(i)));
        }
        assert!(bytes.len() > 3 * BLOCK_BYTES);
        let lines = lines_of(&bytes);
        assert_eq!(lines.len(), 5000);
        for (k, line) in lines.iter().enumerate() {
            let i = 4999 - k;
            let RawLine::Line { start, bytes } = line else {
                panic!("{line:?}")
            };
            assert_eq!(*start, starts[i]);
            assert_eq!(parse(bytes).unwrap(), entry(i as u64));
        }
    }

    #[test]
    fn partial_tail_and_overlong_garbage() {
        let mut bytes = encode(&entry(1));
        bytes.extend(vec![0u8; 3 * BLOCK_BYTES]);
        bytes.push(b'\n');
        bytes.extend(encode(&entry(2)));
        bytes.extend(b"0badf00d {\"at_");
        let lines = lines_of(&bytes);
        let kinds: Vec<&str> = lines.iter().map(kind).collect();
        assert_eq!(kinds, ["partial", "line", "overlong", "line"]);
        assert!(
            matches!(&lines[1], RawLine::Line { bytes, .. } if parse(bytes).unwrap() == entry(2))
        );
        assert!(
            matches!(&lines[3], RawLine::Line { start: 0, bytes } if parse(bytes).unwrap() == entry(1))
        );
        assert!(lines_of(b"").is_empty());
        let kinds: Vec<&str> = lines_of(&vec![7u8; LINE_BYTES_MAX + 5])
            .iter()
            .map(kind)
            .collect();
        assert_eq!(kinds, ["overlong"]);
        let mut terminated = vec![7u8; LINE_BYTES_MAX + 5];
        terminated.push(b'\n');
        let kinds: Vec<&str> = lines_of(&terminated).iter().map(kind).collect();
        assert_eq!(kinds, ["overlong"]);
    }

    #[test]
    fn overlong_line_ending_on_a_block_boundary() {
        // Whatever the alignment of the garbage's first byte against the reader's blocks, the
        // lines around it come out whole.
        let (first, last) = (encode(&entry(1)), encode(&entry(2)));
        for garbage in (BLOCK_BYTES - last.len() - 8)..(BLOCK_BYTES - last.len() + 8) {
            let mut bytes = first.clone();
            bytes.extend(vec![b'x'; garbage]);
            bytes.push(b'\n');
            bytes.extend(&last);
            let lines = lines_of(&bytes);
            let kinds: Vec<&str> = lines.iter().map(kind).collect();
            assert_eq!(kinds, ["line", "overlong", "line"], "garbage {garbage}");
            assert!(
                matches!(&lines[0], RawLine::Line { bytes, .. } if parse(bytes).unwrap() == entry(2))
            );
            assert!(
                matches!(&lines[2], RawLine::Line { start: 0, bytes } if parse(bytes).unwrap() == entry(1))
            );
        }
    }

    #[test]
    fn checksum_guards_the_json() {
        let line = encode(&entry(3));
        let mut bad = line[..line.len() - 1].to_vec();
        let n = bad.len();
        bad[n - 3] ^= 0x01;
        assert_eq!(parse(&bad), Err("checksum mismatch".into()));
        assert!(parse(b"short").is_err());
    }
}
