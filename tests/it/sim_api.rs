//! The simulator, checked over HTTP against the behaviours docs/simulator.md describes. The
//! round-2 behaviours of issue 11 have a module each: routing (versions, types, nested
//! objects), answers (batch shape, wordings, value types), sessions (cookies, fault profile).

mod answers;
mod routing;
mod sessions;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use rally_sidecar::sim::SimOptions;
use rally_sidecar::sim::faults::FaultConfig;
use rally_sidecar::sim::model::{FixtureResult, Fixtures};
use serde_json::{Value, json};

use crate::support::{get, send, simulator};

const ALICE: (&str, &str) = ("zsessionid", "_sim_alice_key");
const WS: &str = "/slm/webservice/v2.0";

fn create_body(tc: &str, build: &str) -> Bytes {
    Bytes::from(
        json!({"TestCaseResult": {"TestCase": tc, "Build": build, "Date": "2026-01-01T10:00:00Z", "Verdict": "Pass"}}).to_string(),
    )
}

#[tokio::test]
async fn single_reads_queries_and_refs_have_rallys_shape() {
    let sim = simulator(SimOptions::default()).await;
    let base = &sim.base_url;
    let tc = get(&format!("{base}{WS}/TestCase/1001.js"), &[ALICE])
        .await
        .json();
    let obj = &tc["TestCase"];
    assert_eq!(obj["_rallyAPIMajor"], "2");
    assert_eq!(obj["_rallyAPIMinor"], "0");
    assert_eq!(obj["Errors"], json!([]), "Errors inside the type object");
    assert_eq!(obj["Warnings"], json!([]));
    assert!(
        obj.get("_type").is_none(),
        "no _type at the root of a single read"
    );
    assert_eq!(obj["FormattedID"], "TC1");
    assert_eq!(obj["ObjectID"], 1001);
    assert_eq!(
        obj["_ref"],
        format!("{base}{WS}/testcase/1001"),
        "absolute ref back to the simulator"
    );
    assert_eq!(obj["Project"]["_type"], "Project");
    assert_eq!(obj["Project"]["_rallyAPIMajor"], "2");
    assert_eq!(
        obj["Results"]["_ref"],
        format!("{base}{WS}/TestCase/1001/Results")
    );
    assert_eq!(obj["Results"]["Count"], 0);
    let created = obj["CreationDate"].as_str().expect("date");
    assert!(
        created.ends_with('Z') && created.len() == 24,
        "UTC with milliseconds: {created}"
    );

    // By UUID, case-insensitive type.
    let uuid = obj["ObjectUUID"].as_str().expect("uuid").to_string();
    assert_eq!(
        get(&format!("{base}{WS}/testcase/{uuid}"), &[ALICE])
            .await
            .json()["TestCase"]["ObjectID"],
        1001
    );

    let missing = get(&format!("{base}{WS}/testcase/999999"), &[ALICE]).await;
    assert_eq!(missing.status, StatusCode::OK);
    assert_eq!(
        missing.json()["OperationResult"]["Errors"][0],
        "Cannot find object to read"
    );
    assert_eq!(
        get(&format!("{base}{WS}/testcase/1092"), &[ALICE])
            .await
            .json()["OperationResult"]["Errors"][0],
        "Cannot find object to read",
        "TC92 is in the recycle bin"
    );

    // Queries: shell objects without fetch, a field list with fetch, quoted lists too.
    let q = get(
        &format!("{base}{WS}/testcase?query=(FormattedID%20=%20TC7)"),
        &[ALICE],
    )
    .await
    .json();
    let r = &q["QueryResult"];
    assert_eq!(r["TotalResultCount"], 1);
    assert_eq!(r["Results"][0]["_type"], "TestCase");
    assert_eq!(r["Results"][0]["_rallyAPIMajor"], "2");
    assert!(
        r["Results"][0].get("Name").is_none(),
        "fetch absent: shell object"
    );
    let q = get(&format!("{base}{WS}/testcase?query=(Name%20contains%20%22case%2012%22)&fetch=%22FormattedID,Name%22"), &[ALICE]).await.json();
    assert_eq!(q["QueryResult"]["Results"][0]["FormattedID"], "TC12");
    assert!(q["QueryResult"]["Results"][0].get("Project").is_none());

    let bad = get(
        &format!("{base}{WS}/testcase?query=(Name%20=%20)"),
        &[ALICE],
    )
    .await
    .json();
    assert_eq!(
        bad["QueryResult"]["Errors"][0],
        "Could not parse: Unknown operator \")\""
    );
    assert_eq!(bad["QueryResult"]["TotalResultCount"], 0);
    let unknown = get(
        &format!("{base}{WS}/testcaseresult?query=(FormattedID%20=%20TC1)"),
        &[ALICE],
    )
    .await
    .json();
    assert_eq!(
        unknown["QueryResult"]["Errors"][0],
        "Could not parse: Could not find attribute \"FormattedID\" on type TestCaseResult in the query segment \"FormattedID\""
    );
    // Items of closed projects are not returned by queries.
    let closed = get(
        &format!("{base}{WS}/testcase?query=(FormattedID%20=%20TC91)"),
        &[ALICE],
    )
    .await
    .json();
    assert_eq!(closed["QueryResult"]["TotalResultCount"], 0);
    sim.stop().await;
}

