//! Client sockets: source addresses, bound connects, the WebSocket options
//! every generated connection uses, and a raw probe of what a server answers
//! to a browser's permessage-deflate offer.
//!
//! A client socket bound to `(ip, 0)` takes its port from the ephemeral range
//! of that source address alone (about 28,000 ports here), so connections are
//! spread over many loopback source addresses, 127.0.0.2 upwards; the whole
//! 127.0.0.0/8 block is local, no setup needed.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use yawc::{DeflatePool, Options};

/// Source addresses each worker process spreads its connections over.
pub const SOURCES_PER_WORKER: usize = 25;
/// The first source address is 127.0.0.(FIRST_SOURCE).
const FIRST_SOURCE: usize = 2;

/// The source addresses of worker `worker`: 25 addresses of its own, from
/// 127.0.0.2 upwards (workers 0..=9 stay inside 127.0.0.2..=127.0.0.251).
pub fn worker_sources(worker: usize) -> Vec<Ipv4Addr> {
    (0..SOURCES_PER_WORKER)
        .map(|i| {
            let n = FIRST_SOURCE + (worker * SOURCES_PER_WORKER + i) % (250 - FIRST_SOURCE);
            Ipv4Addr::new(127, 0, 0, n as u8)
        })
        .collect()
}

/// Opens a TCP connection to `dest` from `source` (port chosen by the kernel),
/// with Nagle off. Refuses anything but loopback destinations.
pub async fn connect_from(source: Ipv4Addr, dest: SocketAddr) -> Result<TcpStream> {
    if !dest.ip().is_loopback() {
        bail!("{dest} is not a loopback address: the load generator only targets 127.0.0.0/8");
    }
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .with_context(|| format!("bind {source}"))?;
    let stream = socket
        .connect(dest)
        .await
        .with_context(|| format!("connect {dest} from {source}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The WebSocket options of every generated connection: permessage-deflate
/// offered with no context takeover either way (so no compression state
/// outlives a message, on either side), compressors from a pool shared by the
/// process, small buffers that grow when a frame needs it.
pub fn ws_options(pool: &DeflatePool, deflate: bool) -> Options {
    let options = Options::default()
        .with_max_payload_read(1 << 20)
        .with_read_buffer_capacity(1024)
        .with_write_buffer_capacity(1024);
    if deflate {
        options
            .with_low_latency_compression()
            .client_no_context_takeover()
            .server_no_context_takeover()
            .with_deflate_pool(pool.clone())
    } else {
        options.without_compression()
    }
}

/// The `Sec-WebSocket-Extensions` a server answers to a browser-like offer
/// (`permessage-deflate; client_max_window_bits`) on `path`, by a raw
/// upgrade request; `None` when it negotiates no extension.
pub async fn probe_deflate(
    addr: SocketAddr,
    path: &str,
    protocol: Option<&str>,
) -> Result<Option<String>> {
    let mut stream = connect_from(Ipv4Addr::LOCALHOST, addr).await?;
    let protocol = protocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    let response = String::from_utf8_lossy(&response);
    if !response.starts_with("HTTP/1.1 101") {
        bail!(
            "deflate probe of {addr}{path}: unexpected answer {:?}",
            response.lines().next().unwrap_or("")
        );
    }
    Ok(response.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| value.trim().to_owned())
    }))
}
