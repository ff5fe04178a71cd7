//! TestCaseResult interception against the simulator: each Build source and their precedence,
//! the missing-build refusal, per-credential Tester, each guard reason, shadow mode, batch,
//! request variants, `_method=GET`, oversize and malformed bodies, metrics.

use bytes::Bytes;
use http::{Method, StatusCode};
use rally_sidecar::config::{Config, Overrides, RawConfig, RawRule};
use rally_sidecar::sim::model::Type;
use rally_sidecar::sim::{SimHandle, SimOptions};
use serde_json::{Value, json};

use crate::support::{Sidecar, get, send, simulator};

const WS: &str = "/slm/webservice/v2.0";
const ALICE: (&str, &str) = ("zsessionid", "_sim_alice_key");

fn carol() -> (&'static str, String) {
    use base64::Engine;
    (
        "authorization",
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("carol@example.com:carol-pass")
        ),
    )
}

fn archived_rule(raw: &mut RawConfig) {
    raw.guard.rule = Some(vec![RawRule {
        field: "c_Lifecycle".into(),
        values: vec!["Archived".into(), "Deprecated".into()],
    }]);
}

/// No CI variables, so tests never depend on the machine's environment.
fn quiet(raw: &mut RawConfig) {
    raw.context.build_env = Some(rally_sidecar::config::List::Items(vec![]));
}

async fn stack(tweak: impl FnOnce(&mut RawConfig, &mut Overrides)) -> (SimHandle, Sidecar) {
    let sim = simulator(SimOptions::default()).await;
    let sidecar = Sidecar::start(&sim.base_url, |raw, ov| {
        quiet(raw);
        archived_rule(raw);
        tweak(raw, ov);
    })
    .await;
    (sim, sidecar)
}

/// The stored result with this ObjectID, as the simulator holds it.
fn stored(sim: &SimHandle, oid: i64) -> Value {
    sim.sim
        .objects(Type::TestCaseResult, "")
        .into_iter()
        .find(|o| o["ObjectID"] == oid)
        .unwrap_or(Value::Null)
}

async fn create(
    sidecar: &Sidecar,
    headers: &[(&str, &str)],
    body: Value,
) -> crate::support::Answer {
    send(
        Method::POST,
        &sidecar.url(&format!("{WS}/testcaseresult/create")),
        headers,
        Bytes::from(body.to_string()),
    )
    .await
}

fn oid(a: &crate::support::Answer) -> i64 {
    let v = a.json();
    v["CreateResult"]["Object"]["ObjectID"]
        .as_i64()
        .unwrap_or_else(|| panic!("created: {v}"))
}