#[tokio::test]
async fn paging_order_and_collections() {
    let sim = simulator(SimOptions::default()).await;
    let base = &sim.base_url;
    let page =
        |q: &str| format!("{base}{WS}/testcase?query=(Project.Name%20=%20%22Sim%20Project%22){q}");
    let p = get(&page(""), &[ALICE]).await.json();
    assert_eq!(p["QueryResult"]["PageSize"], 20, "default page size");
    assert_eq!(p["QueryResult"]["StartIndex"], 1);
    assert_eq!(
        p["QueryResult"]["TotalResultCount"], 51,
        "TC1-TC50 and TC90"
    );
    assert_eq!(
        p["QueryResult"]["Results"].as_array().map(Vec::len),
        Some(20)
    );
    let p = get(
        &page("&start=41&pagesize=20&fetch=FormattedID&order=ObjectID%20desc"),
        &[ALICE],
    )
    .await
    .json();
    assert_eq!(p["QueryResult"]["StartIndex"], 41);
    assert_eq!(
        p["QueryResult"]["Results"].as_array().map(Vec::len),
        Some(11)
    );
    assert_eq!(
        p["QueryResult"]["Results"][10]["FormattedID"], "TC1",
        "descending order, last page"
    );
    let p = get(&page("&pagesize=5000"), &[ALICE]).await.json();
    assert_eq!(
        p["QueryResult"]["PageSize"], 2000,
        "page size is capped at 2000"
    );

    let ts = get(
        &format!("{base}{WS}/TestSet/2001/TestCases?fetch=FormattedID&pagesize=100"),
        &[ALICE],
    )
    .await
    .json();
    assert_eq!(ts["QueryResult"]["TotalResultCount"], 10);
    let ps = get(
        &format!("{base}{WS}/Workspace/200/Projects?fetch=%22ObjectID,Name,State%22"),
        &[ALICE],
    )
    .await
    .json();
    assert_eq!(ps["QueryResult"]["TotalResultCount"], 2);
    assert_eq!(ps["QueryResult"]["Results"][1]["State"], "Closed");
    sim.stop().await;
}

