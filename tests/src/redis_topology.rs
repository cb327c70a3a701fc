//! Redis deployments as `redis-server` processes on loopback, for the tests of
//! every `REDIS_URL` form: one server with TLS (certificates made at test time
//! with the `openssl` CLI), a master + replica watched by three sentinels, and a
//! 3-master + 3-replica Cluster. Every process dies with its handle.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sluice_common::{
    publisher::Publisher,
    redis_client::{RedisSettings, Replicas},
};

/// A free TCP port on 127.0.0.1 (released before Redis binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A fresh directory for one deployment's files.
pub fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sluice-{what}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// One `redis-server` process (a data node or a sentinel).
#[derive(Debug)]
pub struct RedisProcess {
    pub port: u16,
    child: Option<Child>,
}

impl RedisProcess {
    /// Starts `redis-server` with `args` in `dir` and waits until it accepts TCP.
    pub fn start(dir: &Path, port: u16, args: &[String]) -> RedisProcess {
        let log = std::fs::File::create(dir.join(format!("redis-{port}.log"))).expect("log");
        let child = Command::new("redis-server")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("redis-server runs (Debian's redis-server package)");
        let p = RedisProcess {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// A data node: no persistence, on `port`, plus `extra` arguments.
    pub fn data(dir: &Path, port: u16, extra: &[&str]) -> RedisProcess {
        let mut args: Vec<String> = ["--port", &port.to_string(), "--bind", "127.0.0.1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(
            ["--save", "", "--appendonly", "no", "--dir"]
                .iter()
                .map(|s| s.to_string()),
        );
        args.push(dir.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        RedisProcess::start(dir, port, &args)
    }

    /// Kills the process at once (SIGKILL), like a crashed host.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli` against 127.0.0.1:`port`; returns stdout (panics on failure).
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(
        out.status.success(),
        "redis-cli -p {port} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Certificates for a TLS Redis on 127.0.0.1: a CA and a server certificate it
/// signs, with the IP address as subject alternative name.
#[derive(Debug, Clone)]
pub struct TestCerts {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCerts {
    /// A CA named `name` and a server certificate for 127.0.0.1 signed by it.
    pub fn make(name: &str) -> TestCerts {
        let dir = temp_dir(&format!("certs-{name}"));
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca_args = vec!["req", "-x509"];
        ca_args.extend(ec);
        ca_args.extend(["-keyout", "ca.key", "-out", "ca.crt", "-days", "2"]);
        let subj = format!("/CN=sluice-test-ca-{name}");
        ca_args.extend(["-subj", subj.as_str()]);
        openssl(&dir, &ca_args);
        let mut csr_args = vec!["req"];
        csr_args.extend(ec);
        csr_args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&dir, &csr_args);
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        );
        TestCerts {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            dir,
        }
    }
}

/// One Redis that speaks only TLS.
#[derive(Debug)]
pub struct TlsRedis {
    pub certs: TestCerts,
    pub server: RedisProcess,
}

impl TlsRedis {
    /// A TLS-only Redis with certificates of its own.
    pub fn start() -> TlsRedis {
        TlsRedis::with_certs(TestCerts::make("tls"))
    }

    /// A TLS-only Redis presenting `certs`' server certificate.
    pub fn with_certs(certs: TestCerts) -> TlsRedis {
        let port = free_port();
        let args: Vec<String> = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &certs.cert.display().to_string(),
            "--tls-key-file",
            &certs.key.display().to_string(),
            "--tls-ca-cert-file",
            &certs.ca.display().to_string(),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let server = RedisProcess::start(&certs.dir, port, &args);
        TlsRedis { certs, server }
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.server.port)
    }
}

/// The Sentinel service name the tests use.
pub const SENTINEL_SERVICE: &str = "sluicemaster";

/// A master and one replica, watched by three sentinels (quorum 2).
#[derive(Debug)]
pub struct SentinelSet {
    pub dir: PathBuf,
    pub master: RedisProcess,
    pub replica: RedisProcess,
    pub sentinels: Vec<RedisProcess>,
}

impl SentinelSet {
    pub fn start() -> SentinelSet {
        let dir = temp_dir("sentinel");
        let mport = free_port();
        let master = RedisProcess::data(&dir, mport, &[]);
        let rport = free_port();
        let replica = RedisProcess::data(
            &dir,
            rport,
            &["--replicaof", "127.0.0.1", &mport.to_string()],
        );
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\n\
                     sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {mport} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
                     sentinel failover-timeout {SENTINEL_SERVICE} 4000\n\
                     sentinel parallel-syncs {SENTINEL_SERVICE} 1\n"
                ),
            )
            .expect("sentinel conf");
            sentinels.push(RedisProcess::start(
                &dir,
                port,
                &[conf.display().to_string(), "--sentinel".to_owned()],
            ));
        }
        let set = SentinelSet {
            dir,
            master,
            replica,
            sentinels,
        };
        set.wait_replica_online(Duration::from_secs(15));
        set
    }