#[tokio::test]
async fn build_sources_and_their_precedence() {
    // Config build + a CI variable, loaded the way `serve` loads them.
    let sim = simulator(SimOptions::default()).await;
    let ov = Overrides {
        listen: Some("127.0.0.1:0".into()),
        upstream: Some(sim.base_url.clone()),
        admin_listen: Some("127.0.0.1:0".into()),
        ..Overrides::default()
    };
    let env = |extra: &[(&str, &str)]| {
        let mut v = vec![(
            "RALLY_SIDECAR_CONTEXT_BUILD_ENV".to_string(),
            "MY_CI_BUILD".to_string(),
        )];
        v.extend(
            extra
                .iter()
                .map(|(k, val)| (k.to_string(), val.to_string())),
        );
        v
    };
    let body = json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Verdict": "Pass"}});

    // CI variable only.
    let cfg = Config::load(None, env(&[("MY_CI_BUILD", "ci-7")]), &ov).expect("config");
    let sidecar = Sidecar::start_config(cfg).await;
    let a = create(&sidecar, &[ALICE], body.clone()).await;
    assert_eq!(stored(&sim, oid(&a))["Build"], "ci-7");
    sidecar.stop().await;

    // RALLY_SIDECAR_BUILD beats the CI variable; then the admin context levels; then the header.
    let cfg = Config::load(
        None,
        env(&[("MY_CI_BUILD", "ci-7"), ("RALLY_SIDECAR_BUILD", "cfg-1")]),
        &ov,
    )
    .expect("config");
    let sidecar = Sidecar::start_config(cfg).await;
    let admin = format!("http://{}/context", sidecar.admin);
    let build_of = |a: crate::support::Answer| stored(&sim, oid(&a))["Build"].clone();
    assert_eq!(
        build_of(create(&sidecar, &[ALICE], body.clone()).await),
        "cfg-1"
    );
    send(
        Method::PUT,
        &admin,
        &[crate::support::JSON],
        Bytes::from(r#"{"build": "global-2"}"#),
    )
    .await;
    assert_eq!(
        build_of(create(&sidecar, &[ALICE], body.clone()).await),
        "global-2"
    );
    send(
        Method::PUT,
        &admin,
        &[crate::support::JSON],
        Bytes::from(r#"{"build": "ws-3", "workspace": "/workspace/200"}"#),
    )
    .await;
    assert_eq!(
        build_of(create(&sidecar, &[ALICE], body.clone()).await),
        "ws-3",
        "the test case's workspace"
    );
    send(
        Method::PUT,
        &admin,
        &[crate::support::JSON],
        Bytes::from(r#"{"build": "proj-4", "project": "300"}"#),
    )
    .await;
    assert_eq!(
        build_of(create(&sidecar, &[ALICE], body.clone()).await),
        "proj-4",
        "the test case's project"
    );
    assert_eq!(
        build_of(create(&sidecar, &[ALICE, ("x-rally-build", "hdr-5")], body.clone()).await),
        "hdr-5"
    );
    let sent = json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Verdict": "Pass", "Build": "client-6"}});
    let a = create(&sidecar, &[ALICE, ("x-rally-build", "hdr-5")], sent).await;
    assert_eq!(
        build_of(a),
        "client-6",
        "what the client sent is never overwritten"
    );

    let view = get(&admin, &[]).await.json();
    assert_eq!(
        view,
        json!({"build": "global-2", "workspaces": {"200": "ws-3"}, "projects": {"300": "proj-4"}})
    );
    send(
        Method::DELETE,
        &format!("{admin}?project=/project/300"),
        &[crate::support::JSON],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        build_of(create(&sidecar, &[ALICE], body.clone()).await),
        "ws-3"
    );
    send(
        Method::DELETE,
        &admin,
        &[crate::support::JSON],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        build_of(create(&sidecar, &[ALICE], body.clone()).await),
        "cfg-1"
    );
    let bad = send(
        Method::PUT,
        &admin,
        &[crate::support::JSON],
        Bytes::from(r#"{"bild": "x"}"#),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let m = get(&format!("http://{}/metrics", sidecar.admin), &[])
        .await
        .text();
    for source in [
        "header",
        "context_project",
        "context_workspace",
        "context_global",
        "config",
    ] {
        assert!(
            m.contains(&format!(
                "rally_sidecar_fields_filled_total{{field=\"Build\",source=\"{source}\"}}"
            )),
            "{source}: {m}"
        );
    }
    assert!(m.contains("rally_sidecar_fields_filled_total{field=\"Date\",source=\"received_at\"}"));
    assert!(m.contains("rally_sidecar_intercepted_writes_total{operation=\"create\"}"));
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn a_write_with_no_build_anywhere_is_refused_before_rally() {
    let (sim, sidecar) = stack(|_, _| {}).await;
    let a = create(
        &sidecar,
        &[ALICE],
        json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Verdict": "Pass"}}),
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "answered like a Rally application error"
    );
    assert_eq!(a.headers["x-rally-sidecar-decision"], "refused-no-build");
    let err = a.json()["CreateResult"]["Errors"][0]
        .as_str()
        .expect("error")
        .to_string();
    assert!(
        err.contains("TestCaseResult.Build is missing")
            && err.contains("X-Rally-Build")
            && err.contains("PUT"),
        "{err}"
    );
    assert_eq!(sim.sim.stats().writes_received, 0, "nothing reached Rally");
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn date_and_tester_per_credential() {
    let (sim, sidecar) =
        stack(|raw, _| raw.context.build = Some(rally_sidecar::config::Text::Str("b".into())))
            .await;
    let (name, value) = carol();
    // Carol's basic-auth writes need the token and its session.
    let auth = get(
        &format!("{}{WS}/security/authorize", sim.base_url),
        &[(name, &value)],
    )
    .await;
    let cookie = auth.headers["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_string();
    let token = auth.json()["OperationResult"]["SecurityToken"]
        .as_str()
        .expect("token")
        .to_string();
    let body = json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Verdict": "Pass"}});
    for round in 0..2 {
        let a = create(&sidecar, &[ALICE], body.clone()).await;
        assert_eq!(a.headers["x-rally-sidecar-filled"], "Build,Date,Tester");
        let r = stored(&sim, oid(&a));
        assert!(
            r["Tester"]["_ref"]
                .as_str()
                .expect("tester")
                .ends_with("/user/400"),
            "alice, round {round}"
        );
        let c = send(
            Method::POST,
            &sidecar.url(&format!("{WS}/testcaseresult/create?key={token}")),
            &[(name, &value), ("cookie", &cookie)],
            Bytes::from(body.to_string()),
        )
        .await;
        let r = stored(&sim, oid(&c));
        assert!(
            r["Tester"]["_ref"]
                .as_str()
                .expect("tester")
                .ends_with("/user/402"),
            "carol, round {round}: {r}"
        );
        let date = r["Date"].as_str().expect("date");
        assert!(
            date.len() == 24 && date.ends_with('Z'),
            "UTC with milliseconds: {date}"
        );
    }
    // The client's own Date and Tester are kept.
    let a = create(&sidecar, &[ALICE], json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Verdict": "Pass", "Date": "2020-01-02T03:04:05.678Z", "Tester": "/user/401"}})).await;
    assert_eq!(a.headers["x-rally-sidecar-filled"], "Build");
    let r = stored(&sim, oid(&a));
    assert_eq!(r["Date"], "2020-01-02T03:04:05.678Z");
    assert!(
        r["Tester"]["_ref"]
            .as_str()
            .expect("tester")
            .ends_with("/user/401")
    );
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn the_guard_blocks_each_kind_of_archived_test_case() {
    let (sim, sidecar) = stack(|raw, _| {
        raw.context.build = Some(rally_sidecar::config::Text::Str("b".into()));
        let mut rules = raw.guard.rule.take().unwrap_or_default();
        rules.push(RawRule {
            field: "Name".into(),
            values: vec!["Simulated test case 5".into()],
        });
        raw.guard.rule = Some(rules);
    })
    .await;
    let cases = [
        (
            "/testcase/1090",
            "blocked-rule",
            "rally-sidecar: TestCase TC90 is archived (c_Lifecycle = Archived); result not written",
        ),
        (
            "/testcase/1091",
            "blocked-project-closed",
            "rally-sidecar: TestCase TC91 is in the closed project \"Closed Project\"; result not written",
        ),
        (
            "/testcase/1092",
            "blocked-not-readable",
            "rally-sidecar: TestCase 1092 cannot be read (Cannot find object to read)",
        ),
        (
            "/testcase/99999",
            "blocked-not-readable",
            "rally-sidecar: TestCase 99999 cannot be read",
        ),
        (
            "/testcase/1005",
            "blocked-rule",
            "rally-sidecar: TestCase TC5 is archived (Name = Simulated test case 5)",
        ),
    ];
    for (tc, code, msg) in cases {
        let a = create(
            &sidecar,
            &[ALICE],
            json!({"TestCaseResult": {"TestCase": tc, "Verdict": "Pass"}}),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.headers["x-rally-sidecar-decision"], code, "{tc}");
        let err = a.json()["CreateResult"]["Errors"][0]
            .as_str()
            .expect("error")
            .to_string();
        assert!(err.starts_with(msg), "{tc}: {err}");
    }
    assert_eq!(
        sim.sim.stats().writes_received,
        0,
        "no blocked write reached Rally"
    );
    let ok = create(
        &sidecar,
        &[ALICE],
        json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Verdict": "Pass"}}),
    )
    .await;
    assert_eq!(ok.headers["x-rally-sidecar-decision"], "allowed");

    // Updates are guarded by the result's current test case: a result on TC90 made directly.
    let direct = send(
        Method::POST,
        &format!("{}{WS}/testcaseresult/create", sim.base_url),
        &[ALICE],
        Bytes::from(json!({"TestCaseResult": {"TestCase": "/testcase/1090", "Verdict": "Pass", "Build": "x", "Date": "2026-01-01T00:00:00Z"}}).to_string()),
    )
    .await;
    let id = oid(&direct);
    let u = send(
        Method::POST,
        &sidecar.url(&format!("{WS}/testcaseresult/{id}")),
        &[ALICE],
        Bytes::from(r#"{"TestCaseResult": {"Verdict": "Fail"}}"#),
    )
    .await;
    assert_eq!(u.headers["x-rally-sidecar-decision"], "blocked-rule");
    assert!(
        u.json()["OperationResult"]["Errors"][0]
            .as_str()
            .expect("error")
            .contains("TC90 is archived")
    );

    let m = get(&format!("http://{}/metrics", sidecar.admin), &[])
        .await
        .text();
    assert!(
        m.contains("rally_sidecar_writes_refused_total{reason=\"blocked-rule\"} 3"),
        "{m}"
    );
    assert!(m.contains("rally_sidecar_writes_refused_total{reason=\"blocked-project-closed\"} 1"));
    assert!(m.contains("rally_sidecar_writes_refused_total{reason=\"blocked-not-readable\"} 2"));
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn block_status_is_configurable() {
    let (sim, sidecar) = stack(|raw, _| raw.intercept.block_status = Some(422)).await;
    let a = create(
        &sidecar,
        &[ALICE],
        json!({"TestCaseResult": {"TestCase": "/testcase/1090", "Verdict": "Pass", "Build": "b"}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        a.json()["CreateResult"]["Errors"][0]
            .as_str()
            .expect("e")
            .contains("archived")
    );
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn shadow_mode_forwards_the_original_and_counts() {
    let (sim, sidecar) = stack(|raw, _| {
        raw.intercept.mode = Some("shadow".into());
        raw.context.build = Some(rally_sidecar::config::Text::Str("would-be".into()));
    })
    .await;
    let a = create(
        &sidecar,
        &[ALICE],
        json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Verdict": "Pass"}}),
    )
    .await;
    assert_eq!(
        a.headers["x-rally-sidecar-decision"],
        "shadow-would-fill-Build-Date-Tester"
    );
    assert_eq!(
        a.json()["CreateResult"]["Errors"][0],
        "Validation error: TestCaseResult.Build should not be null",
        "Rally saw the original"
    );
    let b = create(&sidecar, &[ALICE], json!({"TestCaseResult": {"TestCase": "/testcase/1090", "Verdict": "Pass", "Build": "b", "Date": "2026-01-01T00:00:00Z"}})).await;
    assert_eq!(
        b.headers["x-rally-sidecar-decision"],
        "shadow-would-blocked-rule"
    );
    assert_eq!(
        b.json()["CreateResult"]["Errors"],
        json!([]),
        "shadow does not block"
    );
    assert_eq!(sim.sim.stats().writes_received, 2);
    let m = get(&format!("http://{}/metrics", sidecar.admin), &[])
        .await
        .text();
    assert!(
        m.contains("rally_sidecar_shadow_decisions_total{decision=\"would-blocked-rule\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("rally_sidecar_shadow_decisions_total{decision=\"would-fill-Build\"} 1"),
        "{m}"
    );
    assert!(
        !m.contains("rally_sidecar_writes_refused_total{"),
        "nothing refused in shadow mode"
    );
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn batch_mixes_allowed_blocked_and_other_entries() {
    let (sim, sidecar) = stack(|raw, _| {
        raw.context.build = Some(rally_sidecar::config::Text::Str("batch-build".into()))
    })
    .await;
    let body = json!({"Batch": [
        {"Entry": {"Path": "/testcaseresult/create", "Method": "PUT", "Body": {"testcaseresult": {"TestCase": "/testcase/1011", "Verdict": "Pass"}}}},
        {"Entry": {"Path": "/testcaseresult/create", "Method": "POST", "Body": {"TestCaseResult": {"TestCase": "/testcase/1090", "Verdict": "Pass"}}}},
        {"Entry": {"Path": "/testcase/1012?fetch=FormattedID", "Method": "GET"}},
        {"Entry": {"Path": "/testcaseresult/create", "Method": "POST", "Body": {"TestCaseResult": {"TestCase": "/testcase/1091", "Verdict": "Fail"}}}},
        {"Entry": {"Path": "/testcaseresult/create", "Method": "POST", "Body": {"TestCaseResult": {"TestCase": "/testcase/1013", "Verdict": "Fail", "Build": "own"}}}}
    ]});
    let a = send(
        Method::POST,
        &sidecar.url(&format!("{WS}/batch?fetch=Build")),
        &[ALICE],
        Bytes::from(body.to_string()),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let r = a.json();
    let results = r["BatchResult"]["Results"]
        .as_array()
        .expect("results")
        .clone();
    assert_eq!(results.len(), 5, "one result per entry, in order: {r}");
    assert_eq!(results[0]["Errors"], json!([]));
    assert_eq!(results[0]["Object"]["Build"], "batch-build");
    assert!(
        results[1]["Errors"][0]
            .as_str()
            .expect("e")
            .contains("TC90 is archived")
    );
    assert_eq!(
        results[2]["Object"]["FormattedID"], "TC12",
        "the non-result entry passed unchanged"
    );
    assert!(
        results[3]["Errors"][0]
            .as_str()
            .expect("e")
            .contains("closed project")
    );
    assert_eq!(results[4]["Object"]["Build"], "own");
    assert!(
        results[0]["Object"]["_ref"]
            .as_str()
            .expect("ref")
            .starts_with(&format!("http://{}", sidecar.addr)),
        "refs rewritten in the merged answer"
    );
    assert_eq!(
        sim.sim.stats().writes_received,
        2,
        "only the allowed result entries reached Rally"
    );
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn request_variants_results_add_and_updates() {
    let (sim, sidecar) = stack(|raw, _| {
        raw.context.build = Some(rally_sidecar::config::Text::Str("v".into()));
        raw.intercept.enrich_updates = Some(true);
    })
    .await;
    for (method, path, root) in [
        (Method::PUT, "testcaseresult/create", "TestCaseResult"),
        (Method::POST, "TestCaseResult/create.js", "testcaseresult"),
        (
            Method::PUT,
            "TESTCASERESULT/CREATE.js?key=None&workspace=workspace/200&project=project/300",
            "TESTCASERESULT",
        ),
    ] {
        let body = json!({root: {"TestCase": {"_ref": "https://elsewhere/slm/webservice/v2.0/testcase/1014"}, "Verdict": "Pass"}});
        let a = send(
            method.clone(),
            &sidecar.url(&format!("{WS}/{path}")),
            &[ALICE],
            Bytes::from(body.to_string()),
        )
        .await;
        assert_eq!(
            a.headers["x-rally-sidecar-filled"], "Build,Date,Tester",
            "{method} {path}"
        );
        assert_eq!(stored(&sim, oid(&a))["Build"], "v");
    }
    // An update (enrich_updates on) fills only what is missing from the update itself.
    let a = create(&sidecar, &[ALICE], json!({"TestCaseResult": {"TestCase": "/testcase/1014", "Verdict": "Pass", "Build": "keep", "Date": "2020-01-01T00:00:00.000Z"}})).await;
    let id = oid(&a);
    let u = send(
        Method::PUT,
        &sidecar.url(&format!("{WS}/testcaseresult/{id}.js")),
        &[ALICE],
        Bytes::from(r#"{"testcaseresult": {"Verdict": "Fail"}}"#),
    )
    .await;
    assert_eq!(u.json()["OperationResult"]["Errors"], json!([]));
    assert_eq!(u.headers["x-rally-sidecar-decision"], "allowed");
    // Results/add with a new-object map.
    let add = json!({"CollectionItems": [{"Verdict": "Inconclusive", "Notes": "via add"}]});
    let r = send(
        Method::POST,
        &sidecar.url(&format!("{WS}/TestCase/1015/Results/add")),
        &[ALICE],
        Bytes::from(add.to_string()),
    )
    .await;
    assert_eq!(
        r.headers["x-rally-sidecar-filled"],
        "Build,Date,Tester",
        "{}",
        r.text()
    );
    let made = sim
        .sim
        .objects(Type::TestCaseResult, "")
        .into_iter()
        .find(|o| o["Notes"] == "via add")
        .expect("stored");
    assert_eq!(made["Build"], "v");
    let blocked = send(
        Method::POST,
        &sidecar.url(&format!("{WS}/TestCase/1090/Results/add")),
        &[ALICE],
        Bytes::from(add.to_string()),
    )
    .await;
    assert!(
        blocked.json()["OperationResult"]["Errors"][0]
            .as_str()
            .expect("e")
            .contains("archived")
    );
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn form_queries_anonymous_requests_and_bad_bodies() {
    let (sim, sidecar) = stack(|raw, _| raw.intercept.max_body = Some(4096)).await;
    // The .NET toolkit's query: POST with a form body saying _method=GET.
    let q = send(
        Method::POST,
        &sidecar.url(&format!("{WS}/testcase.js")),
        &[ALICE, ("content-type", "application/x-www-form-urlencoded")],
        Bytes::from("_method=GET&query=(FormattedID%20%3D%20TC3)&fetch=FormattedID"),
    )
    .await;
    assert_eq!(q.json()["QueryResult"]["Results"][0]["FormattedID"], "TC3");
    let f = send(
        Method::POST,
        &sidecar.url(&format!("{WS}/testcaseresult/create")),
        &[ALICE, ("content-type", "application/x-www-form-urlencoded")],
        Bytes::from("_method=GET&fetch=Build"),
    )
    .await;
    assert!(
        f.headers.get("x-rally-sidecar-decision").is_none(),
        "a form query is not intercepted"
    );
    // Anonymous: forwarded as it came, Rally challenges it.
    let anon = create(&sidecar, &[], json!({"TestCaseResult": {}})).await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
    assert!(anon.headers.contains_key("www-authenticate"));

    let cases: [(&[u8], &str); 4] = [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (
            br#"{"Defect": {"Name": "x"}}"#,
            "root key \"TestCaseResult\"",
        ),
        (br#"{"TestCaseResult": "x"}"#, "root key \"TestCaseResult\""),
    ];
    for (body, want) in cases {
        let a = send(
            Method::POST,
            &sidecar.url(&format!("{WS}/testcaseresult/create")),
            &[ALICE],
            Bytes::copy_from_slice(body),
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        let err = a.json()["CreateResult"]["Errors"][0]
            .as_str()
            .expect("error")
            .to_string();
        assert!(err.contains(want), "{err}");
    }
    let big = json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Verdict": "Pass", "Notes": "x".repeat(10_000)}});
    let a = create(&sidecar, &[ALICE], big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        a.json()["CreateResult"]["Errors"][0]
            .as_str()
            .expect("e")
            .contains("intercept.max_body (4096 bytes)")
    );
    assert_eq!(sim.sim.stats().writes_received, 0);
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn guard_lookups_are_cached_per_credential() {
    // Confirmation off: only the guard's reads are counted here.
    let (sim, sidecar) = stack(|raw, _| {
        raw.context.build = Some(rally_sidecar::config::Text::Str("b".into()));
        raw.confirm.enabled = Some(false);
    })
    .await;
    let before = sim
        .sim
        .stats()
        .requests_by_method
        .get("GET")
        .copied()
        .unwrap_or(0);
    for _ in 0..5 {
        create(&sidecar, &[ALICE], json!({"TestCaseResult": {"TestCase": "/testcase/1020", "Verdict": "Pass", "Tester": "/user/400"}})).await;
    }
    let gets = sim
        .sim
        .stats()
        .requests_by_method
        .get("GET")
        .copied()
        .unwrap_or(0)
        - before;
    // One read of the test case and one of the credential's user (who the journal says
    // wrote, and whose slots the requests count against), for five writes.
    assert_eq!(
        gets, 2,
        "one test case read and one user read for five writes by one credential"
    );
    // Concurrent misses from another credential coalesce into one read too.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let url = sidecar.url(&format!("{WS}/testcaseresult/create"));
            tokio::spawn(async move {
                send(Method::POST, &url, &[("zsessionid", "_sim_dave_readonly")], Bytes::from(json!({"TestCaseResult": {"TestCase": "/testcase/1021", "Verdict": "Pass", "Tester": "/user/403"}}).to_string())).await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(
            t.await.expect("join").status,
            StatusCode::UNAUTHORIZED,
            "dave's key is read-only: Rally refuses"
        );
    }
    let gets = sim
        .sim
        .stats()
        .requests_by_method
        .get("GET")
        .copied()
        .unwrap_or(0)
        - before;
    assert_eq!(
        gets, 4,
        "eight concurrent misses, one test case read and one user read"
    );
    sidecar.stop().await;
    sim.stop().await;
}