#[tokio::test]
async fn result_create_update_delete_and_rollups() {
    let sim = simulator(SimOptions::default()).await;
    let base = &sim.base_url;
    // Refs in all four spellings; root key in any case; POST and PUT; .js.
    let spellings = [
        json!("/testcase/1005"),
        json!("testcase/1005"),
        json!(format!("{base}{WS}/testcase/1005")),
        json!({"_ref": "/testcase/1005"}),
    ];
    let mut oids = Vec::new();
    for (i, tc) in spellings.iter().enumerate() {
        let root = [
            "TestCaseResult",
            "testcaseresult",
            "TESTCASERESULT",
            "TestcaseResult",
        ][i];
        let method = if i % 2 == 0 {
            Method::PUT
        } else {
            Method::POST
        };
        let path = if i < 2 {
            "testcaseresult/create"
        } else {
            "TestCaseResult/create.js"
        };
        let body = json!({root: {"TestCase": tc, "Build": format!("b{i}"), "Date": format!("2026-01-0{}T10:00:00.123Z", i + 1), "Verdict": "Fail"}});
        let a = send(
            method,
            &format!("{base}{WS}/{path}?key=None&workspace=workspace/200&fetch=Build"),
            &[ALICE],
            Bytes::from(body.to_string()),
        )
        .await
        .json();
        let c = &a["CreateResult"];
        assert_eq!(c["Errors"], json!([]), "{a}");
        assert_eq!(c["Object"]["_type"], "TestCaseResult");
        assert_eq!(c["Object"]["Build"], format!("b{i}"), "fetch on create");
        oids.push(c["Object"]["ObjectID"].as_i64().expect("oid"));
    }
    let tc = get(&format!("{base}{WS}/testcase/1005"), &[ALICE])
        .await
        .json();
    assert_eq!(
        tc["TestCase"]["LastBuild"], "b3",
        "roll-up follows the latest Date"
    );
    assert_eq!(tc["TestCase"]["LastVerdict"], "Fail");
    assert_eq!(tc["TestCase"]["LastRun"], "2026-01-04T10:00:00.123Z");
    assert_eq!(tc["TestCase"]["Results"]["Count"], 4);

    // Update by POST and by PUT.
    let u = send(
        Method::POST,
        &format!("{base}{WS}/testcaseresult/{}", oids[3]),
        &[ALICE],
        Bytes::from(
            json!({"TestCaseResult": {"ObjectID": oids[3], "Verdict": "Pass"}}).to_string(),
        ),
    )
    .await
    .json();
    assert_eq!(u["OperationResult"]["Errors"], json!([]), "{u}");
    assert!(
        u["OperationResult"]["Warnings"][0]
            .as_str()
            .expect("warning")
            .contains("Ignored JSON element TestCaseResult.ObjectID")
    );
    assert_eq!(
        get(&format!("{base}{WS}/testcase/1005"), &[ALICE])
            .await
            .json()["TestCase"]["LastVerdict"],
        "Pass"
    );
    let u = send(
        Method::PUT,
        &format!("{base}{WS}/testcaseresult/{}.js", oids[0]),
        &[ALICE],
        Bytes::from(json!({"testcaseresult": {"Notes": "n"}}).to_string()),
    )
    .await
    .json();
    assert_eq!(u["OperationResult"]["Object"]["Notes"], "n");

    // Delete.
    let d = send(
        Method::DELETE,
        &format!("{base}{WS}/testcaseresult/{}", oids[3]),
        &[ALICE],
        Bytes::new(),
    )
    .await
    .json();
    assert_eq!(d["OperationResult"]["Errors"], json!([]));
    assert_eq!(
        get(&format!("{base}{WS}/testcase/1005"), &[ALICE])
            .await
            .json()["TestCase"]["LastBuild"],
        "b2"
    );

    // Validation and permission errors are HTTP 200 + Errors.
    let cases = [
        (
            ALICE,
            json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Date": "2026-01-01T00:00:00Z", "Verdict": "Pass"}}),
            "Validation error: TestCaseResult.Build should not be null",
        ),
        (
            ALICE,
            json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Build": "b", "Date": "2026-01-01T00:00:00Z", "Verdict": "Great"}}),
            "Validation error: TestCaseResult.Verdict contains an invalid value: \"Great\"",
        ),
        (
            ALICE,
            json!({"TestCaseResult": {"TestCase": "/testcase/1092", "Build": "b", "Date": "2026-01-01T00:00:00Z", "Verdict": "Pass"}}),
            "Could not read: Could not read referenced object null",
        ),
        (
            ALICE,
            json!({"TestCaseResult": {"TestCase": "/testcase/1091", "Build": "b", "Date": "2026-01-01T00:00:00Z", "Verdict": "Pass"}}),
            "Not authorized to create: TestCaseResult",
        ),
        (
            ("zsessionid", "_sim_bob_key"),
            json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Build": "b", "Date": "2026-01-01T00:00:00Z", "Verdict": "Pass"}}),
            "Not authorized to create: TestCaseResult",
        ),
    ];
    for (who, body, want) in cases {
        let a = send(
            Method::POST,
            &format!("{base}{WS}/testcaseresult/create"),
            &[who],
            Bytes::from(body.to_string()),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.json()["CreateResult"]["Errors"][0], want);
    }
    sim.stop().await;
}

