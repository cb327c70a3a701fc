//! Holds the bytes of a WebSocket upgrade's `101` response until the session's first
//! frame (`connected`), so both leave in one `writev`: one TCP segment, one wake-up of
//! the client, where there were two. In a resume storm every reconnect pays the
//! difference; the client reads the same bytes in the same order.
//!
//! The connection's IO is wrapped in [`Holding`]. A handler that answers an upgrade
//! calls [`HoldSwitch::hold`]; hyper's write of the `101` is then kept here (and its
//! flush reported done, which lets hyper hand the connection over). The session calls
//! [`HoldSwitch::release`] before its first write, which goes out behind the held
//! bytes. A flush or shutdown after the release writes what is held first, so
//! nothing is lost if the session closes without a frame; if the connection dies
//! between the two, the client sees it close before any answer, as it would with an
//! upgrade that failed.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering},
    task::{ready, Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Set by the upgrade handler, cleared by the session: whether writes are held.
#[derive(Debug, Default)]
pub struct HoldSwitch(AtomicBool);

impl HoldSwitch {
    /// Writes from now on are kept, not sent (the `101` about to be written).
    pub fn hold(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// The next write sends the held bytes first, with it.
    pub fn release(&self) {
        self.0.store(false, Ordering::Release);
    }

    fn holding(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A connection's IO, with writes held while its [`HoldSwitch`] says so.
pub struct Holding<I, S> {
    io: I,
    switch: S,
    /// Bytes written while holding, and how many of them are sent already. Empty
    /// (no allocation) except between an upgrade's `101` and the session's first write.
    held: Vec<u8>,
    sent: usize,
}

impl<I, S: AsRef<HoldSwitch>> Holding<I, S> {
    pub fn new(io: I, switch: S) -> Self {
        Holding {
            io,
            switch,
            held: Vec::new(),
            sent: 0,
        }
    }
}

impl<I: AsyncWrite + Unpin, S: AsRef<HoldSwitch>> Holding<I, S> {
    /// Writes the held bytes on their own until none are left.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes `bufs` behind whatever is held, in as few calls as the socket allows.
    /// Returns how many bytes of `bufs` (not of the held ones) were written.
    fn poll_write_after_held(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        while self.sent < self.held.len() {
            let left = self.held.len() - self.sent;
            let mut all = Vec::with_capacity(bufs.len() + 1);
            all.push(IoSlice::new(&self.held[self.sent..]));
            all.extend(bufs.iter().map(|b| IoSlice::new(b)));
            let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &all))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < left {
                self.sent += n;
                continue;
            }
            self.held = Vec::new();
            self.sent = 0;
            if n > left {
                return Poll::Ready(Ok(n - left));
            }
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

impl<I: AsyncRead + Unpin, S: Unpin> AsyncRead for Holding<I, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin, S: AsRef<HoldSwitch> + Unpin> AsyncWrite for Holding<I, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.switch.as_ref().holding() {
            let mut n = 0;
            for b in bufs {
                this.held.extend_from_slice(b);
                n += b.len();
            }
            return Poll::Ready(Ok(n));
        }
        this.poll_write_after_held(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.switch.as_ref().holding() {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.switch.as_ref().holding() {
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Records each write call; accepts at most `limit` bytes per call.
    #[derive(Clone, Default)]
    struct Recorder {
        calls: Arc<Mutex<Vec<Vec<u8>>>>,
        limit: usize,
    }

    impl Recorder {
        fn calls(&self) -> Vec<Vec<u8>> {
            self.calls.lock().expect("lock").clone()
        }
        fn bytes(&self) -> Vec<u8> {
            self.calls().concat()
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let limit = if self.limit == 0 {
                usize::MAX
            } else {
                self.limit
            };
            let mut call = Vec::new();
            for b in bufs {
                let take = (limit - call.len()).min(b.len());
                call.extend_from_slice(&b[..take]);
                if call.len() == limit {
                    break;
                }
            }
            let n = call.len();
            self.calls.lock().expect("lock").push(call);
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn without_a_hold_every_write_goes_straight_through() {
        let rec = Recorder::default();
        let mut io = Holding::new(rec.clone(), Arc::new(HoldSwitch::default()));
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .expect("write");
        io.flush().await.expect("flush");
        io.write_all(b"more").await.expect("write");
        assert_eq!(
            rec.calls(),
            vec![b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), b"more".to_vec()]
        );
    }

    #[tokio::test]
    async fn the_held_response_and_the_first_frame_leave_in_one_write() {
        let rec = Recorder::default();
        let switch = Arc::new(HoldSwitch::default());
        let mut io = Holding::new(rec.clone(), switch.clone());
        switch.hold();
        io.write_all(b"HTTP/1.1 101 ").await.expect("write");
        io.write_all(b"Switching\r\n\r\n").await.expect("write");
        io.flush().await.expect("a held flush is done at once");
        assert!(rec.calls().is_empty(), "nothing is sent while held");
        switch.release();
        let frame = [IoSlice::new(b"\x81\x02"), IoSlice::new(b"hi")];
        let n = std::future::poll_fn(|cx| Pin::new(&mut io).poll_write_vectored(cx, &frame))
            .await
            .expect("write");
        assert_eq!(
            n, 4,
            "the count is of the caller's bytes, not the held ones"
        );
        assert_eq!(
            rec.calls(),
            vec![b"HTTP/1.1 101 Switching\r\n\r\n\x81\x02hi".to_vec()]
        );
        io.write_all(b"next").await.expect("write");
        assert_eq!(rec.calls().len(), 2, "later writes pass straight through");
    }

    #[tokio::test]
    async fn partial_writes_keep_every_byte_in_order() {
        for limit in 1..40 {
            let rec = Recorder {
                limit,
                ..Recorder::default()
            };
            let switch = Arc::new(HoldSwitch::default());
            let mut io = Holding::new(rec.clone(), switch.clone());
            switch.hold();
            io.write_all(b"HTTP/1.1 101 Switching\r\n\r\n")
                .await
                .expect("write");
            switch.release();
            io.write_all(b"\x81\x05hello").await.expect("write");
            io.write_all(b"!").await.expect("write");
            assert_eq!(
                rec.bytes(),
                b"HTTP/1.1 101 Switching\r\n\r\n\x81\x05hello!".to_vec(),
                "limit {limit}"
            );
            assert!(rec
                .calls()
                .iter()
                .all(|c| !c.is_empty() && c.len() <= limit));
        }
    }

    #[tokio::test]
    async fn a_flush_or_shutdown_after_the_release_sends_what_is_held() {
        let rec = Recorder::default();
        let switch = Arc::new(HoldSwitch::default());
        let mut io = Holding::new(rec.clone(), switch.clone());
        switch.hold();
        io.write_all(b"HTTP/1.1 101\r\n\r\n").await.expect("write");
        switch.release();
        io.flush().await.expect("flush");
        assert_eq!(rec.bytes(), b"HTTP/1.1 101\r\n\r\n".to_vec());

        let rec = Recorder::default();
        let mut io = Holding::new(rec.clone(), switch.clone());
        switch.hold();
        io.write_all(b"HTTP/1.1 101\r\n\r\n").await.expect("write");
        switch.release();
        io.shutdown().await.expect("shutdown");
        assert_eq!(rec.bytes(), b"HTTP/1.1 101\r\n\r\n".to_vec());
    }
}
