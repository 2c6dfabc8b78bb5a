//! A bounded pool of reusable byte buffers, so the make and restore
//! pipelines do not allocate (and page-fault in) a fresh megabyte per chunk.

use crossbeam_channel::{bounded, Receiver, Sender};

/// Buffers handed out and taken back by any thread. It keeps at most its
/// capacity of idle buffers and drops the rest; how many are in use at once
/// is bounded by the pipeline's window, not by the pool.
#[derive(Debug, Clone)]
pub(crate) struct BufferPool {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
}

impl BufferPool {
    /// A pool keeping up to `capacity` idle buffers.
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, rx) = bounded(capacity.max(1));
        Self { tx, rx }
    }

    /// A buffer, reused when one is idle. Its length and contents are what
    /// the last user left: callers set the length they need (`resize` then
    /// only fills what grows, so same-size chunks cost no memset) and
    /// overwrite what they read.
    pub(crate) fn get(&self) -> Vec<u8> {
        self.rx.try_recv().unwrap_or_default()
    }

    /// Gives a buffer back (dropped when the pool is full).
    pub(crate) fn put(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        let _ = self.tx.try_send(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let pool = BufferPool::new(2);
        let mut a = pool.get();
        a.extend_from_slice(&[1; 1000]);
        let ptr = a.as_ptr();
        pool.put(a);
        let b = pool.get();
        assert!(b.capacity() >= 1000 && b.as_ptr() == ptr);
        for _ in 0..5 {
            pool.put(vec![0; 10]);
        }
        assert_eq!(pool.rx.len(), 2, "idle buffers bounded");
        pool.put(Vec::new());
        assert_eq!(pool.rx.len(), 2);
    }
}
