//! Fleet mode on the request path: real sidecars (in-process, each with its own fleet
//! connection, journal and pod id) in front of the simulator, sharing one PostgreSQL. A
//! client's retry on another pod is answered from the first attempt; a build context set on
//! one pod reaches the others; two central replayers at once land each ledger row once.

use std::time::{Duration, Instant};

use http::Method;
use rally_sidecar::config::{Config, Overrides, RawConfig};
use rally_sidecar::fleet::ledger::{NewEntry, Outcome, Recorded, State, WriteKey, Writer};
use rally_sidecar::fleet::{Fleet, FleetConfig};
use rally_sidecar::sim::SimOptions;
use rally_sidecar::sim::faults::FaultConfig;
use rally_sidecar_harness::soak::stored_per_build;

use super::{config, fresh, pod};
use crate::support::{JSON, Sidecar, get, send, simulator, temp_dir};

const KEY: &str = "_sim_alice_key";
const CREATE: &str = "/slm/webservice/v2.0/testcaseresult/create";

fn sidecar_config(upstream: &str, fleet: &FleetConfig) -> Config {
    let mut raw = RawConfig::default();
    raw.journal.path = Some(temp_dir("fleet-journal").join("journal.sqlite"));
    let ov = Overrides {
        listen: Some("127.0.0.1:0".into()),
        upstream: Some(upstream.into()),
        admin_listen: Some("127.0.0.1:0".into()),
        ..Overrides::default()
    };
    let mut cfg = Config::validate(&raw, &ov).expect("test config is valid");
    cfg.fleet = Some(fleet.clone());
    cfg
}

async fn fleet_sidecar(upstream: &str, fleet: &FleetConfig) -> Sidecar {
    let s = Sidecar::start_config(sidecar_config(upstream, fleet)).await;
    for _ in 0..200 {
        if s.shared.readiness.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        s.shared.readiness.is_ready(),
        "{}",
        s.shared.readiness.report()
    );
    s
}

fn result(build: Option<&str>, tc: u32) -> String {
    let mut r = serde_json::json!({"TestCase": format!("/testcase/{tc}"), "Verdict": "Pass",
                                   "Date": "2026-11-24T12:00:00.000Z"});
    if let Some(b) = build {
        r["Build"] = b.into();
    }
    serde_json::json!({ "TestCaseResult": r }).to_string()
}

fn object_id(a: &crate::support::Answer) -> Option<i64> {
    a.json()["CreateResult"]["Object"]["ObjectID"].as_i64()
}

