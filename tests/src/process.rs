//! Nodes as separate `sluice` processes on loopback, for drain and kill tests that
//! need real signals.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

/// Builds (once per test binary) the `sluice` binary for the profile this test binary
/// was built with, into the same target directory, and returns its path.
///
/// A test crate cannot name another package's binary (`CARGO_BIN_EXE_*` exists only
/// for the package's own targets), so the profile is read from where this test binary
/// lives, `<target-dir>/<profile-dir>/deps/<test>`, and cargo is asked for exactly
/// that profile and target directory: a `cargo test --release` runs a release node,
/// never a stale debug one left in another directory.
pub fn sluice_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("<target>/<profile>/deps/<test>");
        let target_dir = profile_dir.parent().expect("the target directory");
        let dir_name = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("profile directory name");
        // Cargo's built-in `dev` and `test` profiles write to `debug/`, `bench` to
        // `release/`; a custom profile writes to a directory of its own name.
        let profile = match dir_name {
            "debug" => "dev",
            other => other,
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "sluice-node", "--bin", "sluice"])
            .args(["--profile", profile])
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build --profile {profile} of the sluice binary failed"
        );
        let bin = profile_dir.join("sluice");
        assert!(bin.exists(), "{} not found after building", bin.display());
        bin
    })
    .clone()
}

/// `VmRSS` of process `pid` (from `/proc/PID/status`), in bytes.
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A node process; killed when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    pub port: u16,
    pub node_id: String,
    child: Option<Child>,
}

impl NodeProcess {
    /// Starts `sluice` with `env` on a free loopback port and waits until `/ready`.
    pub async fn start(node_id: &str, env: &[(&str, String)]) -> NodeProcess {
        let port = free_port();
        let mut cmd = Command::new(sluice_binary());
        cmd.env_clear()
            .env("SLUICE_BIND", format!("127.0.0.1:{port}"))
            .env("SLUICE_NODE_ID", node_id)
            .env("SLUICE_ADMIN_TOKEN", crate::ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn sluice");
        let node = NodeProcess {
            port,
            node_id: node_id.to_owned(),
            child: Some(child),
        };
        let url = format!("http://127.0.0.1:{port}/ready");
        crate::eventually(Duration::from_secs(20), "the node process is ready", || {
            let url = url.clone();
            async move {
                reqwest::get(&url)
                    .await
                    .map(|r| r.status().as_u16() == 200)
                    .unwrap_or(false)
            }
        })
        .await;
        node
    }

    /// The process id, e.g. to read `/proc/PID/status`.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("the process runs")
    }

    /// Resident memory of the node process alone, bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_of(self.pid())
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let status = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {sig} failed");
        }
    }

    /// SIGTERM: the node drains.
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// SIGKILL: the node dies at once.
    pub fn kill(&mut self) {
        self.signal("-KILL");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit; returns how long that took.
    pub async fn wait_exit(&mut self, within: Duration) -> Duration {
        let start = std::time::Instant::now();
        let Some(mut child) = self.child.take() else {
            return Duration::ZERO;
        };
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                assert!(status.success(), "node exited with {status}");
                return start.elapsed();
            }
            if start.elapsed() >= within {
                // Not left running (and holding the test's output pipes) after the
                // test failed.
                let _ = child.kill();
                let _ = child.wait();
                panic!("node did not exit within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
