//! Protocols that hold a connection open pass through any proxied route: a
//! WebSocket echo (101 upgrade, frames both ways) and server-sent events that
//! arrive as they are sent, not when the stream ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server that echoes every text frame, on a port of its own.
async fn websocket_echo() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An HTTP server that answers with an event stream: one event now, one after
/// `gap`, then the end.
async fn event_source(gap: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
                let event = |text: &str| {
                    let data = format!("data: {text}\n\n");
                    format!("{:x}\r\n{data}\r\n", data.len())
                };
                let _ = stream
                    .write_all(format!("{head}{}", event("first")).as_bytes())
                    .await;
                tokio::time::sleep(gap).await;
                let _ = stream
                    .write_all(format!("{}0\r\n\r\n", event("second")).as_bytes())
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let echo = websocket_echo().await;
    let tollgate = Tollgate::start(&format!(
        "upstreams:\n  ws:\n    backends: [{{address: {echo}}}]\nroutes:\n  - match: {{path_prefix: /ws}}\n    upstream: ws\n"
    ))
    .await;
    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", tollgate.addr))
            .await
            .expect("WebSocket handshake through tollgate");
    assert_eq!(response.status(), 101);
    for text in ["hello", "world", &"x".repeat(70_000)] {
        socket.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    socket.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_stream_as_they_come() {
    let gap = Duration::from_millis(1500);
    let events = event_source(gap).await;
    let tollgate = Tollgate::start(&format!(
        "upstreams:\n  events:\n    backends: [{{address: {events}}}]\nroutes:\n  - match: {{path_prefix: /events}}\n    upstream: events\n"
    ))
    .await;
    let started = Instant::now();
    let mut response = reqwest::get(tollgate.url("/events")).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let first = response.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("data: first"));
    assert!(
        first_at < gap,
        "the first event waited for the stream's end ({first_at:?})"
    );
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert!(String::from_utf8_lossy(&rest).contains("data: second"));
}
