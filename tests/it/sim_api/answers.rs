//! Issue 11, items 3, 4 and 5 over HTTP: the BatchResult in the captured shape, Rally's
//! wordings (conflict variants naming a related object, the opt-in `Invalid key` fault, deleting
//! nothing, unreadable references, update refusals, unknown sort attributes, a bad result
//! Date), and string attributes that keep numbers as text.

use bytes::Bytes;
use http::Method;
use rally_sidecar::sim::SimOptions;
use rally_sidecar::sim::model::Type;
use serde_json::{Value, json};

use super::{ALICE, WS, create_body};
use crate::support::{get, send, simulator};

async fn create(base: &str, body: Value) -> Value {
    send(
        Method::POST,
        &format!("{base}/testcaseresult/create?fetch=Build,Notes"),
        &[ALICE],
        Bytes::from(body.to_string()),
    )
    .await
    .json()
}

async fn set(base_url: &str, what: &str, patch: Value) {
    let a = send(
        Method::POST,
        &format!("{base_url}/__sim/{what}"),
        &[],
        Bytes::from(patch.to_string()),
    )
    .await;
    assert!(a.status.is_success(), "{what} {patch}: {}", a.text());
}

fn sorted_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

#[tokio::test]
async fn batch_result_has_the_captured_shape() {
    let sim = simulator(SimOptions::default()).await;
    let url = format!("{}{WS}/batch", sim.base_url);
    let body = json!({"Batch": [
        {"Entry": {"Path": "/testcaseresult/create", "Method": "PUT", "Body": {"TestCaseResult": {"TestCase": "/testcase/1010", "Build": "b", "Date": "2026-01-01T00:00:00Z", "Verdict": "Pass"}}}},
        {"Entry": {"Path": "/testcaseresult/create", "Method": "PUT", "Body": {"TestCaseResult": {"TestCase": "/testcase/1010"}}}}
    ]});
    let a = send(Method::POST, &url, &[ALICE], Bytes::from(body.to_string()))
        .await
        .json();
    let r = &a["BatchResult"];
    assert_eq!(
        sorted_keys(r),
        ["Errors", "Results", "Warnings"],
        "only Errors, Warnings and Results in the BatchResult object"
    );
    for (i, element) in r["Results"].as_array().expect("results").iter().enumerate() {
        assert_eq!(element["_rallyAPIMajor"], "2", "element {i}");
        assert_eq!(element["_rallyAPIMinor"], "0", "element {i}");
    }
    assert!(r["Results"][0]["Object"]["_ref"].is_string());
    assert!(r["Results"][1]["Errors"][0].is_string());
    assert!(r["Results"][1].get("Object").is_none());

    let broken = send(Method::POST, &url, &[ALICE], Bytes::from_static(b"{"))
        .await
        .json();
    assert_eq!(
        sorted_keys(&broken["BatchResult"]),
        ["Errors", "Results", "Warnings"]
    );
    assert!(broken["BatchResult"]["Errors"][0].is_string());
    sim.stop().await;
}

#[tokio::test]
async fn conflicts_come_in_rallys_variants_naming_a_related_object() {
    let sim = simulator(SimOptions::default()).await;
    let base = format!("{}{WS}", sim.base_url);
    set(&sim.base_url, "faults", json!({"conflict_rate": 1.0})).await;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..30 {
        let a = create(&base, json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Build": format!("c{i}"), "Date": "2026-01-01T00:00:00Z", "Verdict": "Pass"}})).await;
        let msg = a["CreateResult"]["Errors"][0]
            .as_str()
            .expect("error")
            .to_string();
        assert!(
            !msg.contains("TestCaseResult"),
            "names a related object: {msg}"
        );
        seen.insert(msg);
    }
    let expected = [
        "Concurrency conflict: [Object has been modified since being read for update in this context] - ConcurrencyConflictException : Modified since read on update : Object Class : com.f4tech.slm.domain.Subscription : ObjectID : 100",
        "Concurrency conflict: [Object has been modified since being read for update in this context] - ConcurrencyConflictException : Modified since read on update : Object Class : com.f4tech.slm.domain.TestCase : ObjectID : 1001",
        "Could not update: Could not write changes in Unit Of Work",
    ];
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), expected);
    assert!(
        sim.sim.objects(Type::TestCaseResult, "").is_empty(),
        "nothing stored"
    );
    sim.stop().await;
}

#[tokio::test]
async fn invalid_key_for_a_valid_key_is_an_opt_in_fault() {
    let sim = simulator(SimOptions::default()).await;
    let base = format!("{}{WS}", sim.base_url);
    let body = || json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Build": "k", "Date": "2026-01-01T00:00:00Z", "Verdict": "Pass"}});
    assert_eq!(
        create(&base, body()).await["CreateResult"]["Errors"],
        json!([]),
        "off by default"
    );
    set(&sim.base_url, "faults", json!({"invalid_key_rate": 1.0})).await;
    let refused = create(&base, body()).await;
    assert_eq!(
        refused["CreateResult"]["Errors"][0],
        "Not authorized to perform action: Invalid key"
    );
    set(
        &sim.base_url,
        "faults",
        json!({"invalid_key_rate": 0.0, "script": ["invalid_key"]}),
    )
    .await;
    let scripted = create(&base, body()).await;
    assert_eq!(
        scripted["CreateResult"]["Errors"][0],
        "Not authorized to perform action: Invalid key"
    );
    assert_eq!(sim.sim.stats().invalid_keys, 2);
    assert_eq!(
        sim.sim.objects(Type::TestCaseResult, "").len(),
        1,
        "refusals store nothing"
    );
    sim.stop().await;
}

