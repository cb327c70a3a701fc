//! Redis deployments as containers of the local Redis image on a private Docker
//! network of their own, for failover tests: a 3-master + 3-replica Cluster and a
//! master + replica watched by three sentinels. Every server announces its address
//! on that network (`cluster-announce-ip`; sentinels report what they see there),
//! and the host reaches those addresses directly, so Sluice nodes run in the test
//! process follow MOVED redirects and sentinel answers as a node in the network
//! would. Nothing is published on a host port.
//!
//! The image is `$SLUICE_TEST_REDIS_IMAGE:$SLUICE_TEST_REDIS_TAG` (default the
//! official `redis:7.0`), as in [`crate::redis`]. Containers are removed when their
//! handles drop; [`kill`](RedisBox::kill) is a SIGKILL, like a crashed host.

use std::{net::IpAddr, process::Command, time::Duration};

use testcontainers::{core::WaitFor, runners::AsyncRunner, ContainerAsync, GenericImage, ImageExt};

use crate::redis::{IMAGE_VAR, TAG_VAR};

/// The Sentinel service name of [`ContainerSentinel`].
pub const SERVICE: &str = "sluicefailover";

/// One Redis (data node or sentinel) container.
pub struct RedisBox {
    pub name: String,
    /// Its address on the private network, reachable from the host.
    pub ip: IpAddr,
    container: ContainerAsync<GenericImage>,
}

impl std::fmt::Debug for RedisBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBox")
            .field("name", &self.name)
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

fn image() -> (String, String) {
    (
        std::env::var(IMAGE_VAR).unwrap_or_else(|_| "redis".to_owned()),
        std::env::var(TAG_VAR).unwrap_or_else(|_| "7.0".to_owned()),
    )
}

/// A name prefix unique to one test run (containers, network).
pub fn unique_prefix(what: &str) -> String {
    format!(
        "sluice-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

impl RedisBox {
    /// Starts `redis-server ARGS` named `name` on `net`; waits for `ready` on stdout.
    pub async fn start(
        net: &str,
        name: &str,
        args: &[&str],
        ready: &str,
        files: Vec<(String, Vec<u8>)>,
    ) -> RedisBox {
        let (image, tag) = image();
        let mut cmd = vec!["redis-server".to_owned()];
        cmd.extend(args.iter().map(|a| (*a).to_owned()));
        let mut req = GenericImage::new(image.clone(), tag.clone())
            .with_wait_for(WaitFor::message_on_stdout(ready))
            .with_network(net)
            .with_container_name(name)
            .with_cmd(cmd)
            .with_startup_timeout(Duration::from_secs(30));
        for (path, bytes) in files {
            req = req.with_copy_to(path, bytes);
        }
        let container = req.start().await.unwrap_or_else(|e| {
            panic!(
                "start {image}:{tag} as {name} (build it with scripts/build-redis-image.sh): {e}"
            )
        });
        let ip = container
            .get_bridge_ip_address()
            .await
            .unwrap_or_else(|e| panic!("{name}'s address on {net}: {e}"));
        RedisBox {
            name: name.to_owned(),
            ip,
            container,
        }
    }

    /// A data node: no persistence, plus `extra` arguments.
    pub async fn data(net: &str, name: &str, extra: &[&str]) -> RedisBox {
        let mut args = vec![
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
            "--dir",
            "/data",
            "--appendonly",
            "no",
            "--save",
            "",
        ];
        args.extend(extra);
        RedisBox::start(net, name, &args, "Ready to accept connections", Vec::new()).await
    }

    /// `redis-cli` against this container's port 6379 (panics on failure).
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.ip, 6379, args)
    }

    /// `ip:6379`.
    pub fn addr(&self) -> String {
        format!("{}:6379", self.ip)
    }

    /// SIGKILL: the server dies without a word, as a crashed host.
    pub fn kill(&self) {
        let out = Command::new("docker")
            .args(["kill", "--signal", "KILL", self.container.id()])
            .output()
            .expect("run docker kill");
        assert!(out.status.success(), "docker kill {}", self.name);
    }
}

