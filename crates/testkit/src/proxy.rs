//! A TCP proxy the test controls, put between a node and a dependency
//! (Redis) to stall the link (bytes stop flowing, sockets stay open: what a
//! network partition looks like), hold its answers only (requests reach the
//! dependency and are carried out, their answers wait: a reply lost on the
//! way back), refuse new connections only, or cut it (every connection
//! reset, new ones refused), then heal it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const FLOWING: u8 = 0;
const STALLED: u8 = 1;
const CUT: u8 = 2;
const REPLIES_HELD: u8 = 3;
const REFUSING_NEW: u8 = 4;

pub struct TcpProxy {
    pub addr: SocketAddr,
    state: Arc<AtomicU8>,
    changed: watch::Sender<u8>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `upstream`. Runs on
    /// the current tokio runtime until dropped with it.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(AtomicU8::new(FLOWING));
        let (changed, watcher) = watch::channel(FLOWING);
        let accept_state = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if matches!(accept_state.load(Ordering::Acquire), CUT | REFUSING_NEW) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (state, watcher) = (accept_state.clone(), watcher.clone());
                tokio::spawn(pipe(client, server, state, watcher));
            }
        });
        TcpProxy {
            addr,
            state,
            changed,
        }
    }

    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        let _ = self.changed.send(state);
    }

    /// Bytes stop flowing both ways; connections stay open.
    pub fn stall(&self) {
        self.set(STALLED);
    }

    /// Bytes flow to the upstream but not back: what the upstream answers
    /// waits in the proxy (new connections are still accepted).
    pub fn hold_replies(&self) {
        self.set(REPLIES_HELD);
    }

    /// Connections already open keep flowing; new ones are closed at once
    /// (a client that reconnects cannot, the others notice nothing).
    pub fn refuse_new(&self) {
        self.set(REFUSING_NEW);
    }

    /// Every connection is reset and new ones are refused.
    pub fn cut(&self) {
        self.set(CUT);
    }

    /// Back to forwarding.
    pub fn heal(&self) {
        self.set(FLOWING);
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    state: Arc<AtomicU8>,
    mut watcher: watch::Receiver<u8>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut a = [0u8; 16 * 1024];
    let mut b = [0u8; 16 * 1024];
    loop {
        let now = state.load(Ordering::Acquire);
        match now {
            CUT => return,
            STALLED => {
                // Hold everything until the state changes.
                if watcher.changed().await.is_err() {
                    return;
                }
                continue;
            }
            _ => {}
        }
        tokio::select! {
            n = cr.read(&mut a) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if !forward(&state, &mut watcher, &mut sw, &a[..n]).await { return },
            },
            // Answers held: not read from the upstream until that ends.
            n = sr.read(&mut b), if now != REPLIES_HELD => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if !forward(&state, &mut watcher, &mut cw, &b[..n]).await { return },
            },
            _ = watcher.changed() => {}
        }
    }
}

/// Writes `bytes` once the link flows; false when the link was cut.
async fn forward(
    state: &AtomicU8,
    watcher: &mut watch::Receiver<u8>,
    out: &mut tokio::net::tcp::OwnedWriteHalf,
    bytes: &[u8],
) -> bool {
    loop {
        match state.load(Ordering::Acquire) {
            CUT => return false,
            STALLED => {
                if tokio::time::timeout(Duration::from_secs(120), watcher.changed())
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            _ => return out.write_all(bytes).await.is_ok(),
        }
    }
}
