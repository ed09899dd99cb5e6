//! A connection's bounded outbound queue.
//!
//! Everything a connection is sent (room messages from the hub, replies,
//! pings, a close) goes through here. Producers never wait: a push either
//! fits within the frame and byte limits or marks the connection as a slow
//! consumer (close 4508), drops what was still queued and returns at once, so
//! one reader that stops reading never slows the others. The single consumer,
//! the connection's task, takes everything queued in one go and writes it as
//! one batch with one flush.
//!
//! An idle outbox owns no heap memory: the queue is allocated on demand and
//! handed whole to the writer, which frees it once written.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use roomcast_protocol::close;

/// What the writer is asked to send.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// An encoded protocol frame (text or binary by the connection's codec).
    Frame(Bytes),
    /// A message that is text or binary of its own, whatever the codec
    /// (the echo endpoint, `connection::echo`).
    Message { bytes: Bytes, binary: bool },
    /// A WebSocket ping.
    Ping,
    /// Nothing to write: wakes the task to finish a half-written direct
    /// frame (see [`crate::direct_write`]), which it does before any write.
    FinishDirect,
}

/// What [`Outbox::direct_or_push`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The socket is the caller's for one direct write.
    Claimed,
    /// Frames were queued or being written: the frame is queued behind them.
    Queued,
}

/// The close a connection was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    pub code: u16,
    pub reason: &'static str,
}

struct State {
    queue: VecDeque<Outgoing>,
    bytes: usize,
    /// The writer waiting for something to write ([`Outbox::next`]).
    data_waker: Option<Waker>,
    /// The writer stuck in a write, waiting only for a close
    /// ([`Outbox::closing`]): new frames must not wake it (a stalled
    /// reader would otherwise cost a wake-up per message).
    close_waker: Option<Waker>,
    close: Option<CloseRequest>,
    /// The writer has taken a batch it may not have written yet (cleared
    /// when it asks for the next one).
    in_flight: bool,
}

impl State {
    fn wake_all(&mut self) -> (Option<Waker>, Option<Waker>) {
        (self.data_waker.take(), self.close_waker.take())
    }
}

fn wake(wakers: (Option<Waker>, Option<Waker>)) {
    if let Some(w) = wakers.0 {
        w.wake();
    }
    if let Some(w) = wakers.1 {
        w.wake();
    }
}

pub struct Outbox {
    state: Mutex<State>,
    max_frames: usize,
    max_bytes: usize,
}

