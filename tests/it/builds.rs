//! A build's verdict on a real run: writes through the sidecar to the simulator (confirmed,
//! adopted after a lost answer, unconfirmed, refused for an archived test case), then the same
//! verdict from `GET /builds/<B>`, from `rally-sidecar summary` in every format with its exit
//! code, and on the status page with where the build came from.

use bytes::Bytes;
use http::{Method, StatusCode};
use rally_sidecar::config::{RawConfig, RawRule, Text};
use rally_sidecar::sim::{SimHandle, SimOptions};
use serde_json::{Value, json};

use crate::support::{Answer, Sidecar, get, send, simulator, temp_dir};

const WS: &str = "/slm/webservice/v2.0";
const ALICE: (&str, &str) = ("zsessionid", "_sim_alice_key");

fn config(raw: &mut RawConfig, journal: std::path::PathBuf) {
    raw.journal.path = Some(journal);
    raw.context.build_env = Some(rally_sidecar::config::List::Items(vec![]));
    raw.context.build = Some(Text::Str("ci-42".into()));
    raw.confirm.initial_backoff = Some("10ms".into());
    raw.confirm.max_backoff = Some("50ms".into());
    raw.confirm.readback_window = Some("800ms".into());
    raw.guard.rule = Some(vec![RawRule {
        field: "c_Lifecycle".into(),
        values: vec!["Archived".into()],
    }]);
}

fn script(sim: &SimHandle, steps: &[&str]) {
    let mut f = sim.sim.faults();
    f.script = steps.iter().map(|s| s.to_string()).collect();
    sim.sim.set_faults(f).expect("faults");
}

async fn result(sidecar: &Sidecar, tc: u32, verdict: &str, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![ALICE];
    headers.extend_from_slice(extra);
    let body =
        json!({"TestCaseResult": {"TestCase": format!("/testcase/{tc}"), "Verdict": verdict}});
    send(
        Method::POST,
        &sidecar.url(&format!("{WS}/testcaseresult/create")),
        &headers,
        Bytes::from(body.to_string()),
    )
    .await
}