    /// `redis-sentinel://` naming all three sentinels.
    pub fn url(&self) -> String {
        let mut url = format!("redis-sentinel://127.0.0.1:{}?", self.sentinels[0].port);
        for s in &self.sentinels[1..] {
            url.push_str(&format!("node=127.0.0.1:{}&", s.port));
        }
        url.push_str(&format!("sentinelServiceName={SENTINEL_SERVICE}"));
        url
    }

    /// The port the sentinels name as master now.
    pub fn master_port(&self) -> Option<u16> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.sentinels[0].port.to_string()])
            .args(["SENTINEL", "get-master-addr-by-name", SENTINEL_SERVICE])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
    }

    fn wait_replica_online(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let info = cli(self.master.port, &["INFO", "replication"]);
            let known = (0..self.sentinels.len()).all(|i| {
                cli(
                    self.sentinels[i].port,
                    &["SENTINEL", "replicas", SENTINEL_SERVICE],
                )
                .contains(&self.replica.port.to_string())
            });
            if info.contains("connected_slaves:1") && info.contains("online") && known {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica or sentinels not ready: {info}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether the Redis on `port` holds the `sluice` function library.
pub fn library_on(port: u16) -> bool {
    cli(port, &["FUNCTION", "LIST", "LIBRARYNAME", "sluice"]).contains("sluice_publish")
}

/// A Redis Cluster: 3 masters, each with one replica.
#[derive(Debug)]
pub struct TestCluster {
    pub dir: PathBuf,
    pub nodes: Vec<RedisProcess>,
}

impl TestCluster {
    pub fn start() -> TestCluster {
        let dir = temp_dir("cluster");
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            let conf = format!("nodes-{port}.conf");
            nodes.push(RedisProcess::data(
                &dir,
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "2000",
                ],
            ));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = Command::new("redis-cli")
            .args(&args)
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = TestCluster { dir, nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c
            .nodes
            .iter()
            .all(|n| cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            || c.masters().len() != 3
            || !c.masters().iter().all(|&m| {
                let info = cli(m, &["INFO", "replication"]);
                info.contains("connected_slaves:1") && info.contains("state=online")
            })
        {
            assert!(
                Instant::now() < deadline,
                "cluster did not become ok with every replica online"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// Ports of the nodes that are masters now.
    pub fn masters(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| cli(n.port, &["ROLE"]).starts_with("master"))
            .map(|n| n.port)
            .collect()
    }

    /// The master holding `key` now (the one that answers EXISTS without MOVED).
    pub fn owner(&self, key: &str) -> u16 {
        self.masters()
            .into_iter()
            .find(|&m| cli(m, &["EXISTS", key]).trim() == "1")
            .unwrap_or_else(|| panic!("no master holds {key}"))
    }

    /// The replica of `master` (the node whose `ROLE` names it as its master).
    pub fn replica_of(&self, master: u16) -> u16 {
        self.nodes
            .iter()
            .map(|n| n.port)
            .find(|&p| {
                let role = cli(p, &["ROLE"]);
                role.starts_with("slave") && role.contains(&master.to_string())
            })
            .unwrap_or_else(|| panic!("no replica of {master}"))
    }

    /// An engine's `Publisher` on this Cluster with `pool` connections, reading
    /// from replicas where it can (1 s replica timeout).
    pub async fn publisher(&self, pool: usize) -> Publisher {
        let settings = RedisSettings {
            tls_ca: None,
            replicas: Replicas::Auto,
            replica_timeout: Duration::from_millis(1000),
        };
        Publisher::connect_with(&self.url(), pool, &settings)
            .await
            .expect("publisher on Cluster")
    }

    /// `redis-cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}?", self.nodes[0].port);
        let rest: Vec<String> = self.nodes[1..]
            .iter()
            .map(|n| format!("node=127.0.0.1:{}", n.port))
            .collect();
        url.push_str(&rest.join("&"));
        url
    }
}