/// `redis-cli -h IP -p PORT ARGS`; returns stdout (panics if it cannot run).
pub fn cli(ip: IpAddr, port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", &ip.to_string(), "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(
        out.status.success(),
        "redis-cli -h {ip} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` every 100 ms; panics with `what` after `within`.
fn wait(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Six cluster-enabled containers made into 3 masters, each with one replica.
#[derive(Debug)]
pub struct ContainerCluster {
    pub nodes: Vec<RedisBox>,
}

impl ContainerCluster {
    /// Starts the containers on `net` with `cluster-node-timeout` `node_timeout_ms`
    /// and creates the cluster; returns once every node reports `cluster_state:ok`
    /// and every master has its replica online.
    pub async fn start(net: &str, prefix: &str, node_timeout_ms: u32) -> ContainerCluster {
        let timeout = node_timeout_ms.to_string();
        let mut nodes = Vec::new();
        for i in 0..6 {
            let name = format!("{prefix}-c{i}");
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &timeout,
            ];
            nodes.push(RedisBox::data(net, &name, &args).await);
        }
        for n in &nodes {
            n.cli(&["CONFIG", "SET", "cluster-announce-ip", &n.ip.to_string()]);
        }
        let addrs: Vec<String> = nodes.iter().map(RedisBox::addr).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = ContainerCluster { nodes };
        wait(
            Duration::from_secs(30),
            "cluster ok with every replica online",
            || {
                c.nodes
                    .iter()
                    .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                    && c.masters().len() == 3
                    && c.masters().iter().all(|m| {
                        let info = m.cli(&["INFO", "replication"]);
                        info.contains("connected_slaves:1") && info.contains("state=online")
                    })
            },
        );
        c
    }

    /// The nodes that say they are masters now (a killed one is skipped).
    pub fn masters(&self) -> Vec<&RedisBox> {
        self.nodes
            .iter()
            .filter(|n| role(n).is_some_and(|r| r.starts_with("master")))
            .collect()
    }

    /// The master serving `key`'s slot now (the one that holds the key).
    pub fn owner(&self, key: &str) -> Option<&RedisBox> {
        self.masters()
            .into_iter()
            .find(|m| m.cli(&["EXISTS", key]).trim() == "1")
    }

    /// The replica of `master`.
    pub fn replica_of(&self, master: &RedisBox) -> &RedisBox {
        self.nodes
            .iter()
            .find(|n| {
                role(n)
                    .is_some_and(|r| r.starts_with("slave") && r.contains(&master.ip.to_string()))
            })
            .unwrap_or_else(|| panic!("no replica of {}", master.name))
    }

    /// `redis-cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let rest: Vec<String> = self.nodes[1..]
            .iter()
            .map(|n| format!("node={}", n.addr()))
            .collect();
        format!(
            "redis-cluster://{}?{}",
            self.nodes[0].addr(),
            rest.join("&")
        )
    }
}

/// `ROLE`'s output, or `None` when the server does not answer.
fn role(n: &RedisBox) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", &n.ip.to_string(), "-p", "6379", "ROLE"])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && !s.trim().is_empty() && !s.contains("Could not connect")).then_some(s)
}

/// A master and one replica, watched by three sentinels (quorum 2).
#[derive(Debug)]
pub struct ContainerSentinel {
    pub master: RedisBox,
    pub replica: RedisBox,
    pub sentinels: Vec<RedisBox>,
}

impl ContainerSentinel {
    /// Starts everything on `net`; sentinels call the master down after
    /// `down_after_ms` of silence. Returns once the replica is online and every
    /// sentinel knows it and the other sentinels.
    pub async fn start(net: &str, prefix: &str, down_after_ms: u32) -> ContainerSentinel {
        let master = RedisBox::data(net, &format!("{prefix}-m"), &[]).await;
        let mip = master.ip.to_string();
        let replica =
            RedisBox::data(net, &format!("{prefix}-r"), &["--replicaof", &mip, "6379"]).await;
        let conf = format!(
            "port 26379\nbind 0.0.0.0\nprotected-mode no\ndir /data\n\
             sentinel monitor {SERVICE} {mip} 6379 2\n\
             sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n\
             sentinel failover-timeout {SERVICE} 4000\n\
             sentinel parallel-syncs {SERVICE} 1\n"
        );
        let mut sentinels = Vec::new();
        for i in 0..3 {
            sentinels.push(
                RedisBox::start(
                    net,
                    &format!("{prefix}-s{i}"),
                    &["/data/sentinel.conf", "--sentinel"],
                    "+monitor master",
                    vec![("/data/sentinel.conf".to_owned(), conf.clone().into_bytes())],
                )
                .await,
            );
        }
        let s = ContainerSentinel {
            master,
            replica,
            sentinels,
        };
        let rip = s.replica.ip.to_string();
        wait(
            Duration::from_secs(30),
            "replica online, known to every sentinel, sentinels know each other",
            || {
                let info = s.master.cli(&["INFO", "replication"]);
                info.contains("connected_slaves:1")
                    && info.contains("online")
                    && s.sentinels.iter().all(|x| {
                        cli(x.ip, 26379, &["SENTINEL", "replicas", SERVICE]).contains(&rip)
                            && cli(x.ip, 26379, &["SENTINEL", "master", SERVICE])
                                .lines()
                                .skip_while(|l| *l != "num-other-sentinels")
                                .nth(1)
                                == Some("2")
                    })
            },
        );
        s
    }

    /// `redis-sentinel://` naming all three sentinels.
    pub fn url(&self) -> String {
        let rest: Vec<String> = self.sentinels[1..]
            .iter()
            .map(|s| format!("node={}:26379", s.ip))
            .collect();
        format!(
            "redis-sentinel://{}:26379?{}&sentinelServiceName={SERVICE}",
            self.sentinels[0].ip,
            rest.join("&")
        )
    }

    /// The master's address as the sentinels name it now.
    pub fn master_ip(&self) -> Option<String> {
        let out = cli(
            self.sentinels[0].ip,
            26379,
            &["SENTINEL", "get-master-addr-by-name", SERVICE],
        );
        out.lines().next().map(|l| l.trim().to_owned())
    }
}
