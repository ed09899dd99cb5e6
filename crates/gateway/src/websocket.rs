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

/// Leaves one permessage-deflate offer in an upgrade request, the client's
/// first, for yawc to negotiate.
///
/// A client may offer permessage-deflate several times, in its order of
/// preference, in one `Sec-WebSocket-Extensions` header or several
/// (RFC 7692 §5, RFC 6455 §9.1); the server accepts one. yawc reads the
/// first header as a single offer: a list fails its parser (at the comma),
/// and the connection goes on uncompressed, as if nothing had been
/// offered (Autobahn's cases 13.7.*). The first offer alone is what yawc
/// would have taken had it read lists. Applied to the upgrade routes
/// before yawc's extractor reads the headers.
pub async fn first_deflate_offer(mut request: axum::extract::Request) -> axum::extract::Request {
    use axum::http::header::SEC_WEBSOCKET_EXTENSIONS;
    let headers = request.headers_mut();
    let mut values = headers.get_all(SEC_WEBSOCKET_EXTENSIONS).iter();
    match (values.next(), values.next()) {
        (None, _) => return request,
        (Some(one), None) if !one.as_bytes().contains(&b',') => return request,
        _ => {}
    }
    let first = headers
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|offer| offer.split(';').next().map(str::trim) == Some("permessage-deflate"))
        .and_then(|offer| axum::http::HeaderValue::from_str(offer).ok());
    match first {
        Some(offer) => {
            headers.insert(SEC_WEBSOCKET_EXTENSIONS, offer);
        }
        None => {
            headers.remove(SEC_WEBSOCKET_EXTENSIONS);
        }
    }
    request
}

#[cfg(test)]
mod tests {
    use axum::http::header::SEC_WEBSOCKET_EXTENSIONS;

    async fn offered(values: &[&str]) -> Vec<String> {
        let mut request = axum::extract::Request::new(axum::body::Body::empty());
        for v in values {
            request
                .headers_mut()
                .append(SEC_WEBSOCKET_EXTENSIONS, v.parse().unwrap());
        }
        let request = super::first_deflate_offer(request).await;
        request
            .headers()
            .get_all(SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[tokio::test]
    async fn only_the_first_deflate_offer_is_left() {
        let one = "permessage-deflate; client_max_window_bits";
        assert_eq!(offered(&[one]).await, [one]);
        assert!(offered(&[]).await.is_empty());
        assert_eq!(
            offered(&["permessage-deflate; server_max_window_bits=9; server_no_context_takeover, permessage-deflate; client_max_window_bits, permessage-deflate"]).await,
            ["permessage-deflate; server_max_window_bits=9; server_no_context_takeover"]
        );
        assert_eq!(
            offered(&[
                "x-webkit-deflate-frame",
                "permessage-deflate, permessage-deflate; client_max_window_bits"
            ])
            .await,
            ["permessage-deflate"]
        );
        assert!(offered(&["foo, bar; baz=1"]).await.is_empty());
    }
}