#[tokio::test]
async fn rallys_wordings_for_deletes_refs_updates_sorts_and_dates() {
    let sim = simulator(SimOptions::default()).await;
    let base = format!("{}{WS}", sim.base_url);
    let deleted = send(
        Method::DELETE,
        &format!("{base}/testcaseresult/999999"),
        &[ALICE],
        Bytes::new(),
    )
    .await
    .json();
    assert_eq!(
        deleted["OperationResult"]["Errors"][0],
        "Object to delete cannot be null"
    );

    let unresolved = create(&base, json!({"TestCaseResult": {"TestCase": "/testcase/999999", "Build": "b", "Date": "2026-01-01T00:00:00Z", "Verdict": "Pass"}})).await;
    assert_eq!(
        unresolved["CreateResult"]["Errors"][0],
        "Could not read: Could not read referenced object null"
    );

    let ok = send(
        Method::POST,
        &format!("{base}/testcaseresult/create"),
        &[ALICE],
        create_body("/testcase/1001", "mine"),
    )
    .await
    .json();
    let oid = ok["CreateResult"]["Object"]["ObjectID"]
        .as_i64()
        .expect("oid");
    let by_viewer = send(
        Method::POST,
        &format!("{base}/testcaseresult/{oid}"),
        &[("zsessionid", "_sim_bob_key")],
        Bytes::from(json!({"TestCaseResult": {"Verdict": "Fail"}}).to_string()),
    )
    .await
    .json();
    assert_eq!(
        by_viewer["OperationResult"]["Errors"][0],
        format!("Not authorized to update: TestCaseResult {oid}")
    );

    let sorted = get(&format!("{base}/defect?order=Invalid%20Order"), &[ALICE])
        .await
        .json();
    assert_eq!(
        sorted["QueryResult"]["Errors"][0],
        "Cannot sort using unknown attribute Invalid"
    );
    assert_eq!(sorted["QueryResult"]["TotalResultCount"], 0);
    let fine = get(
        &format!("{base}/testcaseresult?order=Date%20desc,TestCase.FormattedID"),
        &[ALICE],
    )
    .await
    .json();
    assert_eq!(fine["QueryResult"]["Errors"], json!([]));

    // KB 77114: a badly formatted Date gets the unit-of-work text; the switch turns it off.
    let bad_date = || json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Build": "b", "Date": "last Tuesday", "Verdict": "Pass"}});
    assert_eq!(
        create(&base, bad_date()).await["CreateResult"]["Errors"][0],
        "Could not update: Could not write changes in Unit Of Work"
    );
    set(
        &sim.base_url,
        "switches",
        json!({"bad_date_unit_of_work": false}),
    )
    .await;
    let validation = create(&base, bad_date()).await;
    assert!(
        validation["CreateResult"]["Errors"][0]
            .as_str()
            .is_some_and(|e| e.starts_with("Validation error: TestCaseResult.Date")),
        "{validation}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn string_attributes_keep_numbers_as_text() {
    let sim = simulator(SimOptions::default()).await;
    let base = format!("{}{WS}", sim.base_url);
    let a = create(&base, json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Build": 7, "Date": "2026-01-01T00:00:00Z", "Verdict": "Pass", "Notes": 12.5, "Duration": 3}})).await;
    let obj = &a["CreateResult"]["Object"];
    assert_eq!(obj["Build"], "7", "{a}");
    assert_eq!(obj["Notes"], "12.5");
    let oid = obj["ObjectID"].as_i64().expect("oid");
    let read = get(&format!("{base}/testcaseresult/{oid}"), &[ALICE])
        .await
        .json();
    assert_eq!(read["TestCaseResult"]["Build"], "7");
    assert_eq!(
        read["TestCaseResult"]["Duration"], 3,
        "a DECIMAL stays a number"
    );
    let q = get(
        &format!("{base}/testcaseresult?query=(Build%20=%20%227%22)"),
        &[ALICE],
    )
    .await
    .json();
    assert_eq!(q["QueryResult"]["TotalResultCount"], 1);
    let tc = send(
        Method::POST,
        &format!("{base}/testcase/create?fetch=Name"),
        &[ALICE],
        Bytes::from(json!({"TestCase": {"Name": 42, "c_Lifecycle": true}}).to_string()),
    )
    .await
    .json();
    assert_eq!(tc["CreateResult"]["Object"]["Name"], "42", "{tc}");
    let tc_oid = tc["CreateResult"]["Object"]["ObjectID"]
        .as_i64()
        .expect("tc");
    let read = get(&format!("{base}/testcase/{tc_oid}"), &[ALICE])
        .await
        .json();
    assert_eq!(
        read["TestCase"]["c_Lifecycle"], "true",
        "custom fields are strings"
    );
    sim.stop().await;
}
