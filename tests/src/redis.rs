//! Redis for the cluster tests: one testcontainers container per test (so tests
//! that flush, stop or pause Redis cannot disturb each other), or an existing server
//! named by `SLUICE_TEST_REDIS_URL`.
//!
//! The image is `$SLUICE_TEST_REDIS_IMAGE:$SLUICE_TEST_REDIS_TAG`, by default the
//! official `redis:7.0`. Machines without a registry build a local image first
//! (`scripts/build-redis-image.sh`, run by `.ci/run`); testcontainers pulls only
//! when the image is missing.

use std::time::Duration;

use fred::{
    clients::Client,
    interfaces::ClientLike,
    types::{config::Config as RedisConfig, Builder},
};
use testcontainers::{core::IntoContainerPort, runners::AsyncRunner, ContainerAsync, ImageExt};
use testcontainers_modules::redis::{Redis, REDIS_PORT};

pub const URL_VAR: &str = "SLUICE_TEST_REDIS_URL";
pub const IMAGE_VAR: &str = "SLUICE_TEST_REDIS_IMAGE";
pub const TAG_VAR: &str = "SLUICE_TEST_REDIS_TAG";

/// How a test's Redis keeps its data across a stop and start of its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Whatever the image's command does (the local image: AOF on; the official one: off).
    ImageDefault,
    /// Nothing on disk: a restart comes back empty.
    None,
    /// An append-only file written on every command: a restart keeps every acknowledged write.
    Aof,
}

/// A Redis server for one test.
pub struct TestRedis {
    pub url: String,
    container: Option<ContainerAsync<Redis>>,
}

impl std::fmt::Debug for TestRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRedis")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl TestRedis {
    /// Starts a container (or uses `SLUICE_TEST_REDIS_URL`) and waits until it answers.
    pub async fn start() -> TestRedis {
        Self::start_with(Persistence::ImageDefault).await
    }

    /// Starts a container whose Redis persists as `persistence` says. Anything but
    /// [`Persistence::ImageDefault`] needs a container (the test restarts it).
    pub async fn start_with(persistence: Persistence) -> TestRedis {
        if persistence != Persistence::ImageDefault && std::env::var(URL_VAR).is_ok() {
            panic!("this test restarts Redis with chosen persistence and needs a container: unset {URL_VAR}");
        }
        if let Ok(url) = std::env::var(URL_VAR) {
            let r = TestRedis {
                url,
                container: None,
            };
            r.wait_ready(Duration::from_secs(10)).await;
            return r;
        }
        let image = std::env::var(IMAGE_VAR).unwrap_or_else(|_| "redis".to_owned());
        let tag = std::env::var(TAG_VAR).unwrap_or_else(|_| "7.0".to_owned());
        // A fixed host port keeps the URL valid across stop/start of the container.
        let port = free_port();
        // The whole command line, as both the official and the local image take it.
        let mut cmd: Vec<&str> = vec![
            "redis-server",
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
            "--dir",
            "/data",
        ];
        match persistence {
            Persistence::ImageDefault => cmd.clear(),
            Persistence::None => cmd.extend(["--appendonly", "no", "--save", ""]),
            Persistence::Aof => cmd.extend([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ]),
        }
        let image_ref = Redis::default()
            .with_name(image.clone())
            .with_tag(tag.clone())
            .with_mapped_port(port, REDIS_PORT.tcp());
        let image_ref = if cmd.is_empty() {
            image_ref
        } else {
            image_ref.with_cmd(cmd)
        };
        let container = image_ref
            .start()
            .await
            .unwrap_or_else(|e| {
                let hint = if e.to_string().contains("docker client") || e.to_string().contains("(Connect)") {
                    "no Docker daemon is reachable: start Docker (or set DOCKER_HOST), or point the tests at a running Redis with SLUICE_TEST_REDIS_URL=redis://host:port"
                } else if e.to_string().contains("pull") {
                    "the image is missing and cannot be pulled: build it with scripts/build-redis-image.sh and set SLUICE_TEST_REDIS_IMAGE=sluice/redis-local"
                } else {
                    "could not start the Redis container"
                };
                panic!("{hint} (image {image}:{tag}): {e}")
            });
        let r = TestRedis {
            url: format!("redis://127.0.0.1:{port}"),
            container: Some(container),
        };
        r.wait_ready(Duration::from_secs(20)).await;
        r
    }

    /// The container; tests that stop or pause Redis need one.
    fn container(&self) -> &ContainerAsync<Redis> {
        self.container.as_ref().unwrap_or_else(|| {
            panic!("this test stops or pauses Redis and needs a container: unset {URL_VAR}")
        })
    }

    pub async fn stop(&self) {
        self.container().stop().await.expect("stop redis");
    }

    pub async fn start_again(&self) {
        self.container().start().await.expect("start redis");
        self.wait_ready(Duration::from_secs(20)).await;
    }

    pub async fn pause(&self) {
        self.container().pause().await.expect("pause redis");
    }

    pub async fn unpause(&self) {
        self.container().unpause().await.expect("unpause redis");
    }

    /// An engine's `Publisher` on this Redis (2 connections).
    pub async fn publisher(&self) -> sluice_common::publisher::Publisher {
        sluice_common::publisher::Publisher::connect(&self.url, 2)
            .await
            .expect("publisher connects")
    }

    /// A plain client for assertions and raw commands.
    pub async fn client(&self) -> Client {
        let client = Builder::from_config(RedisConfig::from_url(&self.url).expect("url"))
            .build()
            .expect("client");
        client.init().await.expect("connect to test redis");
        client
    }

    pub async fn flushall(&self) {
        let c = self.client().await;
        c.flushall::<()>(false).await.expect("FLUSHALL");
        let _ = c.quit().await;
    }

    /// Calls per command since the last `CONFIG RESETSTAT`, from `INFO
    /// commandstats`, collected into any map.
    pub async fn command_calls<C: FromIterator<(String, u64)>>(&self) -> C {
        let c = self.client().await;
        let info: String = c
            .info(Some(fred::types::InfoKind::CommandStats))
            .await
            .expect("INFO commandstats");
        let _ = c.quit().await;
        sluice_common::redis_info::command_calls(&info)
    }

    /// Number of topic keys (`sluice:{<topic>}:…`), registry records excluded.
    pub async fn sluice_keys(&self) -> usize {
        let c = self.client().await;
        let keys: Vec<String> = c
            .custom(fred::cmd!("KEYS"), vec!["sluice:{*"])
            .await
            .expect("KEYS");
        let _ = c.quit().await;
        keys.len()
    }

    async fn wait_ready(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let attempt = async {
                let client = Builder::from_config(RedisConfig::from_url(&self.url).ok()?)
                    .build()
                    .ok()?;
                let ok = tokio::time::timeout(Duration::from_secs(1), async {
                    client.init().await.ok()?;
                    client.ping::<String>(None).await.ok()
                })
                .await
                .ok()
                .flatten()
                .is_some();
                let _ = client.quit().await;
                ok.then_some(())
            };
            if attempt.await.is_some() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Redis at {} not ready within {within:?}",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
