//! Direct pings: the heartbeat ticker writes a connection's WebSocket ping
//! straight to its socket, so an idle connection's task wakes once per
//! heartbeat (for the pong) instead of twice.
//!
//! The socket is otherwise written only by the connection's task, through
//! yawc. Two writers on one byte stream are safe as long as neither starts a
//! frame while the other has one half written, so every write is bracketed
//! by a claim on [`Wire::state`]:
//!
//! - `NEW`: the connection's loop has not started yet;
//! - `OFF`: direct pings are over for good: the connection is closing, has
//!   no descriptor, or its peer has made yawc owe it a frame (its own ping
//!   or a close, which yawc writes from inside a read, out of our sight);
//! - `FREE`: the task is between writes and has nothing half written: the
//!   ticker may take the socket;
//! - `TASK`: the task is writing;
//! - `TICKER`: the ticker is writing its 2 bytes;
//! - `HALF`: the kernel took only the first byte of a ping (possible when
//!   the send buffer is full): the task writes the second byte before
//!   anything else, woken by a ping queued the ordinary way.
//!
//! The ticker's write is one non-blocking `send` of two bytes; it never
//! waits. The task never waits for long either: a ticker write is one
//! system call.
//!
//! This relies on the node owning the plain TCP socket: the descriptor is
//! taken only for HTTP/1 upgrades on the node's own listener. Should the
//! node ever terminate TLS itself, such connections must get no descriptor.

use std::sync::atomic::{AtomicU8, Ordering::AcqRel, Ordering::Acquire};
use std::time::Duration;

const OFF: u8 = 0;
const NEW: u8 = 5;
const FREE: u8 = 1;
const TASK: u8 = 2;
const TICKER: u8 = 3;
const HALF: u8 = 4;

/// An unmasked WebSocket ping with no payload (RFC 6455 §5.5.2).
const PING: [u8; 2] = [0x89, 0x00];

/// How long the task keeps trying to write the second byte of a half-written
/// ping before giving the connection up.
const HALF_PATIENCE: Duration = Duration::from_secs(10);

/// Raw file descriptor type (an `i32` on Unix).
pub type Fd = i32;

pub struct Wire {
    /// The connection's socket (-1: none known, direct pings never happen).
    fd: Fd,
    state: AtomicU8,
}

/// What [`Wire::try_ping`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direct {
    /// The whole ping is in the socket.
    Sent,
    /// Only its first byte is: queue a ping the ordinary way so the task
    /// wakes, finishes this one, then sends that one.
    Half,
    /// Nothing was written (not allowed now, or the socket refused):
    /// queue the ping the ordinary way.
    NotSent,
}

impl Wire {
    pub fn new(fd: Option<Fd>) -> Wire {
        let fd = fd.unwrap_or(-1);
        Wire {
            fd,
            state: AtomicU8::new(if fd >= 0 { NEW } else { OFF }),
        }
    }

    /// A wire that never takes direct pings.
    pub fn none() -> Wire {
        Wire::new(None)
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
        if !self.shift(FREE, TICKER) {
            return Direct::NotSent;
        }
        let (next, outcome) = match send(self.fd, &PING) {
            Ok(2) => (FREE, Direct::Sent),
            Ok(1) => (HALF, Direct::Half),
            _ => (FREE, Direct::NotSent),
        };
        self.state.store(next, std::sync::atomic::Ordering::Release);
        outcome
    }

    /// Takes the socket for the task's own write. Finishes a half-written
    /// ping first; an error means that could not be done and the stream is
    /// broken.
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

    /// Stops direct pings for good, once any ticker write has ended and a
    /// half-written ping is finished (best effort: the connection is
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
    /// half-written ping is left unfinished (the socket is about to go).
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

    /// Writes the missing second byte of a ping (state `TASK`, owned by
    /// the caller).
    async fn finish_half(&self) -> std::io::Result<()> {
        let deadline = tokio::time::Instant::now() + HALF_PATIENCE;
        loop {
            match send(self.fd, &PING[1..]) {
                Ok(1) => return Ok(()),
                Ok(_) => {}
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
        let wire = Wire::new(Some(server.as_raw_fd()));
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
        let wire = Wire::new(Some(server.as_raw_fd()));
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
        let wire = Wire::new(Some(server.as_raw_fd()));
        wire.enable();
        // As if the kernel had taken only the first byte.
        send(server.as_raw_fd(), &PING[..1]).unwrap();
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

    #[test]
    fn no_descriptor_means_no_direct_pings() {
        let wire = Wire::none();
        wire.enable();
        assert_eq!(wire.try_ping(), Direct::NotSent);
    }
}
