//! Direct writes: the heartbeat ticker writes a connection's WebSocket ping,
//! and the hub a room message, straight to its socket, so the connection's
//! task is not woken to write them.
//!
//! The socket is otherwise written only by the connection's task, through
//! yawc. Two writers on one byte stream are safe as long as neither starts a
//! frame while the other has one half written, so every write is bracketed
//! by a claim on [`Wire::state`]:
//!
//! - `NEW`: the connection's loop has not started yet;
//! - `OFF`: direct writes are over for good: the connection is closing, has
//!   no descriptor, or its peer has made yawc owe it a frame (its own ping
//!   or a close, which yawc writes from inside a read, out of our sight);
//! - `FREE`: the task is between writes and has nothing half written: a
//!   direct writer may take the socket;
//! - `TASK`: the task is writing;
//! - `TICKER`: a direct writer (the heartbeat or the hub) is writing;
//! - `HALF`: the kernel took only the start of a direct frame (possible
//!   when the send buffer is nearly full): the rest is kept in
//!   [`Wire::rest`] and the task writes it before anything else, woken by
//!   something queued the ordinary way.
//!
//! A direct write is one non-blocking `send`; it never waits. The task
//! never waits for long either: a direct write is one system call.
//!
//! Order: the hub writes a message directly only when nothing is queued
//! for the connection and the task holds no batch it has not written yet
//! ([`crate::outbox::Outbox::direct_or_push`]), so a direct frame never
//! overtakes one queued before it; anything queued after it waits for the
//! socket to be released.
//!
//! This relies on the node owning the plain TCP socket: the descriptor is
//! taken only for HTTP/1 upgrades on the node's own listener. Should the
//! node ever terminate TLS itself, such connections must get no descriptor.

use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering::AcqRel, Ordering::Acquire};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

const OFF: u8 = 0;
const NEW: u8 = 5;
const FREE: u8 = 1;
const TASK: u8 = 2;
const TICKER: u8 = 3;
const HALF: u8 = 4;

/// An unmasked WebSocket ping with no payload (RFC 6455 §5.5.2).
const PING: [u8; 2] = [0x89, 0x00];

/// How long the task keeps trying to write the rest of a half-written
/// direct frame before giving the connection up.
const HALF_PATIENCE: Duration = Duration::from_secs(10);

/// Raw file descriptor type (an `i32` on Unix).
pub type Fd = i32;

pub struct Wire {
    /// The connection's socket (-1: none known, direct writes never happen).
    fd: Fd,
    state: AtomicU8,
    /// Whether the heartbeat may write pings directly (`heartbeat.direct_ping`).
    pings: bool,
    /// In state `HALF`: the unwritten end of the frame (a leaked box, owned
    /// by whoever moves the state out of `HALF`).
    rest: AtomicPtr<Bytes>,
}

/// What a direct write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direct {
    /// The whole frame is in the socket.
    Sent,
    /// Only its start is: queue something the ordinary way so the task
    /// wakes and writes the rest before anything else.
    Half,
    /// Nothing was written (not allowed now, or the socket refused):
    /// queue the frame the ordinary way.
    NotSent,
}

