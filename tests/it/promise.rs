//! The sidecar's promise, path by path: every TestCaseResult write is caught (whatever the
//! version segment, `.js` suffixes, `Results/add` alone or in a batch, refs copied from the
//! sidecar's own answers), none is written twice (a batch answered with a bare 5xx, operator
//! commands next to a running sidecar), and none under another user's name (replay identity,
//! one user's keys sharing its slots).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use rally_sidecar::config::{Config, Overrides, RawConfig, RawRule, Text};
use rally_sidecar::journal::{Journal, NewWrite, State};
use rally_sidecar::sim::model::{ApiKey, Fixtures, Type};
use rally_sidecar::sim::{SimHandle, SimOptions};
use serde_json::{Value, json};

use crate::support::{Sidecar, get, logs, send, simulator, temp_dir};

const WS: &str = "/slm/webservice/v2.0";
const WX: &str = "/slm/webservice/v2.x";
const ALICE: (&str, &str) = ("zsessionid", "_sim_alice_key");
const BOB: (&str, &str) = ("zsessionid", "_sim_bob_key");

fn settings(raw: &mut RawConfig, journal: &std::path::Path) {
    raw.context.build_env = Some(rally_sidecar::config::List::Items(vec![]));
    raw.context.build = Some(Text::Str("cfg-build".into()));
    raw.confirm.initial_backoff = Some("10ms".into());
    raw.confirm.max_backoff = Some("100ms".into());
    raw.confirm.readback_window = Some("800ms".into());
    raw.confirm.timeout = Some("30s".into());
    raw.journal.path = Some(journal.to_path_buf());
    raw.guard.rule = Some(vec![RawRule {
        field: "c_Lifecycle".into(),
        values: vec!["Archived".into()],
    }]);
}

async fn stack(opts: SimOptions) -> (SimHandle, Sidecar, std::path::PathBuf) {
    let sim = simulator(opts).await;
    let journal = temp_dir("promise").join("journal.sqlite");
    let j = journal.clone();
    let sidecar = Sidecar::start(&sim.base_url, move |raw, _| settings(raw, &j)).await;
    (sim, sidecar, journal)
}

async fn post(
    sidecar: &Sidecar,
    path: &str,
    creds: &[(&str, &str)],
    body: Value,
) -> crate::support::Answer {
    send(
        Method::POST,
        &sidecar.url(path),
        creds,
        Bytes::from(body.to_string()),
    )
    .await
}

fn stored(sim: &SimHandle, build: &str) -> Vec<Value> {
    sim.sim
        .objects(Type::TestCaseResult, "")
        .into_iter()
        .filter(|o| o["Build"] == build)
        .collect()
}

fn stored_on(sim: &SimHandle, test_case: i64) -> usize {
    sim.sim
        .objects(Type::TestCaseResult, "")
        .iter()
        .filter(|o| {
            o["TestCase"]["_ref"]
                .as_str()
                .is_some_and(|r| r.ends_with(&format!("/testcase/{test_case}")))
        })
        .count()
}

async fn rows(journal: &std::path::Path) -> Vec<rally_sidecar::journal::Row> {
    Journal::open(journal)
        .expect("journal")
        .list(None, vec![], 1000)
        .await
        .expect("rows")
}

