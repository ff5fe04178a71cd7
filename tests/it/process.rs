//! The sidecar as a separate process (for memory measurements and signals).

use std::net::SocketAddr;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct SidecarProcess {
    pub child: Child,
    pub addr: SocketAddr,
    #[allow(dead_code)]
    pub admin: SocketAddr,
    pub pid: u32,
    /// Every stderr line, collected in the background.
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl SidecarProcess {
    /// Starts `rally-sidecar serve` in front of `upstream`, plus `extra` arguments and
    /// `RALLY_SIDECAR_*` variables given as (name, value) pairs in `env`.
    pub async fn spawn(upstream: &str, env: &[(&str, &str)]) -> SidecarProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rally-sidecar"));
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
        ])
        .env("RALLY_SIDECAR_LOG_FORMAT", "json")
        .env(
            "RALLY_SIDECAR_JOURNAL_PATH",
            std::env::temp_dir().join(format!(
                "rally-sidecar-proc-{}.sqlite",
                uuid::Uuid::new_v4()
            )),
        )
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn rally-sidecar");
        let pid = child.id().expect("pid");
        let stderr = child.stderr.take().expect("stderr");
        let mut reader = BufReader::new(stderr).lines();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut addr, mut admin) = (None, None);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while addr.is_none() {
            let line = tokio::time::timeout_at(deadline, reader.next_line())
                .await
                .expect("sidecar started in time")
                .expect("read stderr")
                .expect("sidecar exited before it was ready");
            if let Some((p, a)) = rally_sidecar_harness::soak::ready_addrs(&line) {
                addr = Some(p);
                admin = Some(a);
            }
            lines.lock().expect("lines").push(line);
        }
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        SidecarProcess {
            child,
            addr: addr.expect("proxy addr"),
            admin: admin.expect("admin addr"),
            pid,
            lines,
        }
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        assert!(sigterm(self.pid));
    }

    pub async fn stop(mut self) {
        self.sigterm();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(40), self.child.wait()).await;
    }

    pub fn log_text(&self) -> String {
        self.lines.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

/// Sends SIGTERM to `pid` (through kill(1), so no unsafe code is needed); whether kill
/// succeeded.
pub fn sigterm(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}
