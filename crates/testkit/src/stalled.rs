//! A hand-rolled WebSocket client over a raw TCP socket with a tiny receive
//! buffer, for tests of peers that stop reading (slow consumers) or vanish
//! (half-open connections). It speaks just enough RFC 6455 to say hello and
//! to find the close frame in whatever the server managed to send.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub struct StalledClient {
    stream: TcpStream,
    buffered: Vec<u8>,
}

impl StalledClient {
    /// Connects with `SO_RCVBUF` set to `recv_buffer` bytes, upgrades (JSON,
    /// no compression) and sends `frames` as text frames.
    pub async fn connect(addr: SocketAddr, recv_buffer: u32, frames: &[&str]) -> StalledClient {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(recv_buffer).expect("SO_RCVBUF");
        let mut stream = socket.connect(addr).await.expect("connect");
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: cm9vbWNhc3QtdGVzdC1rZXk=\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("upgrade");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream
                .read_exact(&mut byte)
                .await
                .expect("upgrade response");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        for frame in frames {
            stream
                .write_all(&masked_text(frame.as_bytes()))
                .await
                .expect("send");
        }
        StalledClient {
            stream,
            buffered: Vec::new(),
        }
    }

    /// Sends raw bytes (hand-built frames, for protocol-abuse tests).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Sends one more text frame.
    pub async fn send_text(&mut self, text: &str) {
        let _ = self.stream.write_all(&masked_text(text.as_bytes())).await;
    }

    /// Reads everything the server sends until its close frame; returns the
    /// close code, or `None` if the socket ended (or `timeout` passed) first.
    pub async fn read_until_close(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(code) = self.scan_for_close() {
                return Some(code);
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return self.scan_for_close(),
                Ok(Ok(n)) => self.buffered.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Walks complete frames in the buffer, dropping them, until a close.
    fn scan_for_close(&mut self) -> Option<u16> {
        loop {
            let b = &self.buffered;
            if b.len() < 2 {
                return None;
            }
            let opcode = b[0] & 0x0f;
            let (len, header) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => {
                    (u64::from_be_bytes(b[2..10].try_into().ok()?) as usize, 10)
                }
                126 | 127 => return None,
                n => (n as usize, 2),
            };
            if b.len() < header + len {
                return None;
            }
            if opcode == 0x8 {
                let payload = &b[header..header + len];
                return Some(if payload.len() >= 2 {
                    u16::from_be_bytes([payload[0], payload[1]])
                } else {
                    1005
                });
            }
            self.buffered.drain(..header + len);
        }
    }
}

fn masked_text(payload: &[u8]) -> Vec<u8> {
    masked_frame(0x81, payload)
}

/// A masked client frame: `first` is the FIN/RSV/opcode byte.
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}
