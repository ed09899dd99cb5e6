//! The WebSocket settings every connection of the node uses, built once
//! from the configuration and shared (one deflate pool per node).

use yawc::{DeflatePool, Options};

use crate::config::Config;

/// The WebSocket settings every connection of the node uses: small buffers,
/// and permessage-deflate without context takeover, with a shared pool of
/// compressors, so an idle connection holds no compression state.
pub fn options(config: &Config) -> Options {
    let ws = &config.websocket;
    let mut options = Options::default()
        .with_max_payload_read(config.limits.max_message_bytes + 1)
        .with_max_read_buffer(config.limits.max_message_bytes + 1)
        .with_read_buffer_capacity(ws.read_buffer_bytes)
        // The write buffer is allocated on demand: frames gather in it up
        // to `write_buffer_bytes`, then go out in one write, and a buffer
        // that grew past that is given back once written. An idle
        // connection keeps only what its last small write needed.
        .with_write_buffer_capacity(0)
        .with_backpressure_boundary(ws.write_buffer_bytes)
        .with_utf8()
        .with_no_delay();
    if ws.compression {
        options = options
            .with_low_latency_compression()
            .server_no_context_takeover()
            .client_no_context_takeover()
            .with_compression_threshold(ws.compression_threshold)
            // About one state per worker thread; more would only hold idle memory.
            .with_deflate_pool(DeflatePool::new(16));
    } else {
        options = options.without_compression();
    }
    options
}