/// Why a push was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The push overflowed the limits: the connection is now closing with 4508.
    Overflow,
    /// The connection is already closing.
    Closing,
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                bytes: 0,
                data_waker: None,
                close_waker: None,
                close: None,
                in_flight: false,
            }),
            max_frames,
            max_bytes,
        }
    }

    /// Queues an encoded frame.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let len = frame.len();
        self.push_locked(self.state.lock(), Outgoing::Frame(frame), len)
    }

    /// Queues a text or binary message (counted like a frame).
    pub fn push_message(&self, bytes: Bytes, binary: bool) -> Result<(), PushError> {
        let len = bytes.len();
        self.push_locked(self.state.lock(), Outgoing::Message { bytes, binary }, len)
    }

    fn push_locked(
        &self,
        mut s: MutexGuard<'_, State>,
        item: Outgoing,
        len: usize,
    ) -> Result<(), PushError> {
        if s.close.is_some() {
            return Err(PushError::Closing);
        }
        let (wakers, result) = if s.queue.len() >= self.max_frames || s.bytes + len > self.max_bytes
        {
            s.queue = VecDeque::new();
            s.bytes = 0;
            s.close = Some(CloseRequest {
                code: close::SLOW_CONSUMER,
                reason: "slow consumer: outbound queue overflow",
            });
            (s.wake_all(), Err(PushError::Overflow))
        } else {
            s.bytes += len;
            s.queue.push_back(item);
            ((s.data_waker.take(), None), Ok(()))
        };
        drop(s);
        wake(wakers);
        result
    }

    /// Either takes the socket for a direct write of `frame` or queues it,
    /// under one lock. Direct only when nothing is queued or being written,
    /// so the frame cannot overtake an earlier one; `claim` takes the socket
    /// (see [`crate::direct_write::Wire::claim_direct`]) under the queue's lock, so
    /// nothing queued later can be written before the direct write ends.
    pub fn direct_or_push(
        &self,
        frame: &Bytes,
        claim: impl FnOnce() -> bool,
    ) -> Result<Claim, PushError> {
        self.direct_or_push_item(frame.len(), || Outgoing::Frame(frame.clone()), claim)
    }

    /// [`Outbox::direct_or_push`] for a text or binary message.
    pub fn direct_or_push_message(
        &self,
        bytes: &Bytes,
        binary: bool,
        claim: impl FnOnce() -> bool,
    ) -> Result<Claim, PushError> {
        let item = || Outgoing::Message {
            bytes: bytes.clone(),
            binary,
        };
        self.direct_or_push_item(bytes.len(), item, claim)
    }

    fn direct_or_push_item(
        &self,
        len: usize,
        item: impl FnOnce() -> Outgoing,
        claim: impl FnOnce() -> bool,
    ) -> Result<Claim, PushError> {
        let s = self.state.lock();
        if s.close.is_none() && s.queue.is_empty() && !s.in_flight && claim() {
            return Ok(Claim::Claimed);
        }
        self.push_locked(s, item(), len).map(|()| Claim::Queued)
    }

    /// Wakes the writer to finish a half-written direct frame.
    pub fn finish_direct(&self) {
        self.push_uncounted(Outgoing::FinishDirect);
    }

    /// Queues a WebSocket ping (not counted against the limits).
    pub fn ping(&self) {
        self.push_uncounted(Outgoing::Ping);
    }

    /// Queues `item` outside the limits, unless the connection is closing
    /// (the close path finishes a half-written direct frame itself).
    fn push_uncounted(&self, item: Outgoing) {
        let waker = {
            let mut s = self.state.lock();
            if s.close.is_some() {
                return;
            }
            s.queue.push_back(item);
            s.data_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Asks the connection to close with `code` once what is queued is written.
    /// The first close asked for wins.
    pub fn close(&self, code: u16, reason: &'static str) {
        let wakers = {
            let mut s = self.state.lock();
            if s.close.is_none() {
                s.close = Some(CloseRequest { code, reason });
            }
            s.wake_all()
        };
        wake(wakers);
    }

    pub fn is_closing(&self) -> bool {
        self.state.lock().close.is_some()
    }

    /// Waits until something is queued or a close is asked for. Takes the
    /// whole queue (leaving an empty one that holds no memory); once the queue
    /// is empty, returns the close request instead.
    pub async fn next(&self) -> Result<VecDeque<Outgoing>, CloseRequest> {
        poll_fn(|cx| {
            let mut s = self.state.lock();
            // Asked again: the batch taken before is written.
            s.in_flight = false;
            if !s.queue.is_empty() {
                s.bytes = 0;
                s.in_flight = true;
                return Poll::Ready(Ok(std::mem::take(&mut s.queue)));
            }
            if let Some(close) = &s.close {
                return Poll::Ready(Err(close.clone()));
            }
            // The task is polled for every frame it reads; its waker is
            // usually stored already.
            if !s
                .data_waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                s.data_waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Resolves when a close is asked for (used to abandon a stuck write).
    pub async fn closing(&self) -> CloseRequest {
        poll_fn(|cx| {
            let mut s = self.state.lock();
            match &s.close {
                Some(close) => Poll::Ready(close.clone()),
                None => {
                    s.close_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_overflow_drops_the_queue_and_asks_for_4508() {
        let outbox = Outbox::new(2, 1024);
        outbox.push(Bytes::from_static(b"a")).unwrap();
        outbox.push(Bytes::from_static(b"b")).unwrap();
        assert_eq!(
            outbox.push(Bytes::from_static(b"c")),
            Err(PushError::Overflow)
        );
        assert_eq!(
            outbox.push(Bytes::from_static(b"d")),
            Err(PushError::Closing)
        );
        let close = outbox.next().await.unwrap_err();
        assert_eq!(close.code, 4508);
    }

    #[tokio::test]
    async fn a_direct_write_never_overtakes_a_queued_or_unwritten_frame() {
        let outbox = Outbox::new(10, 1024);
        let f = Bytes::from_static(b"f");
        let direct_or_push = |claim: bool| {
            outbox.direct_or_push(&f, || {
                assert!(claim, "must not claim the socket now");
                true
            })
        };
        assert_eq!(direct_or_push(true), Ok(Claim::Claimed));
        // The socket is someone else's: queued.
        assert_eq!(outbox.direct_or_push(&f, || false), Ok(Claim::Queued));
        // Something is queued: queued behind it.
        assert_eq!(direct_or_push(false), Ok(Claim::Queued));
        // Taken by the writer but maybe not written yet: queued.
        assert_eq!(outbox.next().await.unwrap().len(), 2);
        assert_eq!(direct_or_push(false), Ok(Claim::Queued));
        assert_eq!(outbox.next().await.unwrap().len(), 1);
        // The writer asks for more: its batch is written.
        let mut next = Box::pin(outbox.next());
        assert!(futures::poll!(next.as_mut()).is_pending());
        assert_eq!(direct_or_push(true), Ok(Claim::Claimed));
        drop(next);
        outbox.close(1000, "bye");
        assert_eq!(direct_or_push(false), Err(PushError::Closing));
    }

    #[tokio::test]
    async fn byte_limit_counts_too() {
        let outbox = Outbox::new(100, 10);
        outbox.push(Bytes::from(vec![0u8; 8])).unwrap();
        assert_eq!(
            outbox.push(Bytes::from(vec![0u8; 8])),
            Err(PushError::Overflow)
        );
    }

    #[tokio::test]
    async fn queued_frames_are_written_before_a_requested_close() {
        let outbox = Outbox::new(10, 1024);
        outbox.push(Bytes::from_static(b"bye")).unwrap();
        outbox.close(1012, "shutdown");
        assert_eq!(outbox.next().await.unwrap().len(), 1);
        assert_eq!(outbox.next().await.unwrap_err().code, 1012);
    }
}