#[tokio::test]
async fn authentication_the_way_rally_does_it() {
    let sim = simulator(SimOptions::default()).await;
    let base = &sim.base_url;
    let none = get(&format!("{base}{WS}/user"), &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(
        none.headers["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/html")
    );
    assert!(
        none.headers["www-authenticate"]
            .to_str()
            .expect("hdr")
            .starts_with("Basic realm=")
    );
    assert!(none.text().contains("Full authentication is required"));
    assert_eq!(
        get(&format!("{base}{WS}/user"), &[("zsessionid", "_nope")])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    let me = get(&format!("{base}{WS}/user"), &[ALICE]).await.json();
    assert_eq!(
        me["User"]["UserName"], "alice@example.com",
        "GET /user is the caller"
    );
    let users = get(&format!("{base}{WS}/users?fetch=UserName"), &[ALICE])
        .await
        .json();
    assert_eq!(
        users["QueryResult"]["TotalResultCount"], 4,
        "the plural endpoint is a query"
    );

    // Read-only key: reads fine, writes 401.
    let dave = ("zsessionid", "_sim_dave_readonly");
    assert_eq!(
        get(&format!("{base}{WS}/testcase/1001"), &[dave])
            .await
            .status,
        StatusCode::OK
    );
    let w = send(
        Method::POST,
        &format!("{base}{WS}/testcaseresult/create"),
        &[dave],
        create_body("/testcase/1001", "d"),
    )
    .await;
    assert_eq!(w.status, StatusCode::UNAUTHORIZED);

    // Basic auth: writes need the security token bound to the session cookie.
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("carol@example.com:carol-pass")
    );
    let auth = get(
        &format!("{base}{WS}/security/authorize"),
        &[("authorization", &basic)],
    )
    .await;
    let cookie = auth.headers["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_string();
    assert!(cookie.starts_with("JSESSIONID="));
    let token = auth.json()["OperationResult"]["SecurityToken"]
        .as_str()
        .expect("token")
        .to_string();
    let url = |key: &str| format!("{base}{WS}/testcaseresult/create?key={key}");
    let ok = send(
        Method::POST,
        &url(&token),
        &[("authorization", &basic), ("cookie", &cookie)],
        create_body("/testcase/1001", "c"),
    )
    .await
    .json();
    assert_eq!(ok["CreateResult"]["Errors"], json!([]), "{ok}");
    for (key, with_cookie) in [("wrong", true), (token.as_str(), false)] {
        let mut h = vec![("authorization", basic.as_str())];
        if with_cookie {
            h.push(("cookie", &cookie));
        }
        let a = send(
            Method::POST,
            &url(key),
            &h,
            create_body("/testcase/1001", "c"),
        )
        .await
        .json();
        assert_eq!(
            a["CreateResult"]["Errors"][0],
            "Not authorized to perform action: Invalid key"
        );
    }
    let wrong_pass = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("carol@example.com:nope")
    );
    assert_eq!(
        get(
            &format!("{base}{WS}/user"),
            &[("authorization", &wrong_pass)]
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    sim.stop().await;
}

#[tokio::test]
async fn batch_entries_succeed_and_fail_on_their_own() {
    let sim = simulator(SimOptions::default()).await;
    let base = &sim.base_url;
    let body = json!({"Batch": [
        {"Entry": {"Path": "/testcaseresult/create", "Method": "PUT", "Body": {"testcaseresult": {"TestCase": "/testcase/1010", "Build": "batch", "Date": "2026-01-01T00:00:00.000Z", "Verdict": "Pass"}}}},
        {"Entry": {"Path": "/testcaseresult/create", "Method": "POST", "Body": {"testcaseresult": {"TestCase": "/testcase/1010", "Date": "2026-01-01T00:00:00.000Z", "Verdict": "Pass"}}}},
        {"Entry": {"Path": "/testcase/1010?fetch=FormattedID", "Method": "GET"}}
    ]});
    let a = send(
        Method::POST,
        &format!("{base}{WS}/batch?key=None&fetch=Build"),
        &[ALICE],
        Bytes::from(body.to_string()),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let r = &a.json()["BatchResult"];
    assert_eq!(r["Results"].as_array().map(Vec::len), Some(3));
    assert_eq!(r["Results"][0]["Errors"], json!([]));
    assert_eq!(r["Results"][0]["Object"]["Build"], "batch");
    assert_eq!(
        r["Results"][1]["Errors"][0],
        "Validation error: TestCaseResult.Build should not be null"
    );
    assert!(r["Results"][1].get("Object").is_none());
    assert_eq!(r["Results"][2]["Object"]["FormattedID"], "TC10");
    sim.stop().await;
}

#[tokio::test]
async fn per_user_concurrency_is_capped_and_excess_queued() {
    let opts = SimOptions {
        max_concurrency_per_user: 3,
        faults: FaultConfig {
            latency: Some("150ms".into()),
            ..FaultConfig::default()
        },
        ..SimOptions::default()
    };
    let sim = simulator(opts).await;
    let url = format!("{}{WS}/testcase/1001", sim.base_url);
    let tasks: Vec<_> = (0..9)
        .map(|_| {
            let u = url.clone();
            tokio::spawn(async move { get(&u, &[ALICE]).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(
            t.await.expect("join"),
            StatusCode::OK,
            "queued, not rejected"
        );
    }
    let stats = sim.sim.stats();
    assert!(
        stats.queued >= 5,
        "at most 3 in service, the rest waited: {stats:?}"
    );
    sim.stop().await;
}

/// Runs `n` sequential creates and returns what each one looked like from the client.
async fn outcomes(base: &str, n: usize) -> Vec<String> {
    let mut v = Vec::new();
    for i in 0..n {
        let req = http::Request::post(format!("{base}{WS}/testcaseresult/create"))
            .header("zsessionid", "_sim_alice_key")
            .body(http_body_util::Full::new(create_body(
                "/testcase/1001",
                &format!("seq{i}"),
            )))
            .expect("req");
        match crate::support::client().request(req).await {
            Err(_) => v.push("reset".to_string()),
            Ok(resp) => {
                let a = crate::support::collect(resp).await;
                let errs = serde_json::from_slice::<Value>(&a.body)
                    .ok()
                    .map(|j| j["CreateResult"]["Errors"].to_string());
                v.push(format!(
                    "{} {}",
                    a.status.as_u16(),
                    errs.unwrap_or_default()
                ));
            }
        }
    }
    v
}

#[tokio::test]
async fn every_fault_knob_is_deterministic_under_a_seed() {
    let faults = FaultConfig {
        drop_writes: 0.15,
        conflict_rate: 0.1,
        error_rate: 0.1,
        gateway_timeout_rate: 0.1,
        reset_rate: 0.1,
        ..FaultConfig::default()
    };
    let sim = simulator(SimOptions {
        seed: 42,
        faults: faults.clone(),
        ..SimOptions::default()
    })
    .await;
    let first = outcomes(&sim.base_url, 60).await;
    let stats = sim.sim.stats();
    sim.sim.reset();
    let second = outcomes(&sim.base_url, 60).await;
    assert_eq!(first, second, "same seed, same sequence of outcomes");
    for (name, n) in [
        ("dropped", stats.dropped),
        ("conflicts", stats.conflicts),
        ("errors", stats.errors),
        ("gateway timeouts", stats.gateway_timeouts),
        (
            "resets",
            stats.resets_before_persist + stats.resets_after_persist,
        ),
    ] {
        assert!(
            n > 0,
            "{name} injected at least once in 60 writes: {stats:?}"
        );
    }
    assert_eq!(stats.writes_received, 60);
    assert!(
        first
            .iter()
            .any(|o| o.starts_with("502") || o.starts_with("524"))
    );
    assert!(first.iter().any(|o| o.contains("Concurrency conflict")));
    sim.stop().await;

    let other = simulator(SimOptions {
        seed: 43,
        faults,
        ..SimOptions::default()
    })
    .await;
    assert_ne!(
        first,
        outcomes(&other.base_url, 60).await,
        "another seed, another sequence"
    );
    other.stop().await;
}

#[tokio::test]
async fn each_fault_does_what_it_says() {
    let sim = simulator(SimOptions::default()).await;
    let base = sim.base_url.clone();
    let count = |build: &str| {
        sim.sim
            .objects(rally_sidecar::sim::model::Type::TestCaseResult, "")
            .iter()
            .filter(|o| o["Build"] == build)
            .count()
    };
    let faults_url = format!("{base}/__sim/faults");
    let set = |f: Value| {
        let url = faults_url.clone();
        async move { send(Method::POST, &url, &[], Bytes::from(f.to_string())).await }
    };

    set(json!({"drop_writes": 1.0})).await;
    let a = send(
        Method::POST,
        &format!("{base}{WS}/testcaseresult/create"),
        &[ALICE],
        create_body("/testcase/1001", "dropped"),
    )
    .await
    .json();
    assert_eq!(a["CreateResult"]["Errors"], json!([]), "acknowledged");
    let oid = a["CreateResult"]["Object"]["ObjectID"]
        .as_i64()
        .expect("oid");
    assert_eq!(count("dropped"), 0, "never stored");
    assert_eq!(
        get(&format!("{base}{WS}/testcaseresult/{oid}"), &[ALICE])
            .await
            .json()["OperationResult"]["Errors"][0],
        "Cannot find object to read"
    );

    set(json!({"drop_writes": 0.0, "gateway_timeout_rate": 1.0})).await;
    let a = send(
        Method::POST,
        &format!("{base}{WS}/testcaseresult/create"),
        &[ALICE],
        create_body("/testcase/1001", "gw"),
    )
    .await;
    assert!(a.status == StatusCode::BAD_GATEWAY || a.status.as_u16() == 524);
    assert_eq!(count("gw"), 1, "stored despite the gateway error");

    set(json!({"gateway_timeout_rate": 0.0, "conflict_rate": 1.0})).await;
    let a = send(
        Method::POST,
        &format!("{base}{WS}/testcaseresult/create"),
        &[ALICE],
        create_body("/testcase/1001", "cc"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.json()["CreateResult"]["Errors"][0]
            .as_str()
            .expect("err")
            .starts_with("Concurrency conflict: [Object has been modified")
    );
    assert_eq!(count("cc"), 0);

    set(json!({"conflict_rate": 0.0, "error_rate": 1.0})).await;
    let a = send(
        Method::POST,
        &format!("{base}{WS}/testcaseresult/create"),
        &[ALICE],
        create_body("/testcase/1001", "err"),
    )
    .await;
    assert!(
        a.status == StatusCode::INTERNAL_SERVER_ERROR
            || a.status == StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(count("err"), 0);

    set(json!({"error_rate": 0.0, "reset_rate": 1.0})).await;
    for i in 0..6 {
        let req = http::Request::post(format!("{base}{WS}/testcaseresult/create"))
            .header("zsessionid", "_sim_alice_key")
            .body(http_body_util::Full::new(create_body(
                "/testcase/1001",
                &format!("reset{i}"),
            )))
            .expect("req");
        assert!(
            crate::support::client().request(req).await.is_err(),
            "no answer at all"
        );
    }
    let st = sim.sim.stats();
    assert_eq!(st.resets_before_persist + st.resets_after_persist, 6);
    let stored: usize = (0..6).map(|i| count(&format!("reset{i}"))).sum();
    assert_eq!(
        stored as u64, st.resets_after_persist,
        "resets after persisting stored the result"
    );

    set(json!({"reset_rate": 0.0, "read_lag": "300ms"})).await;
    let a = send(
        Method::POST,
        &format!("{base}{WS}/testcaseresult/create"),
        &[ALICE],
        create_body("/testcase/1001", "lag"),
    )
    .await
    .json();
    let oid = a["CreateResult"]["Object"]["ObjectID"]
        .as_i64()
        .expect("oid");
    let url = format!("{base}{WS}/testcaseresult/{oid}");
    assert_eq!(
        get(&url, &[ALICE]).await.json()["OperationResult"]["Errors"][0],
        "Cannot find object to read",
        "not readable yet"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        get(&url, &[ALICE]).await.json()["TestCaseResult"]["Build"],
        "lag",
        "readable after the lag"
    );

    let st = get(&format!("{base}/__sim/stats"), &[]).await.json();
    assert!(st["dropped"].as_u64() >= Some(1));
    let bad = set(json!({"drop_writes": 2})).await;
    assert_eq!(
        bad.status,
        StatusCode::BAD_REQUEST,
        "probabilities are checked"
    );
    sim.stop().await;
}

#[tokio::test]
async fn fixtures_file_replaces_the_defaults() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/fixtures.example.json");
    let parsed =
        Fixtures::from_file(std::path::Path::new(example)).expect("example fixtures parse");
    assert_eq!(
        parsed,
        Fixtures::default(),
        "docs/fixtures.example.json is the default fixture set"
    );

    let mut f = Fixtures::default();
    f.verdicts.push("In Progress".into());
    f.test_case_results.push(FixtureResult {
        test_case: 1001,
        build: "seeded".into(),
        date: "2020-01-01T00:00:00Z".into(),
        verdict: "In Progress".into(),
        tester: None,
        notes: None,
    });
    let sim = simulator(SimOptions {
        fixtures: f,
        ..SimOptions::default()
    })
    .await;
    let q = get(
        &format!(
            "{}{WS}/testcaseresult?query=(Verdict%20=%20%22In%20Progress%22)&fetch=Build",
            sim.base_url
        ),
        &[ALICE],
    )
    .await
    .json();
    assert_eq!(q["QueryResult"]["TotalResultCount"], 1);
    assert_eq!(q["QueryResult"]["Results"][0]["Build"], "seeded");
    sim.stop().await;
}