impl Wire {
    /// `fd`: the socket, if direct writes may use it; `pings`: whether
    /// the heartbeat's pings may be written directly.
    pub fn new(fd: Option<Fd>, pings: bool) -> Wire {
        let fd = fd.unwrap_or(-1);
        Wire {
            fd,
            state: AtomicU8::new(if fd >= 0 { NEW } else { OFF }),
            pings,
            rest: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// A wire that never takes direct writes.
    pub fn none() -> Wire {
        Wire::new(None, false)
    }

    /// Whether direct writes can ever happen on this wire.
    pub fn has_socket(&self) -> bool {
        self.fd >= 0
    }

    /// Moves the state from `from` to `to`; false if it was not `from`.
    fn shift(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, AcqRel, Acquire)
            .is_ok()
    }

    /// Called by the task when its loop starts: nothing is half written.
    pub fn enable(&self) {
        self.shift(NEW, FREE);
    }

    /// The ticker's write: one ping, now, without waiting.
    pub fn try_ping(&self) -> Direct {
        if !self.pings || !self.claim_direct() {
            return Direct::NotSent;
        }
        self.send_claimed(&PING, || Bytes::from_static(&PING))
    }

    /// Takes the socket for a direct write (see [`Wire::send_claimed`]);
    /// false when the task or another direct writer holds it.
    pub fn claim_direct(&self) -> bool {
        self.shift(FREE, TICKER)
    }

    /// Writes `frame` with one non-blocking `send`, the socket taken by
    /// [`Wire::claim_direct`], and gives the socket back (or leaves it
    /// `HALF` with the rest, taken from `owned()`, for the task).
    pub fn send_claimed(&self, frame: &[u8], owned: impl FnOnce() -> Bytes) -> Direct {
        let (next, outcome) = match send(self.fd, frame) {
            Ok(n) if n == frame.len() => (FREE, Direct::Sent),
            Ok(n) if n > 0 => {
                tracing::trace!(
                    written = n,
                    of = frame.len(),
                    "direct write stopped half way"
                );
                let rest = Box::new(owned().slice(n..));
                self.rest
                    .store(Box::into_raw(rest), std::sync::atomic::Ordering::Release);
                (HALF, Direct::Half)
            }
            _ => (FREE, Direct::NotSent),
        };
        self.state.store(next, std::sync::atomic::Ordering::Release);
        outcome
    }

    /// Takes the socket for the task's own write. Finishes a half-written
    /// direct frame first; an error means that could not be done and the
    /// stream is broken.
    pub async fn claim(&self) -> std::io::Result<()> {
        loop {
            match self.state.compare_exchange(FREE, TASK, AcqRel, Acquire) {
                Ok(_) => return Ok(()),
                Err(OFF) | Err(NEW) | Err(TASK) => return Ok(()),
                Err(TICKER) => wait_for_ticker().await,
                Err(_half) => {
                    if self.shift(HALF, TASK) {
                        return self.finish_half().await;
                    }
                }
            }
        }
    }

    /// Gives the socket back after a write that left nothing half written.
    pub fn release(&self) {
        self.shift(TASK, FREE);
    }

    /// Stops direct writes for good, once any direct write has ended and a
    /// half-written frame is finished (best effort: the connection is
    /// closing or will only be written by the task from now on).
    pub async fn disable(&self) {
        loop {
            match self.state.load(Acquire) {
                TICKER => wait_for_ticker().await,
                HALF => {
                    if self.shift(HALF, TASK) {
                        let _ = self.finish_half().await;
                        break;
                    }
                }
                _ => break,
            }
        }
        self.force_off();
    }

    /// [`Wire::disable`] for a `Drop`: the same, except that a
    /// half-written frame is left unfinished (the socket is about to go).
    pub fn force_off(&self) {
        loop {
            match self.state.load(Acquire) {
                OFF => return,
                TICKER => std::thread::yield_now(),
                current => {
                    if self.shift(current, OFF) {
                        return;
                    }
                }
            }
        }
    }

    /// Writes the rest of a half-written direct frame (state `TASK`, owned
    /// by the caller, who moved it out of `HALF`).
    async fn finish_half(&self) -> std::io::Result<()> {
        let rest = self
            .rest
            .swap(std::ptr::null_mut(), std::sync::atomic::Ordering::AcqRel);
        if rest.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null `rest` is a box leaked by `send_claimed`, and
        // the swap above made this call its only owner.
        let mut rest = *unsafe { Box::from_raw(rest) };
        let deadline = tokio::time::Instant::now() + HALF_PATIENCE;
        loop {
            match send(self.fd, &rest) {
                Ok(n) if n == rest.len() => return Ok(()),
                Ok(n) => {
                    let _ = rest.split_to(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        let rest = *self.rest.get_mut();
        if !rest.is_null() {
            // SAFETY: a leaked box from `send_claimed` nobody took.
            drop(unsafe { Box::from_raw(rest) });
        }
    }
}

/// An unmasked WebSocket data frame (text or binary) carrying `payload`,
/// as a server writes it (RFC 6455 §5.2): the same bytes for every
/// connection that gets it directly.
pub fn data_frame(binary: bool, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut out = BytesMut::with_capacity(len + 10);
    out.put_u8(if binary { 0x82 } else { 0x81 });
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
    out.freeze()
}

/// The ticker holds the socket for one system call: spin a little, then
/// let other tasks run.
async fn wait_for_ticker() {
    for _ in 0..64 {
        std::hint::spin_loop();
    }
    tokio::task::yield_now().await;
}

#[cfg(unix)]
fn send(fd: Fd, bytes: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `fd` is the connection's socket, open for as long as the
    // state is not OFF (the task turns it OFF before the socket is
    // dropped); `bytes` is a valid buffer of the given length.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(not(unix))]
fn send(_fd: Fd, _bytes: &[u8]) -> std::io::Result<usize> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn a_ping_goes_out_only_while_the_task_is_between_writes() {
        let (mut client, server) = pair();
        let wire = Wire::new(Some(server.as_raw_fd()), true);
        // Before the loop runs: off.
        assert_eq!(wire.try_ping(), Direct::NotSent);
        wire.enable();
        assert_eq!(wire.try_ping(), Direct::Sent);
        let mut got = [0u8; 2];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, PING);
        // While the task writes, the ticker keeps off.
        wire.claim().await.unwrap();
        assert_eq!(wire.try_ping(), Direct::NotSent);
        wire.release();
        assert_eq!(wire.try_ping(), Direct::Sent);
        // Once disabled, never again.
        wire.disable().await;
        assert_eq!(wire.try_ping(), Direct::NotSent);
        wire.enable();
        assert_eq!(wire.try_ping(), Direct::NotSent);
        drop(server);
    }

    #[tokio::test]
    async fn a_full_socket_refuses_the_ping_without_writing_half_of_it() {
        let (client, server) = pair();
        server.set_nonblocking(true).unwrap();
        let wire = Wire::new(Some(server.as_raw_fd()), true);
        wire.enable();
        // Fill the send buffer (the client reads nothing).
        let chunk = [0u8; 65536];
        loop {
            match send(server.as_raw_fd(), &chunk) {
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let outcome = wire.try_ping();
        // Either nothing went out, or one byte did and the task owes the
        // other: never a silent half.
        assert!(matches!(outcome, Direct::NotSent | Direct::Half));
        if outcome == Direct::Half {
            assert_eq!(wire.state.load(Acquire), HALF);
        } else {
            assert_eq!(wire.state.load(Acquire), FREE);
        }
        drop(client);
    }

    #[tokio::test]
    async fn the_task_finishes_a_half_written_ping_before_its_own_write() {
        let (mut client, server) = pair();
        let wire = Wire::new(Some(server.as_raw_fd()), true);
        wire.enable();
        // As if the kernel had taken only the first byte.
        send(server.as_raw_fd(), &PING[..1]).unwrap();
        let rest = Box::new(Bytes::from_static(&PING[1..]));
        wire.rest
            .store(Box::into_raw(rest), std::sync::atomic::Ordering::Release);
        wire.state.store(HALF, std::sync::atomic::Ordering::Release);
        assert_eq!(wire.try_ping(), Direct::NotSent);
        wire.claim().await.unwrap();
        assert_eq!(wire.state.load(Acquire), TASK);
        let mut got = [0u8; 2];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, PING);
        wire.release();
        assert_eq!(wire.try_ping(), Direct::Sent);
    }

    #[tokio::test]
    async fn the_task_finishes_a_half_written_data_frame_before_its_own_write() {
        let (mut client, server) = pair();
        server.set_nonblocking(true).unwrap();
        let wire = Wire::new(Some(server.as_raw_fd()), true);
        wire.enable();
        // Fill the send buffer until a direct frame goes out only in part.
        let frame = data_frame(false, &vec![b'a'; 200_000]);
        let mut sent = 0usize;
        let outcome = loop {
            assert!(wire.claim_direct());
            match wire.send_claimed(&frame, || frame.clone()) {
                Direct::Sent => sent += 1,
                other => break other,
            }
        };
        if outcome == Direct::NotSent {
            // The buffer happened to end on a frame boundary: no half.
            assert_eq!(wire.state.load(Acquire), FREE);
            return;
        }
        assert_eq!(outcome, Direct::Half);
        assert_eq!(wire.state.load(Acquire), HALF);
        // Nobody else may write now.
        assert!(!wire.claim_direct());
        assert_eq!(wire.try_ping(), Direct::NotSent);
        // The task finishes the frame while the client reads it all.
        let expected = frame.len() * (sent + 1);
        let reading = std::thread::spawn(move || {
            let mut buf = vec![0u8; expected];
            client.read_exact(&mut buf).unwrap();
            buf
        });
        wire.claim().await.unwrap();
        assert_eq!(wire.state.load(Acquire), TASK);
        wire.release();
        let got = reading.join().unwrap();
        for chunk in got.chunks(frame.len()) {
            assert_eq!(chunk, &frame[..], "a frame was cut");
        }
    }

    #[test]
    fn data_frames_carry_the_length_in_the_smallest_form() {
        let f = data_frame(false, b"hi");
        assert_eq!(&f[..], &[0x81, 2, b'h', b'i']);
        let f = data_frame(true, &[7u8; 125]);
        assert_eq!(&f[..2], &[0x82, 125]);
        assert_eq!(f.len(), 127);
        let f = data_frame(false, &[7u8; 126]);
        assert_eq!(&f[..4], &[0x81, 126, 0, 126]);
        assert_eq!(f.len(), 130);
        let f = data_frame(false, &[7u8; 65_535]);
        assert_eq!(&f[..4], &[0x81, 126, 0xff, 0xff]);
        let f = data_frame(false, &[7u8; 65_536]);
        assert_eq!(&f[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(f.len(), 65_546);
    }

    #[test]
    fn pings_stay_queued_when_only_data_may_go_directly() {
        let (_client, server) = pair();
        let wire = Wire::new(Some(server.as_raw_fd()), false);
        wire.enable();
        assert_eq!(wire.try_ping(), Direct::NotSent);
        assert!(wire.claim_direct());
        assert_eq!(wire.send_claimed(b"\x81\x00", Bytes::new), Direct::Sent);
    }

    #[test]
    fn no_descriptor_means_no_direct_pings() {
        let wire = Wire::none();
        wire.enable();
        assert_eq!(wire.try_ping(), Direct::NotSent);
    }
}
