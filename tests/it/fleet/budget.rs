//! The fleet-wide budget: never exceeded, fair, self-healing after a dead pod, and bounded
//! when PostgreSQL goes away.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rally_sidecar::fleet::budget::{BudgetError, Priority};

use super::{Doomed, config, fresh, pod};

/// Counts requests "in flight to Rally" across all pods and remembers the most at once.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl InFlight {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn four_pods_at_concurrency_eight_never_exceed_the_budget() {
    let url = fresh().await;
    let cfg = config(&url);
    let inflight = Arc::new(InFlight::default());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let budget = pod(&cfg).await.budget();
        for t in 0..8u64 {
            let (budget, inflight) = (budget.clone(), inflight.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..6u64 {
                    let class = if i % 3 == 0 {
                        Priority::FollowUp
                    } else {
                        Priority::Normal
                    };
                    let permit = budget.acquire("svc@example.com", class).await?;
                    inflight.enter();
                    tokio::time::sleep(Duration::from_millis(2 + (t * 7 + i * 3) % 15)).await;
                    inflight.leave();
                    drop(permit);
                }
                Ok::<_, BudgetError>(())
            }));
        }
    }
    for t in tasks {
        t.await.expect("join").expect("every request got a permit");
    }
    let max = inflight.max.load(Ordering::SeqCst);
    tracing::info!(max, "most requests in flight at once");
    assert!(max <= 3, "{max} requests in flight with a budget of 3");
    assert_eq!(max, 3, "32 contending tasks used the whole budget");
    let observer = pod(&cfg).await.budget();
    let mut left = u32::MAX;
    for _ in 0..50 {
        left = observer
            .held_in_fleet("svc@example.com")
            .await
            .expect("count");
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "every permit was released");
}

#[tokio::test]
async fn no_pod_starves_beside_a_greedy_one() {
    let url = fresh().await;
    let mut cfg = config(&url);
    cfg.budget = 2;
    cfg.pod_cap = 2;
    let greedy = pod(&cfg).await.budget();
    let stop = Arc::new(AtomicBool::new(false));
    let greedy_grants = Arc::new(AtomicUsize::new(0));
    let mut hogs = Vec::new();
    for _ in 0..12 {
        let (b, stop, n) = (greedy.clone(), stop.clone(), greedy_grants.clone());
        hogs.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(p) = b.acquire("u", Priority::Normal).await {
                    n.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    drop(p);
                }
            }
        }));
    }
    // Two modest pods, each one request at a time, with a short wait: under a FIFO of pods
    // each gets a turn every few grants; a pod that could starve would time out here.
    cfg.acquire_timeout = Duration::from_secs(20);
    let mut modest = Vec::new();
    for _ in 0..2 {
        let b = pod(&cfg).await.budget();
        modest.push(tokio::spawn(async move {
            for _ in 0..15 {
                let p = b.acquire("u", Priority::Normal).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(p);
            }
            Ok::<_, BudgetError>(())
        }));
    }
    for m in modest {
        m.await
            .expect("join")
            .expect("the modest pod was served every time");
    }
    let greedy_during = greedy_grants.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for h in hogs {
        h.await.expect("join");
    }
    eprintln!("greedy grants while the modest pods ran: {greedy_during}");
    tracing::info!(
        greedy_during,
        "grants to the greedy pod while 2 x 15 went to the others"
    );
    assert!(greedy_during > 0, "the greedy pod was served too");
    // Pods take turns: the greedy pod got about one grant per grant of each other pod (at most
    // two at once, its cap), not the lion's share its 12 tasks would take first come first served.
    assert!(
        greedy_during <= 4 * 30,
        "{greedy_during} grants to the greedy pod against 30 to the others"
    );
}

