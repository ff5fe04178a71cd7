//! The price of confirmation: read-backs served together (one query for many results, not one
//! GET each), and `confirm.hold = "ambiguous"` answering a clean acknowledgement at once while
//! the read-back goes on behind it. Speed itself is measured in benchmarks, not here.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use rally_sidecar::config::Text;
use rally_sidecar::journal::{Journal, State};
use rally_sidecar::sim::SimOptions;
use rally_sidecar::sim::model::Type;
use serde_json::json;

use crate::support::{Sidecar, send, simulator, temp_dir};

const WS: &str = "/slm/webservice/v2.0";
const ALICE: (&str, &str) = ("zsessionid", "_sim_alice_key");

fn gets(sim: &rally_sidecar::sim::SimHandle) -> u64 {
    sim.sim
        .stats()
        .requests_by_method
        .get("GET")
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_backs_are_served_together() {
    let mut opts = SimOptions::default();
    opts.faults.latency = Some("20ms".into());
    opts.faults.read_lag = Some("300ms".into());
    let sim = simulator(opts).await;
    let journal = temp_dir("coalesce").join("j.sqlite");
    let j = journal.clone();
    let sidecar = Sidecar::start(&sim.base_url, move |raw, _| {
        raw.journal.path = Some(j);
        raw.context.build = Some(Text::Str("coalesced".into()));
        raw.confirm.readback_window = Some("5s".into());
    })
    .await;
    let writes = 48;
    let tasks: Vec<_> = (0..writes)
        .map(|i| {
            let url = sidecar.url(&format!("{WS}/testcaseresult/create?workspace=/workspace/200"));
            tokio::spawn(async move {
                let body = json!({"TestCaseResult": {"TestCase": format!("/testcase/{}", 1001 + i % 4),
                                  "Verdict": "Pass", "Notes": format!("w{i}")}});
                send(Method::POST, &url, &[ALICE], Bytes::from(body.to_string())).await
            })
        })
        .collect();
    for t in tasks {
        let a = t.await.expect("join");
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
        assert_eq!(
            a.headers["x-rally-sidecar-confirmed"],
            "true",
            "{}",
            a.text()
        );
    }
    let stored = sim
        .sim
        .objects(Type::TestCaseResult, "")
        .into_iter()
        .filter(|o| o["Build"] == "coalesced")
        .count();
    assert_eq!(stored, writes, "each stored once");
    // 4 test cases read for the guard, 1 user read, and the read-backs: each write polls
    // through 300 ms of lag, so one GET per poll would be several per write.
    let reads = gets(&sim);
    assert!(
        reads < writes as u64,
        "{reads} GETs for {writes} writes each polled through read lag: read-backs were served together"
    );
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_hold_answers_at_the_acknowledgement_and_still_lands_each_result_once() {
    let mut opts = SimOptions::default();
    opts.faults.read_lag = Some("1500ms".into());
    let sim = simulator(opts).await;
    let journal = temp_dir("ambiguous").join("j.sqlite");
    let j = journal.clone();
    let sidecar = Sidecar::start(&sim.base_url, move |raw, _| {
        raw.journal.path = Some(j);
        raw.context.build_env = Some(rally_sidecar::config::List::Items(vec![]));
        raw.confirm.hold = Some("ambiguous".into());
        raw.confirm.readback_window = Some("4s".into());
        raw.confirm.initial_backoff = Some("10ms".into());
        raw.confirm.max_backoff = Some("100ms".into());
    })
    .await;
    let write = |build: &'static str| {
        let url = sidecar.url(&format!("{WS}/testcaseresult/create"));
        async move {
            let body = json!({"TestCaseResult": {"TestCase": "/testcase/1011", "Verdict": "Pass", "Build": build}});
            send(Method::POST, &url, &[ALICE], Bytes::from(body.to_string())).await
        }
    };
    let state = |id: i64| {
        let journal = journal.clone();
        async move {
            Journal::open(&journal)
                .expect("journal")
                .state_of(id)
                .await
                .expect("state")
        }
    };
    let id_of = |a: &crate::support::Answer| -> i64 {
        a.headers["x-rally-sidecar-journal-id"]
            .to_str()
            .expect("id")
            .parse()
            .expect("number")
    };
    // A clean acknowledgement: answered before the read-back (the result is still lagging).
    let a = write("amb-clean").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.headers["x-rally-sidecar-confirmed"], "pending");
    assert!(a.json()["CreateResult"]["Object"]["ObjectID"].is_i64());
    let clean = id_of(&a);
    assert_eq!(
        state(clean).await,
        Some(State::Pending),
        "read back in the background"
    );
    // Acknowledged but never stored: the client was told it was; the background read-back
    // finds it missing, looks for it, writes it again: it lands once.
    let mut f = sim.sim.faults();
    f.script = vec!["drop".into()];
    sim.sim.set_faults(f).expect("faults");
    let a = write("amb-dropped").await;
    assert_eq!(a.headers["x-rally-sidecar-confirmed"], "pending");
    let dropped = id_of(&a);
    // An ambiguous outcome holds the client as in readback mode.
    let mut f = sim.sim.faults();
    f.script = vec!["gateway_timeout".into()];
    sim.sim.set_faults(f).expect("faults");
    let a = write("amb-gateway").await;
    assert_eq!(
        a.headers["x-rally-sidecar-confirmed"],
        "true",
        "{}",
        a.text()
    );
    for _ in 0..200 {
        if state(clean).await == Some(State::Confirmed)
            && state(dropped).await == Some(State::Confirmed)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state(clean).await, Some(State::Confirmed));
    assert_eq!(
        state(dropped).await,
        Some(State::Confirmed),
        "written again, confirmed"
    );
    for build in ["amb-clean", "amb-dropped", "amb-gateway"] {
        let n = sim
            .sim
            .objects(Type::TestCaseResult, "")
            .iter()
            .filter(|o| o["Build"] == build)
            .count();
        assert_eq!(n, 1, "{build}: stored exactly once");
    }
    sidecar.stop().await;
    sim.stop().await;
}