/// `rally-sidecar summary` against the journal file: (exit code, stdout).
async fn summary(journal: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rally-sidecar"))
        .arg("summary")
        .args(args)
        .env("RALLY_SIDECAR_JOURNAL_PATH", journal)
        .env("RALLY_SIDECAR_CONTEXT_BUILD_ENV", "")
        .env_remove("RALLY_SIDECAR_CONFIG")
        .env_remove("RALLY_SIDECAR_BUILD")
        .output()
        .await
        .expect("run summary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Writes one build's worth of results: TC1 confirmed, TC2 adopted after a lost answer, TC3
/// unconfirmed (Rally keeps failing), TC90 refused (archived); and build `green` via the
/// header, all confirmed.
async fn a_run(sim: &SimHandle, sidecar: &Sidecar) {
    let a = result(sidecar, 1001, "Pass", &[]).await;
    assert_eq!(
        a.headers["x-rally-sidecar-confirmed"],
        "true",
        "{}",
        a.text()
    );
    script(sim, &["gateway_timeout"]);
    let b = result(sidecar, 1002, "Pass", &[]).await;
    assert_eq!(
        b.headers["x-rally-sidecar-confirmed"],
        "true",
        "{}",
        b.text()
    );
    script(sim, &["error", "error", "error", "error"]);
    let c = result(sidecar, 1003, "Fail", &[]).await;
    assert_eq!(
        c.headers["x-rally-sidecar-confirmed"],
        "false",
        "{}",
        c.text()
    );
    script(sim, &[]);
    let d = result(sidecar, 1090, "Pass", &[]).await;
    assert!(d.text().contains("TC90 is archived"), "{}", d.text());
    let e = result(sidecar, 1004, "Pass", &[("x-rally-build", "green")]).await;
    assert_eq!(
        e.headers["x-rally-sidecar-confirmed"],
        "true",
        "{}",
        e.text()
    );
}

#[tokio::test]
async fn a_builds_verdict_from_the_admin_listener_and_the_summary_command() {
    let sim = simulator(SimOptions::default()).await;
    let journal = temp_dir("builds").join("journal.sqlite");
    let j = journal.clone();
    let sidecar = Sidecar::start(&sim.base_url, |raw, _| config(raw, j)).await;
    a_run(&sim, &sidecar).await;

    let all = get(&format!("http://{}/builds", sidecar.admin), &[])
        .await
        .json();
    assert_eq!(all["builds"][0]["build"], "green", "newest build first");
    assert_eq!(all["builds"][0]["verdict"], "all_confirmed");
    assert_eq!(all["builds"][1]["build"], "ci-42");

    let one = get(&format!("http://{}/builds/ci-42", sidecar.admin), &[]).await;
    assert_eq!(one.status, StatusCode::OK);
    let v = one.json();
    tracing::info!(%v, "GET /builds/ci-42");
    assert_eq!(
        (v["verdict"].clone(), v["exit_code"].clone()),
        (json!("refused"), json!(2))
    );
    let c = &v["counts"];
    assert_eq!(
        [
            &c["total"],
            &c["confirmed"],
            &c["adopted"],
            &c["unconfirmed"],
            &c["refused"],
            &c["pending"]
        ],
        [
            &json!(4),
            &json!(2),
            &json!(1),
            &json!(1),
            &json!(1),
            &json!(0)
        ],
        "{c}"
    );
    let refused: Vec<&Value> = v["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter(|p| p["state"] == "refused")
        .collect();
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("TC90 is archived")),
        "the refusal's reason: {}",
        refused[0]
    );
    let names: Vec<&str> = v["test_cases"]
        .as_array()
        .expect("test cases")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["TC1", "TC2", "TC3", "TC90"],
        "FormattedIDs, not ObjectIDs"
    );
    let missing = get(&format!("http://{}/builds/nope", sidecar.admin), &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["verdict"], "empty");

    // The command reads the same journal, beside the running sidecar, and agrees.
    let (code, out) = summary(&journal, &["--build", "ci-42", "--format", "json"]).await;
    assert_eq!(code, Some(2), "refused: {out}");
    let s: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(s["counts"], v["counts"]);
    let (code, md) = summary(&journal, &["--build", "ci-42", "--format", "markdown"]).await;
    assert_eq!(code, Some(2));
    assert!(
        md.starts_with("### ❌ Rally results of build ci-42: 2 of 4 results"),
        "{md}"
    );
    assert!(md.contains("TC90 is archived"), "{md}");
    let (_, xml) = summary(&journal, &["--build", "ci-42", "--format", "junit"]).await;
    assert_eq!(xml.matches("<testcase ").count(), 4, "{xml}");
    assert_eq!(
        xml.matches("<failure ").count(),
        2,
        "refused and unconfirmed fail: {xml}"
    );
    let (code, text) = summary(&journal, &["--build", "green"]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.starts_with("build green: its one result confirmed (exit 0)"),
        "{text}"
    );
    assert_eq!(summary(&journal, &["--build", "nope"]).await.0, Some(5));
    let (code, _) = summary(&temp_dir("none").join("absent.sqlite"), &["--build", "x"]).await;
    assert_eq!(code, Some(1), "no journal there");

    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn the_status_page_shows_builds_refusals_and_where_the_build_comes_from() {
    let sim = simulator(SimOptions::default()).await;
    let journal = temp_dir("builds-page").join("journal.sqlite");
    let j = journal.clone();
    let sidecar = Sidecar::start(&sim.base_url, |raw, _| config(raw, j)).await;
    a_run(&sim, &sidecar).await;

    let page = get(&format!("http://{}/", sidecar.admin), &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let csp = page.headers["content-security-policy"]
        .to_str()
        .expect("csp");
    assert!(
        csp.starts_with("default-src 'none'; script-src 'sha256-"),
        "{csp}"
    );
    let html = page.text();
    assert!(
        html.contains("Writes without a Build get <b>ci-42</b>, from config context.build."),
        "{html}"
    );
    let ci = html
        .lines()
        .find(|l| l.contains("<a href=\"builds/ci-42\">ci-42</a>"))
        .expect("the build's row");
    assert!(ci.contains("class=\"verdict bad\">refused</td>"), "{ci}");
    assert!(
        ci.contains("data-label=\"Written\" class=\"num\">4</td>"),
        "{ci}"
    );
    let refused = html
        .lines()
        .find(|l| l.starts_with("<tr class=\"refused\">"))
        .expect("the refused write is listed");
    assert!(refused.contains("TC90 is archived"), "{refused}");
    assert!(
        refused.contains("<b>TC90</b>"),
        "by its FormattedID: {refused}"
    );
    assert!(html.contains("<tr class=\"unconfirmed\">"), "highlighted");
    assert!(html.contains("<svg id=\"latency\""), "the latency picture");

    let before = get(&format!("http://{}/status.json", sidecar.admin), &[])
        .await
        .json();
    assert_eq!(before["context"]["source"], "config context.build");
    assert_eq!(before["builds"][1]["refused"], 1);
    let samples = before["latencies"]["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 4, "the settled writes: {samples:?}");
    assert_eq!(samples[2]["state"], "unconfirmed");
    assert!(
        samples
            .iter()
            .all(|s| s["ms"].as_f64().is_some_and(|ms| ms >= 0.0))
    );
    result(&sidecar, 1005, "Pass", &[]).await;
    let after = get(&format!("http://{}/status.json", sidecar.admin), &[])
        .await
        .json();
    assert_ne!(
        before["version"], after["version"],
        "a new write changes the version the page polls"
    );
    assert_eq!(
        after["builds"][0]["build"], "ci-42",
        "the build written to last comes first"
    );
    sidecar.stop().await;
    sim.stop().await;
}
