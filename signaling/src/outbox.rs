//! A connection's outgoing side, shared by every task that sends to it.
//!
//! Why not a queue drained by the connection's own task: on this server nearly every message
//! (a forwarded offer or answer) is produced by *another* connection's task, and a queue hand-off
//! costs a push, a wake-up of the receiving task (often on the other worker thread: a futex and a
//! context switch) and a scheduler pass before the `write` — measured at about three times the
//! cost of the write itself. So the sender writes the frame straight into the receiver's socket
//! when nothing is queued ahead of it (the usual case), and only what the socket does not take
//! at once is kept here, for the receiver's task to flush when the socket drains. The one
//! exception is the connection's own batch: while its task handles the requests of one read
//! ([`Outbox::cork`]), frames for it collect here and leave in one write when the batch ends
//! (one TLS record and one loopback delivery instead of one per reply: +13 % responses/s under
//! aquatic_ws_load_test, BENCHMARKS.md).
//!
//! Bounds: at most `max_queued` messages and `max_bytes` bytes wait here; beyond that the
//! policy decides (close the slow reader, or drop the message as aquatic_ws does). Across all
//! connections, a [`SendBudget`] bounds the total: once the bytes waiting everywhere exceed it,
//! a message for a connection whose socket is not taking data (a reader that is behind) is not
//! queued, and the policy applies to it as to a full queue; connections that keep up are not
//! affected. Issue 24: with only the per-connection bound (256 messages of up to 64 KiB),
//! 300 stalled readers each paired with an offer flooder took the server to 2.5 GB. A socket
//! that takes nothing for the send timeout is closed by the connection task.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use tokio::sync::Notify;

use crate::metrics::{Kind, Metrics};
use crate::offers::OfferBook;
use crate::ws;

/// The write half of a connection's stream.
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Queued bytes above this are released once written, so a connection that had one burst does
/// not keep its peak buffer.
const KEEP_CAPACITY: usize = 4096;

/// Bytes waiting in every outbox of a server, against one limit.
#[derive(Debug)]
pub struct SendBudget {
    queued: AtomicUsize,
    limit: usize,
}

impl SendBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> SendBudget {
        SendBudget {
            queued: AtomicUsize::new(0),
            limit,
        }
    }

    /// Bytes waiting now, over all connections.
    pub fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }

    fn over(&self, adding: usize) -> bool {
        self.queued.load(Relaxed).saturating_add(adding) > self.limit
    }

    fn add(&self, n: usize) {
        self.queued.fetch_add(n, Relaxed);
    }

    fn sub(&self, n: usize) {
        self.queued.fetch_sub(n, Relaxed);
    }
}

/// What happened to a message handed to [`Outbox::send`].
#[derive(Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Written to the socket or queued.
    Queued,
    /// The queue was full: the connection has been told to close.
    Overflow,
    /// The queue was full and the message was discarded (`--on-full-queue drop`).
    Dropped,
    /// The connection is gone already.
    Closed,
}

/// One message waiting in the buffer.
struct Mark {
    /// Offset in `Inner::buf` just past the message's frame.
    end: usize,
    /// For relayed messages: when their sender's message was read (relay latency metric).
    relayed_at: Option<Instant>,
}

struct Inner {
    io: Option<Writer>,
    /// Encoded frames not yet taken by the socket start at `written`.
    buf: Vec<u8>,
    written: usize,
    marks: VecDeque<Mark>,
    /// The stream holds bytes it has accepted but not sent (TLS records): flush before idle.
    unflushed: bool,
    /// Set when the queue overflowed under the close policy.
    killed: bool,
    /// The connection's task is handling a batch of requests it read together: frames wait
    /// in `buf` and go out in one write (one TLS record, one segment) when it ends.
    corked: bool,
    /// Bytes ever taken by the socket: a flush that times out while this moves is a busy
    /// connection, not a stuck one.
    progress: u64,
    /// The socket refused bytes at the last write and has not taken everything since: a
    /// reader that is behind (see [`SendBudget`]).
    blocked: bool,
}

impl Inner {
    fn queued(&self) -> usize {
        self.marks.len()
    }