#[tokio::test]
async fn writes_under_every_path_spelling_are_caught() {
    let (sim, sidecar, journal) = stack(SimOptions::default()).await;
    // A v2.x create without a Build: enriched, confirmed, journaled.
    let a = post(&sidecar, &format!("{WX}/testcaseresult/create"), &[ALICE],
        json!({"TestCaseResult": {"TestCase": "/testcase/1002", "Verdict": "Pass", "Notes": "v2x"}})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.headers["x-rally-sidecar-confirmed"], "true");
    assert!(
        a.headers["x-rally-sidecar-filled"]
            .to_str()
            .unwrap_or("")
            .contains("Build")
    );
    let oid = a.json()["CreateResult"]["Object"]["ObjectID"]
        .as_i64()
        .expect("oid");
    let r = sim
        .sim
        .objects(Type::TestCaseResult, "")
        .into_iter()
        .find(|o| o["ObjectID"] == oid)
        .expect("stored");
    assert_eq!(r["Build"], "cfg-build", "enriched on the v2.x path");
    // `.js` on the test case's or the collection's segment: the archived test case is guarded.
    for path in [
        format!("{WX}/testcase/1090.js/Results/add"),
        format!("{WS}/testcase/1090/Results.js/add"),
    ] {
        let a = post(
            &sidecar,
            &path,
            &[ALICE],
            json!({"CollectionItems": [{"Verdict": "Pass", "Build": "b"}]}),
        )
        .await;
        assert!(
            a.headers["x-rally-sidecar-decision"] == "blocked-rule",
            "{path}: {}",
            a.text()
        );
    }
    assert_eq!(
        stored_on(&sim, 1090),
        0,
        "nothing stored on the archived test case"
    );
    // Results/add entries inside a batch: the archived one refused in its slot, the other
    // enriched, held, confirmed and journaled; a v2.x full-URL create beside them.
    let batch = json!({"Batch": [
        {"Entry": {"Path": "/testcase/1090/Results/add", "Method": "POST",
                   "Body": {"CollectionItems": [{"Verdict": "Pass", "Build": "x"}]}}},
        {"Entry": {"Path": "/testcase/1003.js/Results/add", "Method": "POST",
                   "Body": {"CollectionItems": [{"Verdict": "Fail"}, {"Verdict": "Pass", "Build": "in-batch"}]}}},
        {"Entry": {"Path": format!("https://rally1.rallydev.com{WX}/testcaseresult/create"), "Method": "PUT",
                   "Body": {"TestCaseResult": {"TestCase": "/testcase/1004", "Verdict": "Pass", "Build": "full-url"}}}},
    ]});
    let a = post(&sidecar, &format!("{WS}/batch"), &[ALICE], batch).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let v = a.json();
    let br = v["BatchResult"].as_object().expect("BatchResult");
    assert!(
        br.get("_rallyAPIMajor").is_none(),
        "the captured shape: {v}"
    );
    let results = v["BatchResult"]["Results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|e| e["_rallyAPIMajor"] == "2"), "{v}");
    assert!(
        results[0]["Errors"][0]
            .as_str()
            .unwrap_or("")
            .contains("archived"),
        "{v}"
    );
    assert_eq!(
        results[1]["Results"].as_array().map(Vec::len),
        Some(2),
        "{v}"
    );
    assert_eq!(
        stored(&sim, "cfg-build").len(),
        2,
        "the item without a Build got the config's"
    );
    assert_eq!(stored(&sim, "in-batch").len(), 1);
    assert_eq!(stored(&sim, "full-url").len(), 1);
    let rows = rows(&journal).await;
    let items: Vec<_> = rows
        .iter()
        .filter(|r| r.operation == "results_add" && r.state != State::Refused)
        .collect();
    assert_eq!(items.len(), 2, "each Results/add item has its row");
    assert!(
        items.iter().all(|r| r.state == State::Confirmed),
        "{items:?}"
    );
    let refused: Vec<_> = rows.iter().filter(|r| r.state == State::Refused).collect();
    assert_eq!(
        refused.len(),
        3,
        "every refused result is journaled with its reason: {refused:?}"
    );
    assert!(
        refused
            .iter()
            .all(|r| r.formatted_id.as_deref() == Some("TC90"))
    );
    assert!(
        rows.iter()
            .all(|r| r.rally_user.as_deref() == Some("/user/400")),
        "the writer is named"
    );
    // Another version passes through untouched, and is counted.
    let _ = post(
        &sidecar,
        "/slm/webservice/v1.43/testcaseresult/create",
        &[ALICE],
        json!({"TestCaseResult": {"TestCase": "/testcase/1004"}}),
    )
    .await;
    let metrics = get(&format!("http://{}/metrics", sidecar.admin), &[])
        .await
        .text();
    assert!(
        metrics.contains("rally_sidecar_other_version_requests_total{version=\"v1.43\"} 1"),
        "{metrics}"
    );
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn results_add_items_are_held_and_answered_with_what_was_stored() {
    let (sim, sidecar, journal) = stack(SimOptions::default()).await;
    let a = post(&sidecar, &format!("{WS}/TestCase/1005/Results/add"), &[ALICE],
        json!({"CollectionItems": [{"Verdict": "Pass", "Build": "ra-1"}, {"Verdict": "Fail", "Build": "ra-2"}]})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.headers["x-rally-sidecar-confirmed"], "true");
    let v = a.json();
    assert_eq!(v["OperationResult"]["Errors"], json!([]), "{v}");
    assert_eq!(
        v["OperationResult"]["Results"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(stored(&sim, "ra-1").len(), 1);
    assert_eq!(stored(&sim, "ra-2").len(), 1);
    let rows = rows(&journal).await;
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.state == State::Confirmed && r.formatted_id.as_deref() == Some("TC5")),
        "{rows:?}"
    );
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn refs_with_the_sidecars_origin_are_sent_with_rallys() {
    let (sim, sidecar, journal) = stack(SimOptions::default()).await;
    let own = sidecar.url(WS);
    let a = post(
        &sidecar,
        &format!("{WS}/testcaseresult/create"),
        &[ALICE],
        json!({"TestCaseResult": {"TestCase": format!("{own}/testcase/1006"),
                                  "Tester": {"_ref": format!("{own}/user/400")},
                                  "Verdict": "Pass", "Build": "own-refs"}}),
    )
    .await;
    assert_eq!(
        a.headers["x-rally-sidecar-confirmed"],
        "true",
        "{}",
        a.text()
    );
    let sent = &rows(&journal).await[0].body;
    assert!(
        sent.contains(&format!("{}{WS}/testcase/1006", sim.base_url)),
        "{sent}"
    );
    assert!(
        !sent.contains(&sidecar.addr.to_string()),
        "no ref names the sidecar: {sent}"
    );
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn a_batch_answered_with_a_bare_5xx_still_gets_a_batch_result() {
    let (sim, sidecar, _) = stack(SimOptions::default()).await;
    let mut f = sim.sim.faults();
    f.batch_script = vec!["gateway_timeout".into(), "error".into()];
    sim.sim.set_faults(f).expect("faults");
    // Stored, then 502: each result is found and adopted, the read's outcome is unknown.
    let a = post(&sidecar, &format!("{WS}/batch"), &[ALICE], json!({"Batch": [
        {"Entry": {"Path": "/testcaseresult/create", "Method": "PUT",
                   "Body": {"TestCaseResult": {"TestCase": "/testcase/1007", "Verdict": "Pass", "Build": "gw-a"}}}},
        {"Entry": {"Path": "/testcase/1001", "Method": "GET"}},
        {"Entry": {"Path": "/testcaseresult/create", "Method": "PUT",
                   "Body": {"TestCaseResult": {"TestCase": "/testcase/1007", "Verdict": "Fail", "Build": "gw-b"}}}},
    ]})).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "a BatchResult, not Rally's 502: {}",
        a.text()
    );
    let v = a.json();
    let r = &v["BatchResult"]["Results"];
    assert!(r[0]["Object"]["ObjectID"].is_i64(), "{v}");
    assert!(r[2]["Object"]["ObjectID"].is_i64(), "{v}");
    assert!(
        r[1]["Errors"][0]
            .as_str()
            .unwrap_or("")
            .contains("outcome is unknown"),
        "{v}"
    );
    assert_eq!(stored(&sim, "gw-a").len(), 1, "adopted, not written again");
    assert_eq!(stored(&sim, "gw-b").len(), 1);
    // 503 before anything ran: each result written again on its own, once.
    let a = post(&sidecar, &format!("{WS}/batch"), &[ALICE], json!({"Batch": [
        {"Entry": {"Path": "/testcaseresult/create", "Method": "PUT",
                   "Body": {"TestCaseResult": {"TestCase": "/testcase/1007", "Verdict": "Pass", "Build": "503-a"}}}},
    ]})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert!(
        a.json()["BatchResult"]["Results"][0]["Object"]["ObjectID"].is_i64(),
        "{}",
        a.text()
    );
    assert_eq!(stored(&sim, "503-a").len(), 1);
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn inspecting_or_replaying_never_touches_a_write_the_sidecar_is_holding() {
    let mut opts = SimOptions::default();
    opts.faults.latency = Some("1500ms".into());
    let (sim, sidecar, journal) = stack(opts).await;
    let url = sidecar.url(&format!("{WS}/testcaseresult/create"));
    let held = tokio::spawn(async move {
        send(
            Method::POST,
            &url,
            &[ALICE],
            Bytes::from(
                json!({"TestCaseResult":
            {"TestCase": "/testcase/1008", "Verdict": "Pass", "Build": "held"}})
                .to_string(),
            ),
        )
        .await
    });
    // Wait until the write is journaled and held.
    let mut pending = 0;
    for _ in 0..200 {
        pending = rows(&journal)
            .await
            .iter()
            .filter(|r| r.state == State::Pending)
            .count();
        if pending > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pending, 1, "the write is held");
    let j = Journal::open(&journal).expect("inspect");
    let cfg = Arc::new(
        Config::validate(
            &RawConfig::default(),
            &Overrides {
                upstream: Some(sim.base_url.clone()),
                ..Overrides::default()
            },
        )
        .expect("cfg"),
    );
    let report = rally_sidecar::commands::journal::replay_journal(cfg, &j, vec![], ALICE.1)
        .await
        .expect("replay");
    assert!(
        report.owner.is_some(),
        "the live sidecar is named: {report:?}"
    );
    assert_eq!(report.held_by_owner, 1);
    assert!(report.rows.is_empty(), "nothing to replay: {report:?}");
    assert_eq!(
        rows(&journal)
            .await
            .iter()
            .filter(|r| r.state == State::Pending)
            .count(),
        1,
        "listing and replaying changed nothing"
    );
    let a = held.await.expect("join");
    assert_eq!(
        a.headers["x-rally-sidecar-confirmed"],
        "true",
        "{}",
        a.text()
    );
    assert_eq!(stored(&sim, "held").len(), 1, "written once");
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn replay_stores_a_write_only_under_its_writers_name() {
    // Writes made while Rally is down end unconfirmed; who made them is known only by their
    // credential's digest.
    let down = simulator(SimOptions::default()).await;
    let url = down.base_url.clone();
    down.stop().await;
    let journal = temp_dir("identity").join("journal.sqlite");
    let j = journal.clone();
    let sidecar = Sidecar::start(&url, move |raw, _| {
        settings(raw, &j);
        raw.confirm.max_attempts = Some(0);
        raw.guard.on_lookup_error = Some("forward".into());
    })
    .await;
    for (key, build) in [
        (ALICE, "by-alice"),
        (("zsessionid", "_made_up_key"), "by-nobody"),
    ] {
        let a = post(&sidecar, &format!("{WS}/testcaseresult/create"), &[key],
            json!({"TestCaseResult": {"TestCase": "/testcase/1009", "Verdict": "Pass", "Build": build,
                                      "Date": "2026-01-02T03:04:05.000Z"}})).await;
        assert_eq!(
            a.headers["x-rally-sidecar-confirmed"],
            "false",
            "{}",
            a.text()
        );
    }
    sidecar.stop().await;
    let j = Journal::open(&journal).expect("journal");
    // A row Rally said bob's colleague alice wrote.
    let id = j.insert(NewWrite {
        request_id: "r".into(), received_at: "t".into(), credential: "someone".into(),
        rally_user: Some("/user/400".into()), rally_user_name: Some("alice@example.com".into()),
        operation: "create".into(), path: format!("{WS}/testcaseresult/create"),
        body: json!({"TestCaseResult": {"TestCase": "/testcase/1009", "Verdict": "Pass", "Build": "alice-again",
                                        "Date": "2026-01-02T03:04:05.000Z"}}).to_string().into(),
        ..NewWrite::default()
    }).await.expect("insert");
    j.settle(
        id,
        State::Unconfirmed,
        1,
        Some("HTTP 502".into()),
        None,
        None,
    )
    .await
    .expect("settle");
    let sim = simulator(SimOptions::default()).await;
    let cfg = Arc::new(
        Config::validate(
            &RawConfig::default(),
            &Overrides {
                upstream: Some(sim.base_url.clone()),
                ..Overrides::default()
            },
        )
        .expect("cfg"),
    );
    // Bob replays: nothing of alice's or of the unknown key is stored under his name.
    let report = rally_sidecar::commands::journal::replay_journal(cfg.clone(), &j, vec![], BOB.1)
        .await
        .expect("replay");
    assert_eq!(report.rows.len(), 3, "{report:?}");
    assert!(
        report.rows.iter().all(|d| d.skipped.is_some()),
        "{report:?}"
    );
    assert!(
        report
            .rows
            .iter()
            .any(|d| d.detail.contains("written by alice@example.com")),
        "{report:?}"
    );
    assert!(
        report
            .rows
            .iter()
            .filter(|d| d.detail.contains("writer is unknown"))
            .count()
            >= 1,
        "{report:?}"
    );
    assert!(
        sim.sim.objects(Type::TestCaseResult, "").is_empty(),
        "nothing stored as bob"
    );
    // Alice replays: her own rows land, once, under her name; the unknown key's stays.
    let report = rally_sidecar::commands::journal::replay_journal(cfg, &j, vec![], ALICE.1)
        .await
        .expect("replay");
    let landed: Vec<_> = report
        .rows
        .iter()
        .filter(|d| d.state == State::Confirmed)
        .collect();
    assert_eq!(landed.len(), 2, "{report:?}");
    assert_eq!(stored(&sim, "by-alice").len(), 1);
    assert_eq!(stored(&sim, "alice-again").len(), 1);
    assert_eq!(
        stored(&sim, "by-nobody").len(),
        0,
        "the unknown key's write is not alice's"
    );
    assert!(
        stored(&sim, "by-alice")[0]["Tester"]["_ref"]
            .as_str()
            .is_none_or(|t| t.ends_with("/user/400"))
    );
    sim.stop().await;
}

#[tokio::test]
async fn two_keys_of_one_user_share_its_slots() {
    let mut fixtures = Fixtures::default();
    fixtures.users[0].api_keys.push(ApiKey {
        key: "_sim_alice_second_key".into(),
        read_only: false,
    });
    let mut opts = SimOptions {
        fixtures,
        ..SimOptions::default()
    };
    opts.faults.latency = Some("300ms".into());
    let sim = simulator(opts).await;
    let sidecar = Sidecar::start(&sim.base_url, |raw, _| {
        raw.upstream.max_concurrency_per_credential = Some(2);
    })
    .await;
    let keys = ["_sim_alice_key", "_sim_alice_second_key"];
    // First requests: the sidecar learns whose keys these are.
    for k in keys {
        get(
            &sidecar.url(&format!("{WS}/subscription")),
            &[("zsessionid", k)],
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let url = sidecar.url(&format!("{WS}/testcase/1001"));
            let key = keys[i % 2];
            tokio::spawn(async move { get(&url, &[("zsessionid", key)]).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("join"), StatusCode::OK);
    }
    let open = sim.sim.stats().max_open_per_user;
    let alice = open
        .iter()
        .find(|(k, _)| k.contains("alice"))
        .map(|(_, v)| *v);
    assert_eq!(
        alice,
        Some(2),
        "both keys of alice together never had more than 2 open: {open:?}"
    );
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn the_access_log_of_a_held_write_has_its_bytes_and_upstream_time() {
    let (sim, sidecar, _) = stack(SimOptions::default()).await;
    let a = post(&sidecar, &format!("{WS}/testcaseresult/create"), &[ALICE, ("x-request-id", "promise-access-log")],
        json!({"TestCaseResult": {"TestCase": "/testcase/1010", "Verdict": "Pass", "Build": "logged"}})).await;
    assert_eq!(a.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let line = logs()
        .contents()
        .lines()
        .rfind(|l| l.contains("promise-access-log") && l.contains("\"access\""))
        .map(str::to_string)
        .expect("an access line");
    let v: Value = serde_json::from_str(&line).expect("json");
    assert!(
        v["fields"]["bytes_in"].as_u64().is_some_and(|b| b > 0),
        "{line}"
    );
    assert!(
        v["fields"]["upstream_ms"]
            .as_f64()
            .is_some_and(|ms| ms >= 0.0),
        "{line}"
    );
    // The refusal's reason is its own field, not the event's message.
    let _ = post(
        &sidecar,
        &format!("{WS}/testcaseresult/create"),
        &[ALICE],
        json!({"TestCaseResult": {"TestCase": "/testcase/1090", "Verdict": "Pass", "Build": "no"}}),
    )
    .await;
    let refused = logs()
        .contents()
        .lines()
        .rfind(|l| l.contains("write refused"))
        .map(str::to_string)
        .expect("refusal line");
    let v: Value = serde_json::from_str(&refused).expect("json");
    assert_eq!(v["fields"]["message"], "write refused", "{refused}");
    assert!(
        v["fields"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("archived")),
        "{refused}"
    );
    sidecar.stop().await;
    sim.stop().await;
}
