//! Benchmark peer "socketioxide": a socket.io server (axum + socketioxide) whose
//! rooms are shared through the socketioxide Redis adapter.
//!
//! Contract (same as the python-socketio peer):
//! * clients connect to `ws://127.0.0.1:P/socket.io/?EIO=4&transport=websocket`;
//! * client emits `subscribe` with a topic string -> the socket joins room
//!   `<topic>` and the server emits `subscribed` with the topic back to it;
//! * `POST /publish/<topic>` with a JSON body -> `io.to(topic).emit("msg", body)`
//!   through the Redis adapter (one Redis PUBLISH per call, local fan-out).
//! * `GET /health` -> 200 "ok" (readiness probe for peer.sh).
//!
//! Usage: sluice-peer-socketioxide --port P [--redis URL] [--workers N]

use std::{error::Error, process::exit};

use axum::{
    body::Bytes,
    extract::Path,
    http::StatusCode,
    routing::{get, post},
    Router,
};
use serde_json::Value;
use socketioxide::{
    adapter::Adapter,
    extract::{Data, SocketRef},
    SocketIo,
};
use socketioxide_redis::{drivers::redis::redis_client as redis, RedisAdapter, RedisAdapterCtr};

struct Args {
    port: u16,
    redis: String,
    workers: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!("error: {msg}\nusage: sluice-peer-socketioxide --port P [--redis redis://127.0.0.1:6379] [--workers 2]");
    exit(2)
}

fn parse_args() -> Args {
    let mut args = Args { port: 0, redis: "redis://127.0.0.1:6379".into(), workers: 2 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let val = it.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--port" => args.port = val.parse().unwrap_or_else(|_| usage("bad --port")),
            "--redis" => args.redis = val,
            "--workers" => args.workers = val.parse().unwrap_or_else(|_| usage("bad --workers")),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    if args.port == 0 {
        usage("--port is required");
    }
    args.workers = args.workers.max(1);
    args
}

/// The socketioxide Redis drivers speak RESP3 (push messages); make sure the URL asks for it.
fn resp3_url(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

async fn on_connect<A: Adapter>(socket: SocketRef<A>) {
    socket.on("subscribe", on_subscribe);
}

async fn on_subscribe<A: Adapter>(socket: SocketRef<A>, Data(topic): Data<String>) {
    // Joining a room is a local, synchronous operation: once it returns, any
    // broadcast to the room (local or arriving via Redis) reaches this socket.
    socket.join(topic.clone());
    let _ = socket.emit("subscribed", &topic);
}

async fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let client = redis::Client::open(resp3_url(&args.redis))?;
    let adapter = RedisAdapterCtr::new_with_redis(&client).await?;
    let (layer, io) = SocketIo::builder()
        .with_adapter::<RedisAdapter<_>>(adapter)
        .build_layer();
    io.ns("/", on_connect).await?;

    let publish_io = io.clone();
    let app = Router::new()
        .route(
            "/publish/{topic}",
            post(move |Path(topic): Path<String>, body: Bytes| {
                let io = publish_io.clone();
                async move {
                    // Accept the body whatever its Content-Type; it must be JSON.
                    let payload: Value = match serde_json::from_slice(&body) {
                        Ok(v) => v,
                        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad json: {e}")),
                    };
                    match io.to(topic).emit("msg", &payload).await {
                        Ok(()) => (StatusCode::OK, String::new()),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("emit failed: {e}")),
                    }
                }
            }),
        )
        .route("/health", get(|| async { "ok" }))
        .layer(layer);

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    eprintln!(
        "socketioxide peer listening on 127.0.0.1:{} (redis {}, {} worker threads)",
        args.port, args.redis, args.workers
    );
    axum::serve(listener, app).await?;
    Ok(())
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("socketioxide peer failed: {e}");
        exit(1);
    }
}
