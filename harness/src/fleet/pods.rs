//! Sidecar processes for the fleet run: started from the `rally-sidecar` executable on port 0
//! (their addresses and fleet pod id read from their JSON logs), stopped with SIGTERM or
//! killed with SIGKILL, and the central replayer run as the CronJob runs it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use crate::drain::ready_addrs;
use crate::run::API_KEY;

/// One sidecar process.
pub struct Pod {
    pub index: usize,
    pub pid: u32,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// Its id in the fleet (`fleet_pods.pod_id`), when in fleet mode.
    pub pod_id: Option<String>,
    pub journal: PathBuf,
    child: tokio::process::Child,
}

/// How a pod is configured.
#[derive(Debug, Clone)]
pub struct PodConfig {
    pub upstream: String,
    /// The fleet's database; `None` for a sidecar on its own.
    pub fleet_url: Option<String>,
    pub budget: u32,
    pub lease: String,
    pub unavailable_timeout: String,
}

impl PodConfig {
    /// The environment every `rally-sidecar` process of the run gets.
    pub fn env(&self, journal: &Path) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "RALLY_SIDECAR_JOURNAL_PATH".into(),
                journal.display().to_string(),
            ),
            ("RALLY_SIDECAR_LOG_FORMAT".into(), "json".into()),
            ("RALLY_SIDECAR_LOG_LEVEL".into(), "info".into()),
            ("RALLY_SIDECAR_SHUTDOWN_GRACE".into(), "20s".into()),
            // Writes carry their Build; a CI variable of the machine must not add one.
            ("RALLY_SIDECAR_CONTEXT_BUILD_ENV".into(), "".into()),
        ];
        match &self.fleet_url {
            Some(url) => env.extend([
                ("RALLY_SIDECAR_FLEET_URL".into(), url.clone()),
                ("RALLY_SIDECAR_FLEET_BUDGET".into(), self.budget.to_string()),
                ("RALLY_SIDECAR_FLEET_LEASE".into(), self.lease.clone()),
                (
                    "RALLY_SIDECAR_FLEET_UNAVAILABLE_TIMEOUT".into(),
                    self.unavailable_timeout.clone(),
                ),
            ]),
            // Alone, the same budget is the local governor's cap.
            None => env.push((
                "RALLY_SIDECAR_UPSTREAM_MAX_CONCURRENCY_PER_CREDENTIAL".into(),
                self.budget.to_string(),
            )),
        }
        env
    }
}

fn command(binary: &Path, cfg: &PodConfig, journal: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(binary);
    c.envs(cfg.env(journal))
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("RALLY_SIDECAR_")) {
        if !cfg.env(journal).iter().any(|(n, _)| *n == k) {
            c.env_remove(k);
        }
    }
    c
}

impl Pod {
    /// Starts pod `index` and waits for its "ready" line.
    pub async fn start(
        binary: &Path,
        index: usize,
        cfg: &PodConfig,
        dir: &Path,
    ) -> Result<Pod, String> {
        let journal = dir.join(format!("pod-{index}.sqlite"));
        let mut child = command(binary, cfg, &journal)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0", "--upstream", &cfg.upstream])
            .env("HOSTNAME", format!("pod-{index}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let pid = child.id().ok_or("the sidecar exited at once")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut pod_id = None;
        let (proxy, admin) = loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .map_err(|_| format!("pod {index} did not start in 60 s"))?
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("pod {index} exited before it was ready"))?;
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && let Some(p) = v["fields"]["pod"].as_str()
            {
                pod_id = Some(p.to_string());
            }
            if let Some(addrs) = ready_addrs(&line) {
                break addrs;
            }
        };
        // Keep reading its logs so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Pod {
            index,
            pid,
            proxy,
            admin,
            pod_id,
            journal,
            child,
        })
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.proxy)
    }

    /// SIGKILL: nothing of the process runs after this.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then waits for the drain (and the fleet's last shipping) to end.
    pub async fn stop(mut self) -> Option<i32> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        match tokio::time::timeout(Duration::from_secs(120), self.child.wait()).await {
            Ok(Ok(s)) => s.code(),
            _ => {
                let _ = self.child.start_kill();
                None
            }
        }
    }
}

/// One `rally-sidecar journal replay --json` process, as the fleet's CronJob runs it: the ids
/// of the ledger rows it replayed (not skipped), with their final state.
/// Alone (no fleet URL) it replays the journal at `journal`; in fleet mode that journal is
/// only the replayer's own, empty.
pub async fn replay_process(
    binary: &Path,
    cfg: &PodConfig,
    journal: &Path,
) -> Result<Vec<(i64, String)>, String> {
    let out = command(binary, cfg, journal)
        .args(["journal", "replay", "--json", "--upstream", &cfg.upstream])
        .env("RALLY_API_KEY", API_KEY)
        .env("RALLY_SIDECAR_LOG_LEVEL", "warn")
        .output()
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["skipped"].is_null()
            && let (Some(id), Some(state)) = (v["id"].as_i64(), v["state"].as_str())
        {
            rows.push((id, state.to_string()));
        }
    }
    // Exit 2 means some rows stayed unconfirmed (another round may land them).
    match out.status.code() {
        Some(0) | Some(2) => Ok(rows),
        other => Err(format!(
            "journal replay exited {other:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}
