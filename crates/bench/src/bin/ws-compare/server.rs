//! The server under test: one axum router per variant, with an echo
//! endpoint and the fan-out hub's subscribe and publish endpoints, and the
//! `server` command that serves it.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use anyhow::{bail, Result};
use axum::{
    extract::{
        ws::{Message, WebSocket as AxumWebSocket, WebSocketUpgrade},
        State,
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    serve::ListenerExt,
    Router,
};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use roomcast_bench::args::{Args, NO_ENV};
use tokio::{net::TcpListener, sync::mpsc, time::sleep};
use yawc::{DeflatePool, Frame, HttpWebSocket, IncomingUpgrade, OpCode, Options};

use super::process::stdin_closed;
use super::variant::{yawc_server_options, Impl, AXUM_SMALL_BUFFER, TUNED_POOL_CAPACITY};

/// Capacity of each subscriber's outbound queue in the fan-out test.
const SUBSCRIBER_QUEUE: usize = 64;
/// Most queued messages a subscriber's writer sends before one flush.
const WRITE_BATCH: usize = 32;

/// One subscriber of the fan-out test: its id and its bounded outbound queue.
type Member<M> = (u64, mpsc::Sender<M>);

/// The subscribers of the fan-out test: copy-on-write, so a publish takes one
/// `Arc` clone and no lock while it delivers.
struct Hub<M> {
    members: RwLock<Arc<Vec<Member<M>>>>,
    next_id: AtomicU64,
}

impl<M: Clone> Hub<M> {
    fn new() -> Self {
        Self {
            members: RwLock::new(Arc::new(Vec::new())),
            next_id: AtomicU64::new(0),
        }
    }

    fn join(&self, sender: mpsc::Sender<M>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut members = self.members.write().expect("hub lock");
        let mut next = Vec::with_capacity(members.len() + 1);
        next.extend(members.iter().cloned());
        next.push((id, sender));
        *members = Arc::new(next);
        id
    }

    fn leave(&self, id: u64) {
        let mut members = self.members.write().expect("hub lock");
        let next: Vec<_> = members.iter().filter(|(m, _)| *m != id).cloned().collect();
        *members = Arc::new(next);
    }

    /// Queues `message` for every member, waiting while a member's queue is full.
    async fn publish(&self, message: M) {
        let members = self.members.read().expect("hub lock").clone();
        for (_, sender) in members.iter() {
            // A member that left is skipped.
            let _ = sender.send(message.clone()).await;
        }
    }
}

struct YawcState {
    options: Options,
    hub: Hub<Bytes>,
}

struct AxumState {
    small: bool,
    hub: Hub<Message>,
}

fn router(imp: Impl) -> Router {
    match imp {
        Impl::YawcDefault | Impl::YawcTuned | Impl::YawcPlain => {
            let state = Arc::new(YawcState {
                options: yawc_server_options(imp, DeflatePool::new(TUNED_POOL_CAPACITY)),
                hub: Hub::new(),
            });
            Router::new()
                .route("/echo", get(yawc_echo))
                .route("/sub", get(yawc_subscribe))
                .route("/pub", get(yawc_publish))
                .with_state(state)
        }
        Impl::AxumDefault | Impl::AxumSmall => {
            let state = Arc::new(AxumState {
                small: imp == Impl::AxumSmall,
                hub: Hub::new(),
            });
            Router::new()
                .route("/echo", get(axum_echo))
                .route("/sub", get(axum_subscribe))
                .route("/pub", get(axum_publish))
                .with_state(state)
        }
    }
}

fn yawc_upgrade<F, Fut>(upgrade: IncomingUpgrade, state: &YawcState, handler: F) -> Response
where
    F: FnOnce(HttpWebSocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    match upgrade.upgrade(state.options.clone()) {
        Ok((response, upgraded)) => {
            tokio::spawn(async move {
                if let Ok(ws) = upgraded.await {
                    handler(ws).await;
                }
            });
            response.into_response()
        }
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// A data frame's payload as a new frame of the same kind; `None` for control frames.
fn yawc_data(frame: Frame) -> Option<Frame> {
    let (opcode, _, payload) = frame.into_parts();
    match opcode {
        OpCode::Text => Some(Frame::text(payload)),
        OpCode::Binary => Some(Frame::binary(payload)),
        _ => None,
    }
}

async fn yawc_echo(State(state): State<Arc<YawcState>>, upgrade: IncomingUpgrade) -> Response {
    yawc_upgrade(upgrade, &state, |mut ws| async move {
        while let Some(frame) = ws.next().await {
            if let Some(reply) = yawc_data(frame) {
                if ws.send(reply).await.is_err() {
                    break;
                }
            }
        }
    })
}

async fn yawc_subscribe(State(state): State<Arc<YawcState>>, upgrade: IncomingUpgrade) -> Response {
    let hub_state = state.clone();
    yawc_upgrade(upgrade, &state, move |mut ws| async move {
        let hub = &hub_state.hub;
        let (sender, mut queue) = mpsc::channel::<Bytes>(SUBSCRIBER_QUEUE);
        let id = hub.join(sender);
        // Tells the client it is registered: deliveries can start.
        if ws
            .send(Frame::text(Bytes::from_static(b"joined")))
            .await
            .is_ok()
        {
            loop {
                tokio::select! {
                    message = queue.recv() => {
                        let Some(message) = message else { break };
                        if ws.feed(Frame::text(message)).await.is_err() {
                            break;
                        }
                        let mut batch = 1;
                        while batch < WRITE_BATCH {
                            let Ok(message) = queue.try_recv() else { break };
                            if ws.feed(Frame::text(message)).await.is_err() {
                                break;
                            }
                            batch += 1;
                        }
                        if ws.flush().await.is_err() {
                            break;
                        }
                    }
                    frame = ws.next() => {
                        if frame.is_none() {
                            break;
                        }
                    }
                }
            }
        }
        hub.leave(id);
    })
}

async fn yawc_publish(State(state): State<Arc<YawcState>>, upgrade: IncomingUpgrade) -> Response {
    let hub_state = state.clone();
    yawc_upgrade(upgrade, &state, move |mut ws| async move {
        while let Some(frame) = ws.next().await {
            if let Some(frame) = yawc_data(frame) {
                hub_state.hub.publish(frame.into_payload()).await;
            }
        }
    })
}

fn axum_configure(upgrade: WebSocketUpgrade, state: &AxumState) -> WebSocketUpgrade {
    if state.small {
        upgrade
            .read_buffer_size(AXUM_SMALL_BUFFER)
            .write_buffer_size(AXUM_SMALL_BUFFER)
    } else {
        upgrade
    }
}

async fn axum_echo(State(state): State<Arc<AxumState>>, upgrade: WebSocketUpgrade) -> Response {
    axum_configure(upgrade, &state).on_upgrade(|mut ws: AxumWebSocket| async move {
        while let Some(Ok(message)) = ws.next().await {
            if matches!(message, Message::Text(_) | Message::Binary(_))
                && ws.send(message).await.is_err()
            {
                break;
            }
        }
    })
}

async fn axum_subscribe(
    State(state): State<Arc<AxumState>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let hub_state = state.clone();
    axum_configure(upgrade, &state).on_upgrade(move |mut ws: AxumWebSocket| async move {
        let hub = &hub_state.hub;
        let (sender, mut queue) = mpsc::channel::<Message>(SUBSCRIBER_QUEUE);
        let id = hub.join(sender);
        if ws.send(Message::text("joined")).await.is_ok() {
            loop {
                tokio::select! {
                    message = queue.recv() => {
                        let Some(message) = message else { break };
                        if ws.feed(message).await.is_err() {
                            break;
                        }
                        let mut batch = 1;
                        while batch < WRITE_BATCH {
                            let Ok(message) = queue.try_recv() else { break };
                            if ws.feed(message).await.is_err() {
                                break;
                            }
                            batch += 1;
                        }
                        if ws.flush().await.is_err() {
                            break;
                        }
                    }
                    message = ws.next() => {
                        if !matches!(message, Some(Ok(_))) {
                            break;
                        }
                    }
                }
            }
        }
        hub.leave(id);
    })
}

async fn axum_publish(State(state): State<Arc<AxumState>>, upgrade: WebSocketUpgrade) -> Response {
    let hub_state = state.clone();
    axum_configure(upgrade, &state).on_upgrade(move |mut ws: AxumWebSocket| async move {
        while let Some(Ok(message)) = ws.next().await {
            if matches!(message, Message::Text(_) | Message::Binary(_)) {
                hub_state.hub.publish(message).await;
            }
        }
    })
}

/// `server`: serves one variant, printing `LISTENING <addr>` on stdout.
pub async fn server_command(args: &Args) -> Result<()> {
    let imp = Impl::from_args(args)?;
    let addr: SocketAddr = args.string("addr", NO_ENV, "127.0.0.1:0").parse()?;
    if !addr.ip().is_loopback() {
        bail!("--addr must be a loopback address");
    }
    let max_secs: u64 = args.num("max-secs", NO_ENV, 900)?;
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    println!("LISTENING {local}");
    eprintln!(
        "ws-compare server: {} on {local}, pid {}, stops after {max_secs} s",
        imp.name(),
        std::process::id()
    );
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let serve = axum::serve(listener, router(imp));
    let exit_on_eof = args.flag("exit-on-eof", NO_ENV);
    tokio::select! {
        result = std::future::IntoFuture::into_future(serve) => result?,
        _ = sleep(Duration::from_secs(max_secs)) => {
            eprintln!("ws-compare server: --max-secs reached, stopping");
        }
        _ = stdin_closed(), if exit_on_eof => {}
    }
    Ok(())
}
