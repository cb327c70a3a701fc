//! The systems under test and how to speak to each: which URL a subscriber opens,
//! what it sends to subscribe and which frame says it is subscribed, which frames
//! are keep-alives to answer, and how an engine publishes (Sluice through
//! `FCALL sluice_publish`, the peers through their own paths).

use std::{fmt, str::FromStr, time::Duration};

use anyhow::{bail, Context};
use fred::{
    clients::Client as RedisClient,
    interfaces::{ClientLike, FunctionInterface, PubsubInterface},
    types::config::Config as RedisConfig,
};
use sluice_common::publisher::{PublishKind, Publisher};

use crate::ws::{Op, WsConn, WsUrl};

/// A system the load generator can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum System {
    /// Sluice: protocol v1 on `/ws`, publishes via `FCALL sluice_publish`.
    Sluice,
    /// The raw tokio fan-out (`sluice-loadtest baseline-server`): the ceiling.
    Baseline,
    /// nginx + Nchan with Redis storage: `/sub/<topic>`, `POST /pub/<topic>`.
    Nchan,
    /// python-socketio + AsyncRedisManager on uvicorn; publishes as a Redis emitter.
    Socketio,
    /// socketioxide + its Redis adapter; publishes with `POST /publish/<topic>`.
    Socketioxide,
    /// FastAPI websockets + redis-py pub/sub; publishes with Redis `PUBLISH`.
    Fastapi,
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            System::Sluice => "sluice",
            System::Baseline => "baseline",
            System::Nchan => "nchan",
            System::Socketio => "socketio",
            System::Socketioxide => "socketioxide",
            System::Fastapi => "fastapi",
        })
    }
}

impl FromStr for System {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        <System as clap::ValueEnum>::from_str(s, true).map_err(|e| anyhow::anyhow!(e))
    }
}

/// What a received frame is, to the load generator.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// May carry a stamp: parse it.
    Data,
    /// A keep-alive to answer with this text frame.
    Reply(&'static str),
    /// A protocol error from the server.
    Error,
    /// Anything else (acks, heartbeats needing no answer, pongs).
    Other,
}

const SOCKETIO_PATH: &str = "/socket.io/?EIO=4&transport=websocket";

impl System {
    /// The URL a subscriber of `topic` opens, given the URL the user named.
    pub fn subscribe_url(self, base: &WsUrl, topic: &str) -> WsUrl {
        match self {
            System::Sluice => base.clone(),
            System::Baseline | System::Nchan => base.with_path(&format!("/sub/{topic}")),
            System::Socketio | System::Socketioxide => base.with_path(SOCKETIO_PATH),
            System::Fastapi => base.with_path(&format!("/ws/{topic}")),
        }
    }

    /// Completes the subscription on a fresh connection. For Sluice, `resume`
    /// is `(next seq, epoch)` to resume from; it returns the acknowledged
    /// `(head_seq, epoch)`.
    pub async fn subscribe(
        self,
        conn: &mut WsConn,
        topic: &str,
        resume: Option<(u64, &str)>,
        timeout: Duration,
    ) -> anyhow::Result<Option<(u64, String)>> {
        tokio::time::timeout(timeout, self.subscribe_inner(conn, topic, resume))
            .await
            .with_context(|| format!("{self}: no subscription ack within {timeout:?}"))?
    }

