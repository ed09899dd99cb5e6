//! The client side, the same against every variant: yawc connections from
//! several loopback source addresses, offering permessage-deflate as a
//! browser does, and the JSON messages they send.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use roomcast_bench::load::filler;
use roomcast_bench::net::connect_from;
use tokio::{net::TcpStream, sync::Semaphore, time::timeout};
use yawc::{CompressionLevel, DeflatePool, OpCode, Options, WebSocket};

/// Source addresses the clients spread their connections over: 127.0.0.1..=127.0.0.10.
const SOURCE_ADDRESSES: u8 = 10;

/// The words of the messages' text.
const WORDS: [&str; 8] = [
    "hello ",
    "roomcast ",
    "gateway ",
    "the ",
    "quick ",
    "brown ",
    "fox ",
    "jumps ",
];

/// The `index`-th connection's source address: 127.0.0.1..=127.0.0.10 in turn.
fn source_address(index: u64) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (index % u64::from(SOURCE_ADDRESSES)) as u8)
}

/// Client options, the same against every server: permessage-deflate offered
/// (plain `permessage-deflate`, context takeover allowed both ways, as a browser
/// offers it), level 1 to keep the client's CPU share low, and a pool so that a
/// server imposing no context takeover also spares the client's memory.
pub fn client_options(pool: &DeflatePool) -> Options {
    Options::default()
        .with_compression_level(CompressionLevel::fast())
        .with_deflate_pool(pool.clone())
        .with_read_buffer_capacity(4096)
        .with_write_buffer_capacity(4096)
}

pub type ClientSocket = WebSocket<TcpStream>;

/// The `index`-th connection to `path` on `server`.
pub async fn connect(
    server: SocketAddr,
    index: u64,
    path: &str,
    options: Options,
) -> Result<ClientSocket> {
    let stream = connect_from(source_address(index), server).await?;
    let url = format!("ws://{server}{path}").parse()?;
    Ok(WebSocket::handshake(url, stream, options).await?)
}

/// `count` connections to `path`, at most 128 being set up at once.
pub async fn open_many(
    addr: SocketAddr,
    count: u64,
    path: &'static str,
    pool: &DeflatePool,
) -> Result<Vec<ClientSocket>> {
    let permits = Arc::new(Semaphore::new(128));
    let mut handles = Vec::new();
    for i in 0..count {
        let permits = permits.clone();
        let options = client_options(pool);
        handles.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            timeout(Duration::from_secs(30), connect(addr, i, path, options))
                .await
                .map_err(|_| anyhow!("connect timed out"))?
        }));
    }
    let mut sockets = Vec::with_capacity(handles.len());
    for handle in handles {
        sockets.push(handle.await??);
    }
    Ok(sockets)
}

/// Next data frame, skipping control frames; an error once the connection ends.
pub async fn next_data(ws: &mut ClientSocket) -> Result<Bytes> {
    loop {
        let frame = ws.next().await.context("connection closed")?;
        match frame.opcode() {
            OpCode::Text | OpCode::Binary => return Ok(frame.into_payload()),
            OpCode::Close => bail!("connection closed"),
            _ => {}
        }
    }
}

/// A JSON message of exactly `len` bytes (at least its fixed part), compressible
/// the way chat-like JSON is.
pub fn json_message(len: usize, seq: u64) -> Bytes {
    let mut text = format!(
        "{{\"type\":\"message\",\"room\":\"lobby\",\"offset\":{seq},\"from\":\"user-{}\",\"data\":{{\"text\":\"",
        seq % 997
    );
    let fixed = text.len();
    let body = len.saturating_sub(3).max(fixed);
    text.push_str(&filler(body - fixed, &WORDS, seq as usize));
    text.push_str("\"}}");
    Bytes::from(text)
}

/// What a probe of the server's permessage-deflate answer found, for a report.
pub fn describe_deflate(answer: &Option<String>) -> String {
    match answer {
        Some(value) if value.contains("permessage-deflate") => format!("yes ({value})"),
        Some(value) => format!("no ({value})"),
        None => "no".to_owned(),
    }
}

#[cfg(test)]
mod tests;
