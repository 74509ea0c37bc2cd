//! A byte budget on what an IMAP server may send in answer to one command, so a hostile or broken
//! server cannot fill memory: an endless stream of untagged responses, or one enormous literal,
//! ends the command with [`OverBudget`] once the budget is spent. A literal is refused as soon as
//! its announcement (`{N}` and CRLF) promises more than the budget holds — the IMAP parser would
//! otherwise reserve room for all of it before a single byte of it arrived. [`super::Imap`] sets the budget
//! before every command (larger for a message body, which is bounded by `max_message_size`).
//!
//! The same wrapper gathers what a command writes until it is flushed: async-imap writes a
//! command as four pieces (tag, space, command, CRLF), which over TLS would be four records and
//! four packets; gathered, a command is one write.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::net::Stream;

/// The server sent more for one command than its budget.
#[derive(Debug, thiserror::Error)]
#[error("the server sent more than {limit} bytes in answer to one command; stopped reading")]
pub struct OverBudget {
    /// The budget that was spent.
    pub limit: u64,
}

/// The budget of the command in flight, shared between [`super::Imap`] and its stream.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    left: Arc<AtomicU64>,
    limit: Arc<AtomicU64>,
}

impl Budget {
    /// Allows `bytes` for the next command's answer.
    pub fn set(&self, bytes: u64) {
        self.limit.store(bytes, Ordering::SeqCst);
        self.left.store(bytes, Ordering::SeqCst);
    }

    /// Takes `n` bytes from the budget; `false` when they were not there.
    fn spend(&self, n: u64) -> bool {
        self.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(n)
            })
            .is_ok()
    }
}

/// A connection whose reads are charged to a [`Budget`].
#[derive(Debug)]
pub struct Budgeted {
    /// The connection.
    pub inner: Stream,
    budget: Budget,
    literals: Literals,
    /// Written but not yet sent: sent as one write when flushed.
    pending: Vec<u8>,
}

/// Past this much gathered output a write goes out before the flush (a large literal).
const MAX_PENDING: usize = 64 * 1024;

impl Budgeted {
    /// `inner`, charged to `budget`.
    pub fn new(inner: Stream, budget: Budget) -> Self {
        Self {
            inner,
            budget,
            literals: Literals::Text,
            pending: Vec::new(),
        }
    }

    /// Sends what was gathered; `Pending` until all of it is written.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero)))
                }
                Poll::Ready(Ok(n)) => {
                    self.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Where the reader is in the server's byte stream, to find literal announcements (`{N}` right
/// before CRLF) outside literals: quoted strings cannot hold CR or LF, so that shape means a
/// literal wherever it appears outside one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Literals {
    /// Ordinary response text.
    Text,
    /// Inside `{`, the digits so far.
    Brace(u64),
    /// After `{N}`.
    Closed(u64),
    /// After `{N}` and CR.
    Cr(u64),
    /// Inside a literal, with this many bytes to go.
    Literal(u64),
}

impl Literals {
    /// Scans `bytes`; returns the size of a literal announced in them that is larger than
    /// `allowed`.
    fn scan(&mut self, bytes: &[u8], allowed: u64) -> Option<u64> {
        let mut i = 0;
        while i < bytes.len() {
            if let Literals::Literal(left) = *self {
                let skip = left.min((bytes.len() - i) as u64);
                i += skip as usize;
                *self = if skip == left {
                    Literals::Text
                } else {
                    Literals::Literal(left - skip)
                };
                continue;
            }
            let b = bytes[i];
            *self = match (*self, b) {
                (Literals::Brace(n), b'0'..=b'9') => {
                    Literals::Brace(n.saturating_mul(10).saturating_add(u64::from(b - b'0')))
                }
                (Literals::Brace(n), b'}') => Literals::Closed(n),
                (Literals::Closed(n), b'\r') => Literals::Cr(n),
                (Literals::Cr(n), b'\n') => {
                    if n > allowed {
                        return Some(n);
                    }
                    if n == 0 {
                        Literals::Text
                    } else {
                        Literals::Literal(n)
                    }
                }
                (_, b'{') => Literals::Brace(0),
                _ => Literals::Text,
            };
            i += 1;
        }
        None
    }
}

