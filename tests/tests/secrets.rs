//! Secrets stay secret: a Redis password never reaches a node's log, an error or an
//! HTTP answer, and short JWT secrets and admin tokens stop a node at start-up.
//! Nodes run as processes so that everything they print is captured.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use sluice_tests::{eventually, process::sluice_binary, ADMIN_TOKEN};

/// The password every test here hides; distinctive so a leak cannot be a coincidence.
const PASSWORD: &str = "Hunter2-redis-pass-9f3c";
/// A wrong password, just as secret.
const WRONG_PASSWORD: &str = "Wrong-redis-pass-77ab1";

/// One environment variable for a node process.
type Env<'a> = (&'a str, &'a str);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn scratch_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "sluice-secrets-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ))
}

/// A `redis-server` with `requirepass`, killed when dropped.
struct PasswordRedis {
    port: u16,
    child: Child,
}

impl PasswordRedis {
    async fn start() -> PasswordRedis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--requirepass",
                PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        eventually(
            Duration::from_secs(20),
            "redis-server listens",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        PasswordRedis { port, child }
    }
}

impl Drop for PasswordRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `sluice` process whose stdout and stderr go to files, killed when dropped.
struct LoggedNode {
    port: u16,
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl LoggedNode {
    fn spawn(env: &[(&str, &str)]) -> LoggedNode {
        let port = free_port();
        let (out, err) = (scratch_file("stdout"), scratch_file("stderr"));
        let mut cmd = Command::new(sluice_binary());
        cmd.env_clear()
            .env("SLUICE_BIND", format!("127.0.0.1:{port}"))
            .env("SLUICE_NODE_ID", "secrets-test")
            .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
            // Everything the node and fred have to say, so a leak at any level shows.
            .env("RUST_LOG", "debug")
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        LoggedNode {
            port,
            child: Some(cmd.spawn().expect("spawn sluice")),
            out,
            err,
        }
    }

    async fn wait_serving(&self) {
        let url = self.url("/health");
        eventually(Duration::from_secs(30), "the node answers /health", || {
            let url = url.clone();
            async move { reqwest::get(&url).await.is_ok() }
        })
        .await;
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits for the process to exit by itself; its exit code.
    async fn exit_code(&mut self) -> Option<i32> {
        let mut child = self.child.take().expect("running");
        for _ in 0..600 {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        panic!("the node did not exit within 30 s");
    }

    /// Stops the node and returns everything it printed.
    fn stop_and_read(&mut self) -> String {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.read()
    }

    fn read(&self) -> String {
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        let err = std::fs::read_to_string(&self.err).unwrap_or_default();
        format!("{out}{err}")
    }
}

impl Drop for LoggedNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(&self.err);
    }
}

/// Every HTTP answer a client could use to fish for the URL: probes, the admin
/// API, and a publish that has to go through Redis. Returns (path, status, body).
async fn answers(node: &LoggedNode) -> Vec<(String, u16, String)> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    for path in ["/health", "/ready", "/metrics", "/cluster", "/topics"] {
        let r = http
            .get(node.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        out.push((path.to_owned(), status, r.text().await.unwrap_or_default()));
    }
    let r = http
        .post(node.url("/publish"))
        .bearer_auth(ADMIN_TOKEN)
        .body(r#"{"topic":"prices.SECRET","payload":{"bid":1}}"#)
        .send()
        .await
        .expect("POST /publish");
    let status = r.status().as_u16();
    out.push((
        "/publish".into(),
        status,
        r.text().await.unwrap_or_default(),
    ));
    out
}

fn assert_hidden(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !text.contains(s),
            "{what} contains the password {s:?}:\n{text}"
        );
    }
}

#[tokio::test]
async fn a_wrong_redis_password_is_never_printed_or_answered() {
    let redis = PasswordRedis::start().await;
    let url = format!("redis://default:{WRONG_PASSWORD}@127.0.0.1:{}", redis.port);
    let mut node = LoggedNode::spawn(&[("REDIS_URL", &url)]);
    node.wait_serving().await;
    let got = answers(&node).await;
    let by_path = |p: &str| got.iter().find(|(path, _, _)| path == p).cloned().unwrap();
    // Redis refuses the password: the node serves but is not ready, and a publish
    // fails with an error that names the broker, not the URL.
    assert_eq!(by_path("/ready").1, 503, "{got:?}");
    let (_, status, body) = by_path("/publish");
    assert!(
        status >= 500,
        "publish with Redis refusing auth: {status} {body}"
    );
    for (path, _, body) in &got {
        assert_hidden(path, body, &[WRONG_PASSWORD, PASSWORD]);
    }
    let log = node.stop_and_read();
    assert_hidden("the node's log", &log, &[WRONG_PASSWORD, PASSWORD]);
    // The URL was printed, redacted: the test would see it if it were not.
    let shown = format!("redis://default:***@127.0.0.1:{}", redis.port);
    assert!(log.contains(&shown), "{shown} in the log:\n{log}");
}