#[tokio::test]
async fn a_clients_retry_on_another_pod_is_answered_from_the_first_attempt() {
    let url = fresh().await;
    let cfg = config(&url);
    let sim = simulator(SimOptions {
        faults: FaultConfig {
            latency: Some("150ms".into()),
            ..FaultConfig::default()
        },
        ..SimOptions::default()
    })
    .await;
    let (a, b) = (
        fleet_sidecar(&sim.base_url, &cfg).await,
        fleet_sidecar(&sim.base_url, &cfg).await,
    );
    let headers = [("zsessionid", KEY), JSON];

    // One after the other: the client gave up on pod a's answer and sends it again to b.
    let body = result(Some("retry-1"), 1001);
    let first = send(Method::PUT, &a.url(CREATE), &headers, body.clone()).await;
    assert_eq!(first.headers["x-rally-sidecar-confirmed"], "true");
    let again = send(Method::PUT, &b.url(CREATE), &headers, body).await;
    tracing::info!(answer = %again.text(), "the retry's answer");
    assert_eq!(again.headers["x-rally-sidecar-confirmed"], "true");
    assert!(again.headers.contains_key("x-rally-sidecar-ledger-id"));
    assert_eq!(
        object_id(&again),
        object_id(&first),
        "the same stored result"
    );

    // At the same time on both pods: one writes, the other waits for its fate.
    let body = result(Some("retry-2"), 1002);
    let (url_a, url_b) = (a.url(CREATE), b.url(CREATE));
    let (x, y) = tokio::join!(
        send(Method::PUT, &url_a, &headers, body.clone()),
        send(Method::PUT, &url_b, &headers, body)
    );
    for r in [&x, &y] {
        assert_eq!(
            r.headers["x-rally-sidecar-confirmed"],
            "true",
            "{}",
            r.text()
        );
    }
    assert_eq!(object_id(&x), object_id(&y));
    let stored = stored_per_build(&sim.sim);
    assert_eq!(
        (stored.get("retry-1"), stored.get("retry-2")),
        (Some(&1), Some(&1)),
        "each result stored once"
    );
    // A different write with the same body from another path is a write of its own.
    let other = result(Some("retry-1"), 1001);
    let v2x = send(
        Method::PUT,
        &b.url("/slm/webservice/v2.x/testcaseresult/create"),
        &headers,
        other,
    )
    .await;
    assert!(!v2x.headers.contains_key("x-rally-sidecar-ledger-id"));
    a.stop().await;
    b.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn the_build_context_set_on_one_pod_reaches_every_pod() {
    let url = fresh().await;
    let cfg = config(&url);
    let sim = simulator(SimOptions::default()).await;
    let (a, b) = (
        fleet_sidecar(&sim.base_url, &cfg).await,
        fleet_sidecar(&sim.base_url, &cfg).await,
    );
    let set = send(
        Method::PUT,
        &format!("http://{}/context", a.admin),
        &[JSON],
        r#"{"build": "fleet-ctx-7"}"#,
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text());
    let bound = Duration::from_millis(
        set.json()["fleet"]["every_pod_within_ms"]
            .as_u64()
            .expect("the bound is stated"),
    );
    let t = Instant::now();
    let seen = loop {
        let v = get(&format!("http://{}/context", b.admin), &[])
            .await
            .json();
        if v["build"] == "fleet-ctx-7" || t.elapsed() > bound * 2 {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tracing::info!(
        after_ms = t.elapsed().as_millis() as u64,
        "pod b saw the context"
    );
    assert_eq!(seen["build"], "fleet-ctx-7", "pod b has pod a's context");
    // A write without a Build through pod b gets the build set on pod a.
    let headers = [("zsessionid", KEY), JSON];
    let w = send(Method::PUT, &b.url(CREATE), &headers, result(None, 1003)).await;
    assert_eq!(
        w.headers["x-rally-sidecar-confirmed"],
        "true",
        "{}",
        w.text()
    );
    assert_eq!(stored_per_build(&sim.sim).get("fleet-ctx-7"), Some(&1));
    // Cleared on pod b, gone on pod a.
    let cleared = send(
        Method::DELETE,
        &format!("http://{}/context", b.admin),
        &[JSON],
        "",
    )
    .await;
    assert_eq!(cleared.status, 200, "{}", cleared.text());
    let t = Instant::now();
    while get(&format!("http://{}/context", a.admin), &[])
        .await
        .json()["build"]
        .is_string()
        && t.elapsed() < bound * 2
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        get(&format!("http://{}/context", a.admin), &[])
            .await
            .json()["build"]
            .is_null(),
        "pod a saw the clear"
    );
    a.stop().await;
    b.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn two_replayers_at_once_replay_each_row_once() {
    let url = fresh().await;
    let cfg = config(&url);
    let sim = simulator(SimOptions::default()).await;
    let me = get(
        &format!("{}/slm/webservice/v2.0/user?fetch=ObjectID", sim.base_url),
        &[("zsessionid", KEY)],
    )
    .await
    .json();
    let user = format!("/user/{}", me["User"]["ObjectID"]);
    // Twenty writes a pod left unconfirmed (Rally's answers were lost).
    let writer = pod(&cfg).await.ledger();
    let mut ids = Vec::new();
    for i in 0..20u32 {
        let body = result(Some(&format!("replay-{i}")), 1001 + i % 5);
        let e = NewEntry {
            key: WriteKey::of_request("d", "create#0", CREATE, body.as_bytes()),
            request_id: format!("r{i}"),
            received_at: time::OffsetDateTime::now_utc(),
            writer: Writer {
                credential: "d".into(),
                rally_user: Some(user.clone()),
            },
            operation: "create".into(),
            target: None,
            path: CREATE.into(),
            body,
            test_case: None,
            build: Some(format!("replay-{i}")),
            verdict: Some("Pass".into()),
            filled: None,
            decision: None,
        };
        let Ok(Recorded::New(id)) = writer.record(&e).await else {
            panic!("recorded");
        };
        let unconfirmed = Outcome {
            state: State::Unconfirmed,
            attempts: 1,
            last_error: Some("the answer was lost".into()),
            object_id: None,
            latency_ms: None,
        };
        assert!(writer.settle(id, &unconfirmed).await.expect("settle"));
        ids.push(id);
    }
    let rcfg = std::sync::Arc::new(sidecar_config(&sim.base_url, &cfg));
    let (one, two) = (pod(&cfg).await, pod(&cfg).await);
    let (r1, r2) = tokio::join!(
        rally_sidecar::commands::journal::replay_fleet_with(rcfg.clone(), &one, KEY),
        rally_sidecar::commands::journal::replay_fleet_with(rcfg.clone(), &two, KEY)
    );
    let replayed = |r: &rally_sidecar::commands::journal::ReplayReport| -> Vec<i64> {
        r.rows
            .iter()
            .filter(|x| x.skipped.is_none())
            .map(|x| x.id)
            .collect()
    };
    let (r1, r2) = (r1.expect("replayer 1"), r2.expect("replayer 2"));
    let (mut a, b) = (replayed(&r1), replayed(&r2));
    tracing::info!(
        first = a.len(),
        second = b.len(),
        "rows each replayer replayed"
    );
    assert!(a.iter().all(|id| !b.contains(id)), "no row replayed twice");
    a.extend(b);
    a.sort();
    assert_eq!(a, ids, "every row replayed");
    let stored = stored_per_build(&sim.sim);
    assert!(
        (0..20).all(|i| stored.get(&format!("replay-{i}")) == Some(&1)),
        "each stored once: {stored:?}"
    );
    let counts = writer.counts().await.expect("counts");
    assert_eq!(counts, vec![(State::Confirmed, 20)]);
    // Nothing left: a third replayer finds no work.
    let three = pod(&cfg).await;
    let r3 = rally_sidecar::commands::journal::replay_fleet_with(rcfg, &three, KEY)
        .await
        .expect("replayer 3");
    assert!(r3.rows.is_empty());
    for f in [one, two, three] {
        Fleet::shutdown(&f).await;
    }
    sim.stop().await;
}

/// PostgreSQL stopped under a running sidecar: a clear WSAPI-shaped 503 for a request that
/// cannot get a permit, `/readyz` saying why, the write journaled here; once it is back the
/// row is shipped to the ledger once and the central replayer lands it.
#[tokio::test]
async fn postgres_down_a_clear_answer_then_the_local_row_is_shipped_and_landed() {
    let server = std::sync::Arc::new(
        tokio::task::spawn_blocking(crate::pg::PgServer::start)
            .await
            .expect("server"),
    );
    let url = server.fresh_db().await;
    let mut cfg = config(&url);
    cfg.lease = Duration::from_secs(3);
    let sim = simulator(SimOptions::default()).await;
    let rcfg = sidecar_config(&sim.base_url, &cfg);
    let journal_path = rcfg.journal.path.clone();
    let s = Sidecar::start_config(rcfg.clone()).await;
    let headers = [("zsessionid", KEY), JSON];
    let warm = send(
        Method::PUT,
        &s.url(CREATE),
        &headers,
        result(Some("up-1"), 1001),
    )
    .await;
    assert_eq!(warm.headers["x-rally-sidecar-confirmed"], "true");
    let local = rally_sidecar::journal::Journal::open(&journal_path).expect("journal");
    let t = Instant::now();
    while local.unshipped_count().await.expect("count") > 0 && t.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        local.unshipped_count().await.expect("count"),
        0,
        "shipped while up"
    );

    let stop = server.clone();
    tokio::task::spawn_blocking(move || stop.stop())
        .await
        .expect("stop");
    let read = get(
        &s.url("/slm/webservice/v2.0/subscription?fetch=Name"),
        &[("zsessionid", KEY)],
    )
    .await;
    tracing::info!(answer = %read.text(), "a read while PostgreSQL is down");
    assert_eq!(read.status, 503);
    let errors = read.json()["OperationResult"]["Errors"].to_string();
    assert!(errors.contains("unreachable"), "{errors}");
    let write = send(
        Method::PUT,
        &s.url(CREATE),
        &headers,
        result(Some("down-1"), 1002),
    )
    .await;
    tracing::info!(answer = %write.text(), "a write while PostgreSQL is down");
    assert_eq!(write.headers["x-rally-sidecar-confirmed"], "false");
    assert!(write.text().contains("unreachable"), "{}", write.text());
    let ready = get(&format!("http://{}/readyz", s.admin), &[]).await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.text().contains("FAIL fleet: PostgreSQL unreachable"),
        "{}",
        ready.text()
    );
    assert_eq!(
        local.unshipped_count().await.expect("count"),
        1,
        "the write is journaled here, waiting to be shipped"
    );

    let start = server.clone();
    tokio::task::spawn_blocking(move || start.restart())
        .await
        .expect("restart");
    let t = Instant::now();
    while local.unshipped_count().await.expect("count") > 0 && t.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(local.unshipped_count().await.expect("count"), 0, "shipped");
    let replayer = pod(&cfg).await;
    let r = rally_sidecar::commands::journal::replay_fleet_with(
        std::sync::Arc::new(rcfg),
        &replayer,
        KEY,
    )
    .await
    .expect("replay");
    assert_eq!(r.rows.len(), 1, "the one unconfirmed write: {:?}", r.rows);
    assert_eq!(r.rows[0].state, State::Confirmed);
    let stored = stored_per_build(&sim.sim);
    assert_eq!(
        (stored.get("up-1"), stored.get("down-1")),
        (Some(&1), Some(&1))
    );
    let counts = replayer.ledger().counts().await.expect("counts");
    assert_eq!(
        counts,
        vec![(State::Confirmed, 2)],
        "each write once in the ledger"
    );
    s.stop().await;
    sim.stop().await;
}

/// Without `[fleet]` nothing of it runs: no `fleet` readiness line, no ledger, writes as before.
#[tokio::test]
async fn without_a_fleet_url_the_sidecar_runs_alone() {
    let sim = simulator(SimOptions::default()).await;
    let s = Sidecar::start(&sim.base_url, |_, _| {}).await;
    let ready = get(&format!("http://{}/readyz", s.admin), &[]).await;
    assert_eq!(ready.status, 200);
    assert!(!ready.text().contains("fleet"), "{}", ready.text());
    let headers = [("zsessionid", KEY), JSON];
    let w = send(
        Method::PUT,
        &s.url(CREATE),
        &headers,
        result(Some("alone-1"), 1001),
    )
    .await;
    assert_eq!(w.headers["x-rally-sidecar-confirmed"], "true");
    assert!(w.headers.contains_key("x-rally-sidecar-journal-id"));
    assert!(!w.headers.contains_key("x-rally-sidecar-ledger-id"));
    s.stop().await;
    sim.stop().await;
}