impl AsyncRead for Budgeted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                let read = fresh.len() as u64;
                let over = || {
                    let limit = this.budget.limit.load(Ordering::SeqCst);
                    Poll::Ready(Err(io::Error::other(OverBudget { limit })))
                };
                if !this.budget.spend(read) {
                    return over();
                }
                let allowed = this.budget.left.load(Ordering::SeqCst);
                if this.literals.scan(fresh, allowed).is_some() {
                    return over();
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Budgeted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.len() + buf.len() > MAX_PENDING {
            match this.poll_send(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            if buf.len() > MAX_PENDING {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

/// Whether `error` (anywhere in its chain, including inside an `io::Error`) is an [`OverBudget`].
pub fn is_over_budget(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(c) = cause {
        if c.is::<OverBudget>() {
            return true;
        }
        if let Some(io) = c.downcast_ref::<io::Error>() {
            if io.get_ref().is_some_and(|inner| inner.is::<OverBudget>()) {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Literals {
        fn scan_all(mut self, bytes: &[u8], allowed: u64) -> Option<u64> {
            self.scan(bytes, allowed)
        }
    }

    /// Spending stops at the budget; a new budget starts over.
    #[test]
    fn spends_and_refuses() {
        let b = Budget::default();
        b.set(10);
        assert!(b.spend(6));
        assert!(!b.spend(5));
        assert!(b.spend(4));
        assert!(!b.spend(1));
        b.set(3);
        assert!(b.spend(3));
        let e = io::Error::other(OverBudget { limit: 3 });
        assert!(is_over_budget(&e));
        assert!(!is_over_budget(&io::Error::other("x")));
    }

    /// Literal announcements are found across chunk boundaries and skipped over; only one that
    /// promises more than allowed is reported.
    #[test]
    fn finds_literals() {
        let mut l = Literals::Text;
        assert_eq!(l.scan(b"* 1 FETCH (BODY[] {5}\r\nab{9", 100), None);
        assert_eq!(l, Literals::Literal(1), "inside the 5-byte literal");
        assert_eq!(l.scan(b"}\r)\r\n* 2 FETCH (BODY[] {10", 100), None);
        assert_eq!(l, Literals::Brace(10));
        assert_eq!(l.scan(b"00}\r", 100), None);
        assert_eq!(l.scan(b"\n", 100), Some(1000));
        let mut l = Literals::Text;
        assert_eq!(l.scan(b"* OK {\"quoted {7} text\"}\r\n", 5), None);
    }

    /// A command's pieces go out together, when flushed, and in order.
    #[tokio::test]
    async fn writes_gather_until_flush() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut server, _) = listener.accept().await.expect("accept");
        let mut stream = Budgeted::new(Stream::Plain(client), Budget::default());
        for piece in [&b"A1"[..], b" ", b"NOOP", b"\r\n"] {
            stream.write_all(piece).await.expect("write");
        }
        let mut buf = [0u8; 16];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(50), server.read(&mut buf)).await;
        assert!(early.is_err(), "nothing is sent before the flush");
        stream.flush().await.expect("flush");
        let mut got = vec![0u8; 9];
        server.read_exact(&mut got).await.expect("read");
        assert_eq!(got, b"A1 NOOP\r\n");
    }

    proptest::proptest! {
        /// How the bytes arrive (in which chunks) does not change what is found.
        #[test]
        fn scanning_is_chunk_blind(
            bytes in proptest::collection::vec(proptest::sample::select(b"{}0123456789\r\nab ".to_vec()), 0..300),
            cut in 0usize..300,
        ) {
            let whole = Literals::Text.scan_all(&bytes, 50);
            let cut = cut.min(bytes.len());
            let mut l = Literals::Text;
            let split = l.scan(&bytes[..cut], 50).or_else(|| l.scan(&bytes[cut..], 50));
            proptest::prop_assert_eq!(whole, split);
        }
    }
}
