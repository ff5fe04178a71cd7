//! Permit latency: how long `Budget::acquire` takes with several pods on one PostgreSQL. Each
//! "pod" is a `Fleet` of its own (its own pool, pod id, listener and drivers — what PostgreSQL
//! sees of a separate sidecar), its tasks each holding a permit for `hold` (a Rally request's
//! time) and releasing it. Measured twice: one task alone (the round trips a permit costs), and
//! every pod's tasks contending for the budget (the wait a request sees under load).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use rally_sidecar::fleet::budget::Priority;
use rally_sidecar::fleet::{Fleet, FleetConfig};

use crate::run::Latency;

#[derive(Debug, Clone, Default, Serialize)]
pub struct PermitBench {
    pub pods: usize,
    pub tasks_per_pod: usize,
    pub budget: u32,
    pub hold_ms: u64,
    /// One task, nothing else running: acquire and release, one after the other.
    pub alone_ms: Latency,
    /// Every task contending: from asking to holding.
    pub contended_ms: Latency,
    pub grants: usize,
    /// Grants per second under contention, against budget / hold (the most possible).
    pub grants_per_s: f64,
    pub ideal_per_s: f64,
}

/// Runs both measurements against the database at `url` (fresh or not: the user is its own).
pub async fn permit_latency(
    url: &str,
    pods: usize,
    tasks_per_pod: usize,
    budget: u32,
    hold: Duration,
    per_task: usize,
) -> Result<PermitBench, String> {
    let mut cfg = FleetConfig::new(url);
    cfg.budget = budget;
    cfg.pod_cap = budget;
    let mut fleets = Vec::new();
    for _ in 0..pods {
        fleets.push(
            Fleet::connect(cfg.clone())
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let user = format!("user:/user/bench-{}", std::process::id());

    let alone = fleets[0].budget();
    let mut samples = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let p = alone
            .acquire(&user, Priority::Normal)
            .await
            .map_err(|e| e.to_string())?;
        samples.push(t.elapsed());
        drop(p);
        // Let the release land before the next ask, as between two requests.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let alone_ms = Latency::of(&samples);

    let waits = Arc::new(std::sync::Mutex::new(Vec::new()));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for f in &fleets {
        let budget = f.budget();
        for _ in 0..tasks_per_pod {
            let (b, u, w) = (budget.clone(), user.clone(), waits.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_task {
                    let t = Instant::now();
                    let Ok(p) = b.acquire(&u, Priority::Normal).await else {
                        continue;
                    };
                    w.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(t.elapsed());
                    tokio::time::sleep(hold).await;
                    drop(p);
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = began.elapsed().as_secs_f64();
    let waits = waits.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for f in &fleets {
        f.shutdown().await;
    }
    Ok(PermitBench {
        pods,
        tasks_per_pod,
        budget,
        hold_ms: hold.as_millis() as u64,
        alone_ms,
        contended_ms: Latency::of(&waits),
        grants: waits.len(),
        grants_per_s: waits.len() as f64 / elapsed.max(1e-9),
        ideal_per_s: budget as f64 / hold.as_secs_f64().max(1e-9),
    })
}