#[tokio::test]
async fn follow_ups_go_first_across_pods() {
    let url = fresh().await;
    let mut cfg = config(&url);
    cfg.budget = 1;
    cfg.pod_cap = 1;
    let holder = pod(&cfg).await.budget();
    let held = holder
        .acquire("u", Priority::Normal)
        .await
        .expect("the only permit");
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for (name, class) in [("new", Priority::Normal), ("follow-up", Priority::FollowUp)] {
        let (b, order) = (pod(&cfg).await.budget(), order.clone());
        waiters.push(tokio::spawn(async move {
            let p = b.acquire("u", class).await.expect("permit");
            order.lock().expect("order").push(name);
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(p);
        }));
        // Let this pod's ticket reach the queue before the next one arrives.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    drop(held);
    for w in waiters {
        w.await.expect("join");
    }
    assert_eq!(
        *order.lock().expect("order"),
        ["follow-up", "new"],
        "the follow-up, queued later on another pod, went first"
    );
}

#[tokio::test]
async fn pods_are_served_in_the_order_they_queued() {
    let url = fresh().await;
    let mut cfg = config(&url);
    cfg.budget = 1;
    cfg.pod_cap = 1;
    let holder = pod(&cfg).await.budget();
    let held = holder
        .acquire("u", Priority::Normal)
        .await
        .expect("the only permit");
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    // Three modest pods queue one after the other, then a greedy one with six tasks that
    // re-acquire at once: first come, first served would let the quickest win; the queue
    // serves the pods in the order they arrived.
    for (name, n) in [("a", 1), ("b", 1), ("c", 1), ("greedy", 6)] {
        let b = pod(&cfg).await.budget();
        for _ in 0..n {
            let (b, order) = (b.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..2 {
                    let p = b.acquire("u", Priority::Normal).await.expect("permit");
                    order.lock().expect("order").push(name);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    drop(p);
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    drop(held);
    for t in tasks {
        t.await.expect("join");
    }
    let order = order.lock().expect("order").clone();
    tracing::info!(?order, "grants");
    assert_eq!(
        order[..4],
        ["a", "b", "c", "greedy"],
        "served in arrival order: {order:?}"
    );
    assert_eq!(order.len(), 18);
}

#[tokio::test]
async fn the_pod_cap_limits_one_pod_below_the_budget() {
    let url = fresh().await;
    let mut cfg = config(&url);
    cfg.pod_cap = 1;
    let (a, b) = (pod(&cfg).await.budget(), pod(&cfg).await.budget());
    let first = a.acquire("u", Priority::Normal).await.expect("first");
    let second =
        tokio::time::timeout(Duration::from_millis(500), a.acquire("u", Priority::Normal)).await;
    assert!(second.is_err(), "pod a is at its cap of 1");
    let other = b.acquire("u", Priority::Normal).await;
    assert!(other.is_ok(), "pod b still has its share");
    assert_eq!(a.held_here("u"), 1);
    drop(first);
}

#[test]
fn a_dead_pods_permits_come_back_when_their_lease_lapses() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let url = rt.block_on(fresh());
    let mut cfg = config(&url);
    // Long enough that the "not yet" check right after the kill has seconds of margin.
    cfg.lease = Duration::from_secs(3);
    let doomed = Doomed::start(&cfg);
    let budget = doomed.fleet.budget();
    let held = doomed.run(async move {
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(budget.acquire("u", Priority::Normal).await.expect("permit"));
        }
        held
    });
    // Killed with its permits held: no release, no renewal.
    std::mem::forget(held);
    doomed.kill();
    rt.block_on(async {
        let survivor = pod(&cfg).await.budget();
        assert_eq!(survivor.held_in_fleet("u").await.expect("count"), 3);
        let early = tokio::time::timeout(
            Duration::from_millis(300),
            survivor.acquire("u", Priority::Normal),
        )
        .await;
        assert!(early.is_err(), "the dead pod's permits still count");
        let mut mine = Vec::new();
        for _ in 0..3 {
            mine.push(
                survivor
                    .acquire("u", Priority::Normal)
                    .await
                    .expect("the lapsed permits came back"),
            );
        }
        assert_eq!(survivor.held_in_fleet("u").await.expect("count"), 3);
    });
}

/// A private server, stopped for a few seconds while a permit is held and a request waits.
#[tokio::test]
async fn postgres_down_means_a_bounded_wait_a_clear_error_and_no_overrun() {
    let server = Arc::new(
        tokio::task::spawn_blocking(crate::pg::PgServer::start)
            .await
            .expect("server"),
    );
    let url = server.fresh_db().await;
    let mut cfg = config(&url);
    cfg.budget = 2;
    cfg.pod_cap = 2;
    cfg.lease = Duration::from_secs(8);
    cfg.unavailable_timeout = Duration::from_secs(1);
    let budget = pod(&cfg).await.budget();
    let held = budget.acquire("u", Priority::Normal).await.expect("permit");

    let s = server.clone();
    tokio::task::spawn_blocking(move || s.stop())
        .await
        .expect("stop");
    let started = std::time::Instant::now();
    let err = budget
        .acquire("u", Priority::Normal)
        .await
        .expect_err("no permit without the database");
    let waited = started.elapsed();
    tracing::info!(%err, ?waited, "answer while PostgreSQL is down");
    assert!(
        matches!(err, BudgetError::Unavailable { .. }),
        "a clear error: {err}"
    );
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert!(
        waited >= Duration::from_secs(1) && waited < cfg.acquire_timeout,
        "waited {waited:?}: at least unavailable_timeout, far less than the queue timeout"
    );

    let s = server.clone();
    tokio::task::spawn_blocking(move || s.restart())
        .await
        .expect("restart");
    assert!(
        !held.is_lost(),
        "an outage shorter than the lease does not lose a held permit"
    );
    let second = budget
        .acquire("u", Priority::Normal)
        .await
        .expect("a permit once the database is back");
    assert_eq!(budget.held_in_fleet("u").await.expect("count"), 2);
    let third = tokio::time::timeout(
        Duration::from_secs(1),
        budget.acquire("u", Priority::Normal),
    )
    .await;
    assert!(
        third.is_err(),
        "the permit held through the outage still counts: no overrun"
    );
    drop((held, second));
}