    fn idle(&self) -> bool {
        self.written == self.buf.len() && !self.unflushed
    }

    /// Writes and flushes as much as the socket takes now. `Ready(Ok)` once everything is
    /// out; `Pending` with `cx`'s waker registered otherwise.
    fn pump(
        &mut self,
        cx: &mut Context<'_>,
        metrics: &Metrics,
        queued: &AtomicUsize,
        budget: &SendBudget,
    ) -> Poll<std::io::Result<()>> {
        let r = self.pump_inner(cx, metrics, queued, budget);
        self.blocked = r.is_pending();
        r
    }

    fn pump_inner(
        &mut self,
        cx: &mut Context<'_>,
        metrics: &Metrics,
        queued: &AtomicUsize,
        budget: &SendBudget,
    ) -> Poll<std::io::Result<()>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()));
        };
        while self.written < self.buf.len() {
            match std::pin::Pin::new(&mut *io).poll_write(cx, &self.buf[self.written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    budget.sub(n);
                    self.progress += n as u64;
                    self.unflushed = true;
                    let now = Instant::now();
                    while self.marks.front().is_some_and(|m| m.end <= self.written) {
                        let m = self.marks.pop_front().expect("checked");
                        if let Some(t) = m.relayed_at {
                            metrics.relay_latency(now.saturating_duration_since(t));
                        }
                    }
                    queued.store(self.marks.len(), Relaxed);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // All taken: reset the buffer (and give back a burst's memory).
        self.written = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        if self.unflushed {
            match std::pin::Pin::new(&mut *io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The sending side of one connection.
///
/// `repr(C)`, fields in this order: what an offering task reads of a peer it picks (the
/// `Arc`'s count, `queued`, `max_queued`, `drop_when_full`) sits at the start, in the cache
/// line the count already brings in. Those reads were a fifth of `Tracker::announce`'s
/// samples, nearly all of them cache misses.
#[repr(C)]
pub struct Outbox {
    /// `inner`'s message count, stored under its lock: [`Outbox::has_room`] is asked for
    /// every offer picked, by other connections' tasks, and reads it without the lock.
    queued: AtomicUsize,
    max_queued: usize,
    drop_when_full: bool,
    /// Most bytes waiting here (messages; control frames are never refused).
    max_bytes: usize,
    /// The server's total.
    budget: Arc<SendBudget>,
    /// Unique per server run.
    pub id: u64,
    inner: Mutex<Inner>,
    /// Wakes the connection's task: bytes wait that the socket did not take, or the
    /// connection must close.
    wake: Notify,
    /// Offers sent to this connection that it may answer; a lock of its own, taken by the
    /// offering connections' tasks and by this connection's own when it answers.
    offers: Mutex<OfferBook>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("id", &self.id).finish()
    }
}

impl Outbox {
    /// An outbox writing to `io` that holds at most `max_queued` messages the socket has not
    /// taken. `io` is `None` for a detached outbox (tests of the tracker).
    pub fn new(id: u64, io: Option<Writer>, max_queued: usize, drop_when_full: bool) -> Outbox {
        Outbox {
            id,
            inner: Mutex::new(Inner {
                io,
                buf: Vec::new(),
                written: 0,
                marks: VecDeque::new(),
                unflushed: false,
                killed: false,
                corked: false,
                progress: 0,
                blocked: false,
            }),
            wake: Notify::new(),
            queued: AtomicUsize::new(0),
            max_queued: max_queued.max(1),
            drop_when_full,
            max_bytes: usize::MAX,
            budget: Arc::new(SendBudget::new(usize::MAX)),
            offers: Mutex::new(OfferBook::default()),
        }
    }

    /// Bounds the bytes waiting here to `max_bytes`, and counts them against the server's
    /// `budget` (without this: no byte bound, a budget of its own).
    pub fn with_byte_limits(mut self, max_bytes: usize, budget: Arc<SendBudget>) -> Outbox {
        self.max_bytes = max_bytes.max(1);
        self.budget = budget;
        self
    }

    /// The offers this connection may answer.
    pub fn offers(&self) -> MutexGuard<'_, OfferBook> {
        self.offers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent state (nothing half-applied that
        // matters beyond one connection); recover rather than poison every sender.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Under `--on-full-queue drop`, whether a message sent now would be kept; the tracker
    /// skips encoding (and remembering) offers that would only be discarded. Always true
    /// under `close`, where a full queue ends the connection instead.
    pub fn has_room(&self) -> bool {
        !self.drop_when_full || self.queued.load(Relaxed) < self.max_queued
    }

    /// Messages waiting for the socket (for tests).
    pub fn queued(&self) -> usize {
        self.lock().queued()
    }

    /// Sends a text message: straight into the socket if nothing waits ahead of it, else
    /// queued behind, within the bound.
    pub fn send(
        &self,
        text: &str,
        kind: Kind,
        relayed_at: Option<Instant>,
        metrics: &Metrics,
    ) -> SendOutcome {
        self.send_frame(
            |b| ws::write_text(b, text),
            kind,
            relayed_at,
            metrics,
            false,
        )
    }

    /// Queues a control frame (ping, pong, close); never dropped by the queue bound.
    pub fn send_control(&self, frame: impl FnOnce(&mut Vec<u8>), metrics: &Metrics) -> SendOutcome {
        self.send_frame(frame, Kind::Failure, None, metrics, true)
    }

    fn send_frame(
        &self,
        frame: impl FnOnce(&mut Vec<u8>),
        kind: Kind,
        relayed_at: Option<Instant>,
        metrics: &Metrics,
        control: bool,
    ) -> SendOutcome {
        let mut g = self.lock();
        if g.io.is_none() || g.killed {
            return SendOutcome::Closed;
        }
        if !control && g.queued() >= self.max_queued {
            if self.drop_when_full {
                return SendOutcome::Dropped;
            }
            return self.kill(g);
        }
        let was_idle = g.idle();
        let before = g.buf.len();
        frame(&mut g.buf);
        let end = g.buf.len();
        let added = end - before;
        if !control
            && (before - g.written + added > self.max_bytes
                || (g.blocked && self.budget.over(added)))
        {
            // Over this connection's bytes, or a reader that is behind while the server's
            // total is over its budget: as a full queue.
            g.buf.truncate(before);
            if self.drop_when_full {
                return SendOutcome::Dropped;
            }
            return self.kill(g);
        }
        self.budget.add(added);
        g.marks.push_back(Mark { end, relayed_at });
        self.queued.store(g.marks.len(), Relaxed);
        if !control {
            metrics.outgoing(kind, 1);
        }
        if g.corked {
            if g.queued() < self.max_queued {
                // Written when the connection's task ends its batch.
                return SendOutcome::Queued;
            }
            // A batch as long as the queue's bound goes out now: the bound (and `has_room`)
            // counts what the socket refused, not what the cork held back.
        } else if !was_idle {
            // The connection's task is already flushing (or has been woken to).
            return SendOutcome::Queued;
        }
        // Nothing ahead of us and nobody waiting on the socket (or a full cork): write now.
        self.write_now(g, metrics)
    }

    /// The queue overflowed under the close policy: the connection is to close, and what it
    /// had waiting is dropped now (not when its task gets to close it: that task may be
    /// waiting on the stalled socket for the send timeout).
    fn kill(&self, mut g: MutexGuard<'_, Inner>) -> SendOutcome {
        g.killed = true;
        self.budget.sub(g.buf.len() - g.written);
        g.buf = Vec::new();
        g.written = 0;
        g.marks.clear();
        self.queued.store(0, Relaxed);
        drop(g);
        self.wake.notify_one();
        SendOutcome::Overflow
    }

    /// Writes what `g` holds as far as the socket takes it now. A no-op waker is right here: if
    /// the socket does not take everything, the connection's task is woken and polls again with
    /// its own waker; it also sees a failure on its next read or flush.
    fn write_now(&self, mut g: MutexGuard<'_, Inner>, metrics: &Metrics) -> SendOutcome {
        let mut cx = Context::from_waker(Waker::noop());
        let outcome = match g.pump(&mut cx, metrics, &self.queued, &self.budget) {
            Poll::Ready(Ok(())) => return SendOutcome::Queued,
            Poll::Pending => SendOutcome::Queued,
            Poll::Ready(Err(_)) => {
                g.io = None;
                SendOutcome::Closed
            }
        };
        drop(g);
        self.wake.notify_one();
        outcome
    }

    /// Holds what is sent to this connection (its replies, and what others relay to it) until
    /// [`Outbox::uncork`]: the connection's task calls it around the requests of one read, so
    /// that the replies to a burst of requests leave in one write instead of one each.
    pub fn cork(&self) {
        self.lock().corked = true;
    }

    /// Ends [`Outbox::cork`] and writes what it held, as far as the socket takes it now (the
    /// rest is the connection task's to flush, as after any write the socket did not take).
    pub fn uncork(&self, metrics: &Metrics) {
        let mut g = self.lock();
        g.corked = false;
        if g.idle() || g.io.is_none() {
            return;
        }
        self.write_now(g, metrics);
    }

    /// Resolves when the connection's task has something to do: bytes to flush or a kill.
    pub async fn wanted(&self) {
        self.wake.notified().await;
    }

    /// Whether the queue overflowed under the close policy.
    pub fn killed(&self) -> bool {
        self.lock().killed
    }

    /// Flushes everything waiting (the connection task's side); fails when the socket takes
    /// nothing for `limit`. The timer is armed only if the first attempt cannot finish (nearly
    /// every flush completes at once; a timer per flush cost a timer-wheel insert and removal).
    pub async fn flush(&self, metrics: &Metrics, limit: Duration) -> Result<(), FlushError> {
        let mut before = {
            let mut cx = Context::from_waker(Waker::noop());
            let mut g = self.lock();
            match g.pump(&mut cx, metrics, &self.queued, &self.budget) {
                Poll::Ready(Ok(())) => return Ok(()),
                Poll::Ready(Err(_)) => return Err(FlushError::Io),
                Poll::Pending => g.progress,
            }
        };
        loop {
            let pumped = std::future::poll_fn(|cx| {
                self.lock().pump(cx, metrics, &self.queued, &self.budget)
            });
            let r = tokio::select! {
                biased;
                // A kill must not wait for the stalled socket (see `kill`).
                () = self.wake.notified() => {
                    if self.killed() {
                        return Err(FlushError::Killed);
                    }
                    continue;
                }
                r = tokio::time::timeout(limit, pumped) => r,
            };
            match r {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(_)) => return Err(FlushError::Io),
                Err(_) => {
                    let now = self.lock().progress;
                    if now == before {
                        return Err(FlushError::Timeout);
                    }
                    before = now;
                }
            }
        }
    }

    /// Detaches the writer (no more sends succeed) and returns it for a final close frame.
    pub fn close(&self) -> Option<Writer> {
        let mut g = self.lock();
        self.budget.sub(g.buf.len() - g.written);
        g.buf = Vec::new();
        g.written = 0;
        g.marks.clear();
        self.queued.store(0, Relaxed);
        g.io.take()
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // What never reached the socket no longer waits.
        let g = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        self.budget.sub(g.buf.len() - g.written);
    }
}

/// Why a flush failed.
#[derive(Debug, PartialEq, Eq)]
pub enum FlushError {
    /// The socket failed or closed.
    Io,
    /// The socket took nothing for the limit: a slow reader.
    Timeout,
    /// The queue overflowed meanwhile (close policy): a slow reader.
    Killed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn text_of(frames: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < frames.len() {
            let r = ws::payload_range(&frames[at..]).unwrap();
            out.push(String::from_utf8(frames[at + r.start..at + r.end].to_vec()).unwrap());
            at += r.end;
        }
        out
    }

    #[tokio::test]
    async fn writes_through_when_idle_and_queues_behind_a_full_socket() {
        let m = Metrics::default();
        // A pipe with room for ~1 KiB: the first messages go straight in, the rest wait.
        let (w, mut r) = tokio::io::duplex(1024);
        let ob = Outbox::new(1, Some(Box::new(w)), 100, false);
        let msg = "z".repeat(300);
        for _ in 0..10 {
            assert_eq!(ob.send(&msg, Kind::Offer, None, &m), SendOutcome::Queued);
        }
        assert!(ob.queued() >= 6, "{} queued", ob.queued());
        // The connection task flushes while the reader drains.
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut chunk = [0u8; 512];
            while all.len() < 10 * 302 {
                let n = r.read(&mut chunk).await.unwrap();
                all.extend_from_slice(&chunk[..n]);
            }
            all
        });
        ob.flush(&m, Duration::from_secs(5)).await.unwrap();
        assert_eq!(ob.queued(), 0);
        let got = text_of(&reader.await.unwrap());
        assert_eq!(got, vec![msg; 10]);
    }

    /// A socket that takes everything and records the size of each write it was given.
    struct Writes(std::sync::Arc<Mutex<Vec<usize>>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.lock().unwrap().push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_corked_batch_leaves_in_one_write_and_is_never_held_against_the_bound() {
        let m = Metrics::default();
        let writes = std::sync::Arc::new(Mutex::new(Vec::new()));
        // Close policy, 4 messages at most: a batch of 10 replies must neither kill nor drop.
        let ob = Outbox::new(1, Some(Box::new(Writes(writes.clone()))), 4, false);
        let frame = 2 + "reply".len();
        ob.cork();
        for _ in 0..3 {
            assert_eq!(
                ob.send("reply", Kind::Announce, None, &m),
                SendOutcome::Queued
            );
        }
        assert!(writes.lock().unwrap().is_empty(), "held while corked");
        ob.uncork(&m);
        assert_eq!(*writes.lock().unwrap(), vec![3 * frame]);
        assert_eq!(ob.queued(), 0);

        writes.lock().unwrap().clear();
        ob.cork();
        for _ in 0..10 {
            assert_eq!(
                ob.send("reply", Kind::Announce, None, &m),
                SendOutcome::Queued
            );
            assert!(ob.has_room());
        }
        ob.uncork(&m);
        assert!(!ob.killed());
        assert_eq!(
            *writes.lock().unwrap(),
            vec![4 * frame, 4 * frame, 2 * frame]
        );

        // Uncorked, a message is written through at once again.
        writes.lock().unwrap().clear();
        assert_eq!(
            ob.send("reply", Kind::Announce, None, &m),
            SendOutcome::Queued
        );
        assert_eq!(*writes.lock().unwrap(), vec![frame]);
    }

    #[tokio::test]
    async fn full_queue_closes_or_drops_by_policy() {
        let m = Metrics::default();
        let (w, _r) = tokio::io::duplex(64);
        let ob = Outbox::new(1, Some(Box::new(w)), 3, false);
        let outcomes: Vec<_> = (0..6)
            .map(|_| ob.send(&"q".repeat(100), Kind::Offer, None, &m))
            .collect();
        assert!(outcomes.contains(&SendOutcome::Overflow), "{outcomes:?}");
        assert!(ob.killed());
        assert_eq!(ob.send("late", Kind::Offer, None, &m), SendOutcome::Closed);

        let (w, _r) = tokio::io::duplex(64);
        let ob = Outbox::new(2, Some(Box::new(w)), 3, true);
        let outcomes: Vec<_> = (0..6)
            .map(|_| ob.send(&"q".repeat(100), Kind::Offer, None, &m))
            .collect();
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| **o == SendOutcome::Dropped)
                .count(),
            3
        );
        assert!(!ob.killed());
        assert!(!ob.has_room());
    }

    #[tokio::test]
    async fn a_reader_that_takes_nothing_times_out() {
        let m = Metrics::default();
        let (w, _r) = tokio::io::duplex(16);
        let ob = Outbox::new(1, Some(Box::new(w)), 10, false);
        ob.send(&"x".repeat(100), Kind::Offer, None, &m);
        assert_eq!(
            ob.flush(&m, Duration::from_millis(50)).await,
            Err(FlushError::Timeout)
        );
    }
}