#[tokio::test]
async fn the_right_redis_password_is_used_but_never_printed_or_answered() {
    let redis = PasswordRedis::start().await;
    let url = format!("redis://default:{PASSWORD}@127.0.0.1:{}", redis.port);
    let mut node = LoggedNode::spawn(&[("REDIS_URL", &url)]);
    node.wait_serving().await;
    let ready = node.url("/ready");
    eventually(Duration::from_secs(30), "the node is ready", || {
        let ready = ready.clone();
        async move {
            reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().as_u16() == 200)
        }
    })
    .await;
    let got = answers(&node).await;
    let publish = got.iter().find(|(p, _, _)| p == "/publish").unwrap();
    assert_eq!(
        publish.1, 200,
        "publish through the password-protected Redis: {got:?}"
    );
    let cluster = got.iter().find(|(p, _, _)| p == "/cluster").unwrap();
    assert_eq!(cluster.1, 200, "{got:?}");
    assert!(cluster.2.contains("secrets-test"), "{got:?}");
    for (path, _, body) in &got {
        assert_hidden(path, body, &[PASSWORD]);
    }
    let log = node.stop_and_read();
    assert_hidden("the node's log", &log, &[PASSWORD]);
    let shown = format!("redis://default:***@127.0.0.1:{}", redis.port);
    assert!(log.contains(&shown), "{shown} in the log:\n{log}");
}

#[tokio::test]
async fn a_password_for_a_redis_that_is_not_there_is_never_printed() {
    let port = free_port(); // nothing listens here
    let encoded = "p%40ss-Unreachable-5e1d";
    let url = format!("redis://user:{encoded}@127.0.0.1:{port}/0");
    let mut node = LoggedNode::spawn(&[("REDIS_URL", &url)]);
    node.wait_serving().await;
    for (path, _, body) in answers(&node).await {
        assert_hidden(&path, &body, &[encoded, "p@ss-Unreachable-5e1d"]);
    }
    // Let the reconnect loop fail a few times, so its errors are in the log too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = node.stop_and_read();
    assert_hidden("the node's log", &log, &[encoded, "p@ss-Unreachable-5e1d"]);
    let shown = format!("redis://user:***@127.0.0.1:{port}/0");
    assert!(log.contains(&shown), "{shown} in the log:\n{log}");
}

#[tokio::test]
async fn a_bad_redis_url_stops_the_node_without_printing_its_password() {
    let mut node = LoggedNode::spawn(&[("REDIS_URL", "http://user:Bad-url-pass-31c@cache:6379")]);
    assert_eq!(node.exit_code().await, Some(2));
    let out = node.read();
    assert_hidden("the config error", &out, &["Bad-url-pass-31c"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].contains("REDIS_URL") && lines[0].contains("user:***@cache:6379"));
}

#[tokio::test]
async fn short_secrets_stop_the_node_with_one_line_naming_each_variable() {
    let short_jwt = "jwt-secret-only-20-b";
    let short_admin = "admin-token-31-bytes-long-xxxxx";
    assert_eq!(short_admin.len(), 31);
    let cases: [(&[Env], &[&str]); 3] = [
        (&[("SLUICE_JWT_SECRET", short_jwt)], &["SLUICE_JWT_SECRET"]),
        (
            &[("SLUICE_ADMIN_TOKEN", short_admin)],
            &["SLUICE_ADMIN_TOKEN"],
        ),
        (
            &[
                ("SLUICE_JWT_SECRET", short_jwt),
                ("SLUICE_ADMIN_TOKEN", short_admin),
            ],
            &["SLUICE_JWT_SECRET", "SLUICE_ADMIN_TOKEN"],
        ),
    ];
    for (env, vars) in cases {
        let mut node = LoggedNode::spawn(env);
        assert_eq!(node.exit_code().await, Some(2), "{env:?}");
        let out = node.read();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), vars.len(), "{env:?}: {out}");
        for (line, var) in lines.iter().zip(vars) {
            assert!(line.contains(var), "{line} names {var}");
            assert!(line.contains("at least 32 bytes"), "{line}");
        }
        assert_hidden("the start-up error", &out, &[short_jwt, short_admin]);
    }
    // 32 bytes each start a node.
    let jwt = "j".repeat(32);
    let node = LoggedNode::spawn(&[("SLUICE_JWT_SECRET", &jwt)]);
    node.wait_serving().await;
}
