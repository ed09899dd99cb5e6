//! One publish on node A to a member on node B is one trace: a real OTLP
//! receiver (OTLP/HTTP with protobuf bodies, decoded with the OpenTelemetry
//! proto definitions) collects the spans both nodes export, and the
//! delivery span on B is the child of the publish span on A, linked across
//! the Redis hop by the envelope's W3C trace context.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use roomcast_protocol::{ClientFrame, Codec, ServerFrame};
use roomcast_testkit::redis::RedisServer;
use roomcast_testkit::ws::{ack_offset, join, RawClient};
use roomcast_testkit::{wait_until, Gateway, PresenceService};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

/// Accepts OTLP/HTTP exports (`POST /v1/traces`) and keeps every span.
async fn otlp_receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<Span>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let store = spans.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    // One request per connection read loop (keep-alive aware).
                    let (head_end, length) = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (end + 4, length);
                        }
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while buf.len() < head_end + length {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf[head_end..head_end + length].to_vec();
                    buf.drain(..head_end + length);
                    if let Ok(request) = ExportTraceServiceRequest::decode(body.as_slice()) {
                        let mut store = store.lock().unwrap();
                        for resource in request.resource_spans {
                            let service = resource
                                .resource
                                .iter()
                                .flat_map(|r| r.attributes.iter())
                                .find(|kv| kv.key == "service.name")
                                .and_then(|kv| kv.value.as_ref())
                                .map(|v| format!("{:?}", v.value))
                                .unwrap_or_default();
                            for scope in resource.scope_spans {
                                for span in scope.spans {
                                    store.push(Span {
                                        service: service.clone(),
                                        name: span.name,
                                        trace_id: span.trace_id,
                                        span_id: span.span_id,
                                        parent_span_id: span.parent_span_id,
                                    });
                                }
                            }
                        }
                    }
                    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if socket.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_one_node_and_its_delivery_on_another_are_one_trace() {
    let (otlp, spans) = otlp_receiver().await;
    let redis = RedisServer::start();
    let presence = PresenceService::start(&redis.url(), &[]);
    let endpoint = format!("http://{otlp}");
    let node = |id: &str| {
        Gateway::start(&[
            ("ROOMCAST_REDIS__URL", &redis.url()),
            ("ROOMCAST_PRESENCE__URL", &presence.url()),
            ("ROOMCAST_AUTH__RESUME_SECRET", "trace-test"),
            ("ROOMCAST_NODE__ID", id),
            ("ROOMCAST_TRACING__ENABLED", "true"),
            ("ROOMCAST_TRACING__PROTOCOL", "http/protobuf"),
            ("ROOMCAST_TRACING__ENDPOINT", &endpoint),
            ("ROOMCAST_TRACING__SERVICE_NAME", id),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ])
    };
    let a = node("gateway-a");
    let b = node("gateway-b");
    let (mut member, _) = RawClient::ready(&b.ws_url(), Codec::Json).await;
    member.request(join(1, "traced")).await;
    let (mut publisher, _) = RawClient::ready(&a.ws_url(), Codec::MsgPack).await;
    publisher.request(join(1, "traced")).await;
    let ack = publisher
        .request(ClientFrame::Publish {
            id: Some(2),
            room: "traced".into(),
            data: json!("hi"),
            key: None,
        })
        .await;
    assert_eq!(ack_offset(&ack), Some(1), "{ack:?}");
    let (got, _) = member.next_message("traced").await;
    assert_eq!(got, json!("hi"));

    let linked = wait_until(Duration::from_secs(15), || {
        let spans = spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.name == "publish" && s.service.contains("gateway-a"))
            .any(|publish| {
                spans.iter().any(|d| {
                    d.name == "deliver"
                        && d.service.contains("gateway-b")
                        && d.trace_id == publish.trace_id
                        && d.parent_span_id == publish.span_id
                })
            })
    });
    let seen: Vec<(String, String)> = spans
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.service.clone(), s.name.clone()))
        .collect();
    assert!(linked, "no publish(a) -> deliver(b) link among {seen:?}");
}

#[tokio::test]
async fn a_node_tracing_over_grpc_to_a_dead_collector_keeps_serving() {
    let dead = format!("http://127.0.0.1:{}", roomcast_testkit::free_port());
    let gw = Gateway::start(&[
        ("ROOMCAST_TRACING__ENABLED", "true"),
        ("ROOMCAST_TRACING__PROTOCOL", "grpc"),
        ("ROOMCAST_TRACING__ENDPOINT", &dead),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    let (mut c, _) = RawClient::ready(&gw.ws_url(), Codec::Json).await;
    c.request(join(1, "r")).await;
    for i in 0..20 {
        let ack = c
            .request(ClientFrame::Publish {
                id: Some(10 + i),
                room: "r".into(),
                data: json!(i),
                key: None,
            })
            .await;
        assert!(
            matches!(ack, ServerFrame::Ack { .. } | ServerFrame::Message { .. }),
            "{ack:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.request(ClientFrame::Ping { id: Some(99) }).await,
        ServerFrame::Pong { id: Some(99) }
    );
}