    async fn subscribe_inner(
        self,
        conn: &mut WsConn,
        topic: &str,
        resume: Option<(u64, &str)>,
    ) -> anyhow::Result<Option<(u64, String)>> {
        match self {
            System::Sluice => {
                wait_for(conn, |f| f.starts_with(br#"{"type":"connected""#)).await?;
                let req = match resume {
                    Some((from, epoch)) => format!(
                        r#"{{"type":"subscribe","topic":"{topic}","resume_from_seq":{from},"epoch":"{epoch}"}}"#
                    ),
                    None => format!(r#"{{"type":"subscribe","topic":"{topic}"}}"#),
                };
                conn.send_text(&req).await?;
                let ack = wait_for(conn, |f| f.starts_with(br#"{"type":"ack""#)).await?;
                let ack = String::from_utf8_lossy(&ack);
                if !ack.contains(r#""subscribed":true"#) {
                    bail!("subscribe refused: {ack}");
                }
                Ok(json_str_field(&ack, "epoch")
                    .map(|e| (num_field(&ack, "head_seq").unwrap_or(0), e)))
            }
            // Both register the subscriber before answering the upgrade (Nchan:
            // with `nchan_subscriber_first_message newest`).
            System::Baseline | System::Nchan => Ok(None),
            System::Socketio | System::Socketioxide => {
                wait_for(conn, |f| f.first() == Some(&b'0')).await?;
                conn.send_text("40").await?;
                wait_for(conn, |f| f.starts_with(b"40")).await?;
                conn.send_text(&format!(r#"42["subscribe","{topic}"]"#))
                    .await?;
                wait_for(conn, |f| f.starts_with(br#"42["subscribed""#)).await?;
                Ok(None)
            }
            System::Fastapi => {
                wait_for(conn, |f| f.starts_with(br#"{"type":"subscribed""#)).await?;
                Ok(None)
            }
        }
    }

    /// Classifies a text frame received after the subscription.
    pub fn classify(self, frame: &[u8]) -> Incoming {
        match self {
            System::Sluice => {
                if frame.starts_with(br#"{"type":"delta""#)
                    || frame.starts_with(br#"{"type":"snapshot""#)
                {
                    Incoming::Data
                } else if frame.starts_with(br#"{"type":"heartbeat""#) {
                    Incoming::Reply(r#"{"type":"ping"}"#)
                } else if frame.starts_with(br#"{"type":"error""#) {
                    Incoming::Error
                } else {
                    Incoming::Other
                }
            }
            System::Socketio | System::Socketioxide => match frame {
                b"2" => Incoming::Reply("3"),
                f if f.starts_with(b"42") => Incoming::Data,
                f if f.starts_with(b"44") => Incoming::Error,
                _ => Incoming::Other,
            },
            System::Baseline | System::Nchan | System::Fastapi => Incoming::Data,
        }
    }
}

/// Reads frames until one matches, answering keep-alives on the way.
async fn wait_for(
    conn: &mut WsConn,
    pred: impl Fn(&[u8]) -> bool,
) -> anyhow::Result<bytes::BytesMut> {
    loop {
        let (op, frame) = conn.next().await?;
        match op {
            Op::Text | Op::Binary if pred(&frame) => return Ok(frame),
            Op::Text if &frame[..] == b"2" => conn.send_text("3").await?,
            Op::Text if frame.starts_with(br#"{"type":"error""#) => {
                bail!("server error: {}", String::from_utf8_lossy(&frame))
            }
            Op::Close => bail!("closed by the server: {:?}", close_code(&frame)),
            _ => {}
        }
    }
}

/// The code of a close frame, if it has one.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

/// A string field's value from a flat JSON text (`"name":"value"`).
pub fn json_str_field(text: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\":\"");
    let at = text.find(&key)? + key.len();
    let end = text[at..].find('"')?;
    Some(text[at..at + end].to_owned())
}

/// A number field's value from a flat JSON text (`"name":N`).
pub fn num_field(text: &str, name: &str) -> Option<u64> {
    let key = format!("\"{name}\":");
    let at = text.find(&key)? + key.len();
    let digits = &text[at..];
    let len = digits.bytes().take_while(u8::is_ascii_digit).count();
    digits[..len].parse().ok()
}

/// One publishing connection. The load generator gives each topic to one of them
/// and awaits each publish before the next on it, so per topic the order of
/// publication is the order of the schedule for every system.
#[derive(Debug)]
pub enum Publish {
    Sluice(Publisher),
    /// `PUBLISH <topic> <payload>` (FastAPI) or a python-socketio emitter message
    /// on channel `socketio`.
    Redis {
        client: RedisClient,
        socketio: bool,
    },
    /// `POST <prefix><topic>` with the payload as the body.
    Http {
        client: reqwest::Client,
        prefix: String,
    },
    /// The baseline's publish socket: a text frame `<topic>\n<payload>`.
    Ws(WsConn),
    /// Sluice without `--redis` (a node on its embedded broker): `POST /publish`
    /// with `SLUICE_ADMIN_TOKEN`. It measures the node's own path, without the
    /// Redis hop an engine's publish takes.
    SluiceHttp {
        client: reqwest::Client,
        url: String,
        token: String,
    },
}

impl Publish {
    /// Opens one publishing connection for `system`.
    pub async fn connect(
        system: System,
        redis: Option<&str>,
        http: &str,
        ws: &WsUrl,
    ) -> anyhow::Result<Self> {
        let need_redis = || {
            redis.with_context(|| format!("{system} publishes through Redis: --redis is required"))
        };
        Ok(match system {
            System::Sluice => match redis {
                Some(url) => Publish::Sluice(Publisher::connect(url, 1).await?),
                None => Publish::SluiceHttp {
                    client: reqwest::Client::builder()
                        .pool_max_idle_per_host(1)
                        .timeout(Duration::from_secs(10))
                        .build()?,
                    url: format!("{http}/publish"),
                    token: std::env::var("SLUICE_ADMIN_TOKEN").context(
                        "Sluice without --redis publishes with POST /publish: set SLUICE_ADMIN_TOKEN",
                    )?,
                },
            },
            System::Fastapi | System::Socketio => {
                let config = RedisConfig::from_url(need_redis()?)?;
                let client = fred::types::Builder::from_config(config).build()?;
                client.init().await?;
                Publish::Redis {
                    client,
                    socketio: system == System::Socketio,
                }
            }
            System::Nchan | System::Socketioxide => Publish::Http {
                client: reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .timeout(Duration::from_secs(10))
                    .build()?,
                prefix: format!(
                    "{http}{}",
                    if system == System::Nchan {
                        "/pub/"
                    } else {
                        "/publish/"
                    }
                ),
            },
            System::Baseline => Publish::Ws(
                WsConn::connect(&ws.with_path("/pub"), None, "", Duration::from_secs(5)).await?,
            ),
        })
    }

    /// Publishes several messages in order: one pipeline for the Redis paths (so a
    /// busy publisher does not wait a round trip per message), one by one
    /// otherwise. One result per message.
    pub async fn publish_batch(&mut self, batch: &[(&str, String)]) -> Vec<anyhow::Result<()>> {
        match self {
            Publish::Sluice(p) if batch.len() > 1 => {
                let pipe = p.pool().next().pipeline();
                for (topic, payload) in batch {
                    let args = vec![payload.clone(), "delta".to_owned()];
                    let _: Result<(), _> = pipe
                        .fcall::<(), _, _, _>(
                            sluice_common::publisher::PUBLISH_FUNCTION,
                            *topic,
                            args,
                        )
                        .await;
                }
                collect(pipe.try_all::<fred::types::Value>().await, batch.len())
            }
            Publish::Redis { client, socketio } if batch.len() > 1 => {
                let pipe = client.pipeline();
                for (topic, payload) in batch {
                    let _: Result<(), _> = if *socketio {
                        pipe.publish::<(), _, _>("socketio", socketio_emit(topic, payload))
                            .await
                    } else {
                        pipe.publish::<(), _, _>(*topic, payload.as_str()).await
                    };
                }
                collect(pipe.try_all::<fred::types::Value>().await, batch.len())
            }
            _ => {
                let mut out = Vec::with_capacity(batch.len());
                for (topic, payload) in batch {
                    out.push(self.publish(topic, payload).await);
                }
                out
            }
        }
    }

    pub async fn publish(&mut self, topic: &str, payload: &str) -> anyhow::Result<()> {
        match self {
            Publish::Sluice(p) => {
                p.publish_json(topic, PublishKind::Delta, payload, None)
                    .await?;
            }
            Publish::Redis { client, socketio } => {
                if *socketio {
                    let _: i64 = client
                        .publish("socketio", socketio_emit(topic, payload))
                        .await?;
                } else {
                    let _: i64 = client.publish(topic, payload).await?;
                }
            }
            Publish::Http { client, prefix } => {
                let r = client
                    .post(format!("{prefix}{topic}"))
                    .header("content-type", "application/json")
                    .body(payload.to_owned())
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("publish answered {}", r.status());
                }
            }
            Publish::Ws(conn) => conn.send_text(&format!("{topic}\n{payload}")).await?,
            Publish::SluiceHttp { client, url, token } => {
                let r = client
                    .post(url.as_str())
                    .bearer_auth(token.as_str())
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"topic":"{topic}","payload":{payload}}}"#))
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("POST /publish answered {}", r.status());
                }
            }
        }
        Ok(())
    }
}

/// One result per pipelined command (a missing reply counts as an error).
fn collect(
    replies: Vec<Result<fred::types::Value, fred::error::Error>>,
    n: usize,
) -> Vec<anyhow::Result<()>> {
    let mut out: Vec<anyhow::Result<()>> = replies
        .into_iter()
        .map(|r| r.map(|_| ()).map_err(anyhow::Error::from))
        .collect();
    while out.len() < n {
        out.push(Err(anyhow::anyhow!("no reply in the pipeline")));
    }
    out
}

/// The message a python-socketio external emitter puts on the `socketio`
/// channel: an `emit` of event `msg` to room `topic`, its arguments as a list
/// (python-socketio 5.x's pub/sub listener takes JSON text).
pub fn socketio_emit(topic: &str, payload: &str) -> String {
    format!(
        r#"{{"method":"emit","event":"msg","data":[{payload}],"namespace":"/","room":"{topic}","skip_sid":null,"callback":null,"host_id":"sluice-loadtest"}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_system_classifies_its_frames() {
        use Incoming::*;
        let s = System::Sluice;
        assert_eq!(s.classify(br#"{"type":"delta","topic":"a","seq":1}"#), Data);
        assert_eq!(
            s.classify(br#"{"type":"heartbeat","ts":"x"}"#),
            Reply(r#"{"type":"ping"}"#)
        );
        assert_eq!(s.classify(br#"{"type":"error","code":"X"}"#), Error);
        assert_eq!(s.classify(br#"{"type":"pong"}"#), Other);
        let io = System::Socketio;
        assert_eq!(io.classify(b"2"), Reply("3"));
        assert_eq!(io.classify(br#"42["msg",{"ls":1}]"#), Data);
        assert_eq!(io.classify(b"44{\"message\":\"no\"}"), Error);
        assert_eq!(System::Nchan.classify(b"{}"), Data);
    }

    #[test]
    fn subscribe_urls_per_system() {
        let base = WsUrl::parse("ws://127.0.0.1:9000/ws").expect("url");
        assert_eq!(System::Sluice.subscribe_url(&base, "a.b").path, "/ws");
        assert_eq!(System::Nchan.subscribe_url(&base, "a.b").path, "/sub/a.b");
        assert_eq!(System::Fastapi.subscribe_url(&base, "a.b").path, "/ws/a.b");
        assert_eq!(
            System::Socketioxide.subscribe_url(&base, "a.b").path,
            SOCKETIO_PATH
        );
        assert_eq!(
            "SocketIO".parse::<System>().expect("parses"),
            System::Socketio
        );
        assert!("kafka".parse::<System>().is_err());
    }

    #[test]
    fn emitter_message_is_json_with_the_room() {
        let m: serde_json::Value =
            serde_json::from_str(&socketio_emit("bench.x.1", r#"{"ls":1}"#)).expect("JSON");
        assert_eq!(m["room"], "bench.x.1");
        assert_eq!(m["event"], "msg");
        assert_eq!(m["data"][0]["ls"], 1);
    }

    #[test]
    fn string_fields_and_close_codes() {
        assert_eq!(
            json_str_field(r#"{"payload":{"epoch":"abc","x":1}}"#, "epoch").as_deref(),
            Some("abc")
        );
        assert_eq!(json_str_field("{}", "epoch"), None);
        assert_eq!(
            num_field(r#"{"type":"delta","seq":42,"x":1}"#, "seq"),
            Some(42)
        );
        assert_eq!(num_field(r#"{"seq":"x"}"#, "seq"), None);
        assert_eq!(close_code(&[0x0f, 0xa0]), Some(4000));
        assert_eq!(close_code(&[]), None);
    }
}
