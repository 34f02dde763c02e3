//! A connection's ordered queue of plaintext waiting to be encrypted and sent.
//!
//! One queue per connection keeps responses (and later WebSocket frames) in order.
//! Chunks are owned bytes or shared buffers (a static file, a broadcast frame) so the
//! same bytes queued for many connections are stored once. `len` counts every queued
//! byte, shared ones included: it is what the per-connection output cap is checked
//! against.

use std::collections::VecDeque;
use std::sync::Arc;

#[derive(Debug)]
enum Bytes {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Shared(v) => v,
        }
    }
}

#[derive(Debug)]
struct Chunk {
    bytes: Bytes,
    /// Bytes of this chunk already handed on.
    sent: usize,
}

impl Chunk {
    fn rest(&self) -> &[u8] {
        &self.bytes.as_slice()[self.sent..]
    }
}

/// Plaintext waiting for TLS, in order.
///
/// The first chunk lives inline: most of the time a connection has one frame or one
/// response queued, and a broadcast then costs no allocation per recipient. Only a
/// second chunk allocates `rest`.
#[derive(Debug, Default)]
pub struct OutQueue {
    /// The chunk being sent; `None` only when the queue is empty.
    head: Option<Chunk>,
    /// Chunks after `head`, in order.
    rest: VecDeque<Chunk>,
    len: usize,
}

impl OutQueue {
    /// Queued bytes not yet handed to TLS.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push_owned(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        // Small pieces join the previous owned chunk: fewer chunks, fewer TLS records.
        let last = match self.rest.back_mut() {
            Some(last) => Some(last),
            None => self.head.as_mut(),
        };
        if let Some(Chunk {
            bytes: Bytes::Owned(last),
            ..
        }) = last
            && last.len() + bytes.len() <= 16 * 1024
        {
            self.len += bytes.len();
            last.extend_from_slice(&bytes);
            return;
        }
        self.push(Bytes::Owned(bytes));
    }

    pub fn push_shared(&mut self, bytes: Arc<[u8]>) {
        if bytes.is_empty() {
            return;
        }
        self.push(Bytes::Shared(bytes));
    }

    fn push(&mut self, bytes: Bytes) {
        self.len += bytes.as_slice().len();
        let chunk = Chunk { bytes, sent: 0 };
        if self.head.is_none() {
            self.head = Some(chunk);
        } else {
            self.rest.push_back(chunk);
        }
    }

    /// The next contiguous bytes to send, as a slice; may be shorter than `len()`.
    pub fn front(&self) -> &[u8] {
        self.head.as_ref().map_or(&[], Chunk::rest)
    }

    /// Copies up to `max` queued bytes (across chunks) into `buf`, without consuming.
    pub fn gather(&self, buf: &mut Vec<u8>, max: usize) {
        buf.clear();
        for chunk in self.head.iter().chain(&self.rest) {
            let rest = chunk.rest();
            let take = rest.len().min(max - buf.len());
            buf.extend_from_slice(&rest[..take]);
            if buf.len() == max {
                break;
            }
        }
    }

    /// Whether more than one chunk is queued (worth gathering into one TLS record).
    pub fn is_fragmented(&self) -> bool {
        !self.rest.is_empty()
    }

    /// Drops `n` bytes from the front.
    pub fn consume(&mut self, mut n: usize) {
        self.len -= n.min(self.len);
        while n > 0 {
            let Some(head) = self.head.as_mut() else {
                return;
            };
            let rest = head.rest().len();
            if n < rest {
                head.sent += n;
                return;
            }
            n -= rest;
            self.head = self.rest.pop_front();
        }
    }

    /// Drops everything not yet started. A chunk partly handed on is kept whole, so the
    /// peer never receives a cut frame; chunks always hold whole frames or responses.
    pub fn drop_unstarted(&mut self) {
        self.head = self.head.take().filter(|c| c.sent > 0);
        self.rest = VecDeque::new();
        self.len = self.head.as_ref().map_or(0, |c| c.rest().len());
    }

    /// Returns the memory of an empty queue (idle connections should hold none).
    pub fn shrink_if_empty(&mut self) {
        if self.head.is_none() && self.rest.capacity() > 0 {
            self.rest = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_gather_and_consume() {
        let mut q = OutQueue::default();
        q.push_owned(b"abc".to_vec());
        q.push_owned(b"de".to_vec());
        q.push_shared(Arc::from(&b"fgh"[..]));
        q.push_owned(b"ij".to_vec());
        assert_eq!(q.len(), 10);
        assert_eq!(q.front(), b"abcde", "small owned pieces are joined");
        let mut buf = Vec::new();
        q.gather(&mut buf, 7);
        assert_eq!(buf, b"abcdefg");
        q.consume(4);
        assert_eq!(q.front(), b"e");
        q.gather(&mut buf, 100);
        assert_eq!(buf, b"efghij");
        q.consume(3);
        assert_eq!(q.front(), b"h");
        q.consume(3);
        assert!(q.is_empty());
        q.shrink_if_empty();
        assert_eq!(q.front(), b"");
    }

    #[test]
    fn one_queued_chunk_allocates_nothing() {
        let mut q = OutQueue::default();
        let frame: Arc<[u8]> = Arc::from(&b"frame"[..]);
        q.push_shared(frame.clone());
        assert_eq!(q.rest.capacity(), 0, "the first chunk is held inline");
        q.push_shared(frame.clone());
        assert_eq!(q.front(), b"frame");
        assert!(q.is_fragmented());
        q.consume(7);
        assert_eq!(q.front(), b"ame");
        assert!(!q.is_fragmented());
        q.consume(3);
        assert!(q.is_empty());
        q.shrink_if_empty();
        assert_eq!(q.rest.capacity(), 0);
        assert_eq!(Arc::strong_count(&frame), 1, "sent chunks are released");
    }

    #[test]
    fn drop_unstarted_keeps_a_partly_sent_chunk() {
        let mut q = OutQueue::default();
        q.push_shared(Arc::from(&b"frame1"[..]));
        q.push_shared(Arc::from(&b"frame2"[..]));
        q.drop_unstarted();
        assert!(q.is_empty());
        q.push_shared(Arc::from(&b"frame1"[..]));
        q.push_shared(Arc::from(&b"frame2"[..]));
        q.consume(2);
        q.drop_unstarted();
        assert_eq!(q.len(), 4);
        assert_eq!(q.front(), b"ame1");
    }
}
