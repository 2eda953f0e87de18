//! [`Reader`]: sequential iteration over durable records, remembering its byte position so each
//! step reads one frame without an index lookup.

use crate::error::Error;
use crate::log::{Hint, Log, read_at};
use crate::segment::Record;

/// Iterator over durable records from a starting offset (see [`Log::reader`]).
///
/// Yields `Ok(record)` in offset order, `None` at the durable end (not fused: records that
/// become durable later are yielded by later calls), and one `Err` — after which it stops — for
/// an offset that is not retained or a damaged frame.
pub struct Reader {
    log: Log,
    next: u64,
    hint: Option<Hint>,
    failed: bool,
}

impl Reader {
    pub(crate) fn new(log: Log, from: u64) -> Self {
        Reader {
            log,
            next: from,
            hint: None,
            failed: false,
        }
    }

    /// Offset of the record the next call to `next` returns.
    pub fn position(&self) -> u64 {
        self.next
    }
}

impl Iterator for Reader {
    type Item = Result<Record, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let st = self.log.inner.state.borrow();
        if self.next >= st.durable_offset {
            return None;
        }
        match read_at(
            &st,
            self.log.inner.opts.frame_bytes_max,
            self.next,
            self.hint,
        ) {
            Ok((record, base, next_pos)) => {
                assert_eq!(record.offset, self.next, "reader returns offsets in order");
                self.next += 1;
                self.hint = Some((base, next_pos));
                Some(Ok(record))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
