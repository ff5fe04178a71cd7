//! Fleet mode against a real PostgreSQL (tests/it/pg.rs starts it): each test gets a fresh
//! database, and each "pod" is a `Fleet` with its own pool, pod id and background tasks — the
//! state a separate sidecar process would have. A pod dies the way a killed process does: its
//! runtime is torn down, so its leases stop being renewed and nothing is released.
//! Leases are short here (a few seconds) so expiry tests run in seconds.

mod budget;
mod context;
mod lanes;
mod ledger;
mod run;
mod sidecars;

use std::time::Duration;

use rally_sidecar::fleet::{Fleet, FleetConfig};

/// Test settings: short leases and bounds.
pub fn config(url: &str) -> FleetConfig {
    let mut cfg = FleetConfig::new(url);
    cfg.budget = 3;
    cfg.pod_cap = 3;
    cfg.lease = Duration::from_secs(2);
    cfg.unavailable_timeout = Duration::from_secs(1);
    cfg.acquire_timeout = Duration::from_secs(60);
    cfg.context_poll = Duration::from_millis(300);
    cfg
}

/// A fresh database on the shared server.
pub async fn fresh() -> String {
    tokio::task::spawn_blocking(crate::pg::shared)
        .await
        .expect("server");
    crate::pg::shared().fresh_db().await
}

pub async fn pod(cfg: &FleetConfig) -> Fleet {
    Fleet::connect(cfg.clone()).await.expect("connect")
}

/// A pod on a runtime of its own, which `kill` tears down without any cleanup running — the
/// database sees what it sees when a sidecar is killed with SIGKILL.
pub struct Doomed {
    rt: tokio::runtime::Runtime,
    pub fleet: Fleet,
}

impl Doomed {
    pub fn start(cfg: &FleetConfig) -> Doomed {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let fleet = rt.block_on(Fleet::connect(cfg.clone())).expect("connect");
        Doomed { rt, fleet }
    }

    /// Runs `f` on the pod's runtime.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        self.rt.block_on(f)
    }

    /// Kills the pod: its tasks stop at once and nothing it holds is given back.
    pub fn kill(self) {
        // Values the pod still holds must not run their drop (which would release them).
        std::mem::forget(self.fleet);
        self.rt.shutdown_background();
    }
}

#[tokio::test]
async fn migrations_apply_once_when_pods_start_together() {
    let url = fresh().await;
    let cfg = config(&url);
    let pods = futures_util::future::join_all((0..5).map(|_| Fleet::connect(cfg.clone()))).await;
    assert!(pods.iter().all(|p| p.is_ok()), "every pod started");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let n: i64 = client
        .query_one("SELECT count(*) FROM fleet_migrations", &[])
        .await
        .expect("count")
        .get(0);
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/fleet"))
        .expect("migrations")
        .count() as i64;
    assert_eq!(n, files, "each migration is recorded once");
    let pods: i64 = client
        .query_one("SELECT count(*) FROM fleet_pods", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(pods, 5, "each pod registered itself");
}

#[tokio::test]
async fn every_pod_gets_the_same_writer_key() {
    let url = fresh().await;
    let cfg = config(&url);
    let (a, b) = (pod(&cfg).await, pod(&cfg).await);
    assert_ne!(a.pod_id(), b.pod_id(), "pods are told apart");
    assert_eq!(
        a.writer_key(),
        b.writer_key(),
        "one credential has one digest fleet-wide"
    );
    assert_ne!(a.writer_key(), &[0u8; 32]);
}

#[tokio::test]
async fn a_database_that_cannot_be_reached_fails_connect_clearly() {
    let dir = crate::support::temp_dir("no-pg");
    let mut cfg = config(&format!(
        "host={} port=5432 user=postgres dbname=none",
        dir.display()
    ));
    cfg.lease = Duration::from_secs(3);
    let err = match Fleet::connect(cfg).await {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e,
    };
    assert!(err.is_unreachable(), "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");
}

/// The validator tests/it/ops.rs uses, from the same pinned install in `.e2e/k8s`.
fn k8s_validator() -> std::path::PathBuf {
    const PIN: &str = "kubernetes-validate==1.37.0";
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".e2e");
    std::fs::create_dir_all(&dir).expect(".e2e");
    let lock = std::fs::File::create(dir.join(".k8s-lock")).expect("lock");
    lock.lock().expect("lock");
    let target = dir.join("k8s");
    let marker = target.join(".installed");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(PIN) {
        let _ = std::fs::remove_dir_all(&target);
        let out = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--no-input", "--target"])
            .arg(&target)
            .arg(PIN)
            .output()
            .expect("pip");
        assert!(
            out.status.success(),
            "pip install {PIN}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&marker, PIN).expect("marker");
    }
    target
}

/// The fleet manifests are valid Kubernetes objects.
#[tokio::test]
async fn fleet_manifests_validate_against_the_schemas() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let lib = tokio::task::spawn_blocking(k8s_validator)
        .await
        .expect("install");
    let manifests: Vec<std::path::PathBuf> =
        std::fs::read_dir(root.join("deploy/kubernetes/fleet"))
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
    assert!(!manifests.is_empty());
    let out = tokio::process::Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(&manifests)
        .env("PYTHONPATH", &lib)
        .output()
        .await
        .expect("validate");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
