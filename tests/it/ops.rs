//! Operations: the status page, `/writes`, `check`, the Kubernetes manifests.

use bytes::Bytes;
use http::{Method, StatusCode};
use rally_sidecar::config::Text;
use rally_sidecar::sim::SimOptions;
use serde_json::json;

use crate::support::{Sidecar, get, send, simulator};

const WS: &str = "/slm/webservice/v2.0";
const ALICE: (&str, &str) = ("zsessionid", "_sim_alice_key");

#[tokio::test]
async fn the_status_page_shows_a_write_just_made() {
    let sim = simulator(SimOptions::default()).await;
    let sidecar = Sidecar::start(&sim.base_url, |raw, _| {
        raw.context.build = Some(Text::Str("status-build".into()));
        raw.confirm.initial_backoff = Some("10ms".into());
        raw.confirm.readback_window = Some("300ms".into());
        raw.confirm.max_attempts = Some(0);
    })
    .await;
    let body = json!({"TestCaseResult": {"TestCase": "/testcase/1042", "Verdict": "Inconclusive"}});
    let a = send(
        Method::POST,
        &sidecar.url(&format!("{WS}/testcaseresult/create")),
        &[ALICE],
        Bytes::from(body.to_string()),
    )
    .await;
    assert_eq!(a.headers["x-rally-sidecar-confirmed"], "true");
    // One that cannot be confirmed (Rally keeps failing), to be highlighted.
    let mut f = sim.sim.faults();
    f.script = vec!["error".into()];
    sim.sim.set_faults(f).expect("faults");
    let b = send(
        Method::POST,
        &sidecar.url(&format!("{WS}/testcaseresult/create")),
        &[ALICE],
        Bytes::from(
            json!({"TestCaseResult": {"TestCase": "/testcase/1043", "Verdict": "Fail"}})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(b.headers["x-rally-sidecar-confirmed"], "false");

    let page = get(&format!("http://{}/", sidecar.admin), &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.headers["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/html")
    );
    let html = page.text();
    assert!(html.contains("<td>1042</td><td>Inconclusive</td><td>status-build</td><td>Build,Date,Tester</td><td>allowed</td><td>confirmed</td>"), "{html}");
    assert!(
        html.contains("<tr class=\"alert\">"),
        "the unconfirmed write is highlighted"
    );
    assert!(html.contains("confirmed <b>1</b>") && html.contains("unconfirmed <b>1</b>"));
    assert!(html.contains("status-build"), "the build context is shown");
    assert!(
        !html.contains("http://") || !html.contains("<script"),
        "self-contained: no scripts"
    );
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "no external assets"
    );

    let w = get(
        &format!("http://{}/writes?state=unconfirmed", sidecar.admin),
        &[],
    )
    .await
    .json();
    assert_eq!(w["counts"]["confirmed"], 1);
    assert_eq!(w["writes"].as_array().map(Vec::len), Some(1));
    assert_eq!(w["writes"][0]["test_case"], "1043");
    assert!(w["writes"][0].get("body").is_none() && w["writes"][0].get("credential").is_none());
    let bad = get(&format!("http://{}/writes?state=lost", sidecar.admin), &[]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    sidecar.stop().await;
    sim.stop().await;
}

async fn check(
    upstream: &str,
    env: &[(&str, &str)],
    projects: &[&str],
) -> (Option<i32>, serde_json::Value) {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_rally-sidecar"));
    c.args([
        "check",
        "--json",
        "--upstream",
        upstream,
        "--workspace",
        "Sim Workspace",
    ])
    .env_remove("RALLY_API_KEY")
    .env_remove("RALLY_USERNAME")
    .env_remove("RALLY_PASSWORD");
    for p in projects {
        c.args(["--project", p]);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().await.expect("run check");
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn check_says_who_can_write_where() {
    let sim = simulator(SimOptions::default()).await;
    let u = sim.base_url.clone();
    let (code, r) = check(&u, &[("RALLY_API_KEY", "_sim_alice_key")], &["Sim Project"]).await;
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["user"], "alice@example.com");
    assert_eq!(r["projects"][0]["role"], "Editor");
    assert_eq!(r["projects"][0]["can_write"], true);

    let (code, r) = check(
        &u,
        &[("RALLY_API_KEY", "_sim_alice_key")],
        &["Sim Project", "Closed Project"],
    )
    .await;
    assert_eq!(code, Some(1));
    assert_eq!(r["projects"][1]["state"], "Closed");
    assert_eq!(r["projects"][1]["can_write"], false);
    assert!(
        r["projects"][1]["why"]
            .as_str()
            .expect("why")
            .contains("Closed")
    );

    let (code, r) = check(&u, &[("RALLY_API_KEY", "_sim_bob_key")], &["Sim Project"]).await;
    assert_eq!(code, Some(1));
    assert_eq!(r["projects"][0]["role"], "Viewer");
    assert!(
        r["projects"][0]["why"]
            .as_str()
            .expect("why")
            .contains("Viewer")
    );

    let (code, r) = check(
        &u,
        &[("RALLY_API_KEY", "_sim_dave_readonly")],
        &["Sim Project"],
    )
    .await;
    assert_eq!(code, Some(4), "{r}");
    assert!(
        r["problem"]
            .as_str()
            .expect("problem")
            .contains("read-only")
    );

    let (code, _) = check(
        &u,
        &[
            ("RALLY_USERNAME", "carol@example.com"),
            ("RALLY_PASSWORD", "carol-pass"),
        ],
        &["Sim Project"],
    )
    .await;
    assert_eq!(code, Some(0), "basic auth works too");
    let (code, _) = check(&u, &[("RALLY_API_KEY", "_wrong")], &["Sim Project"]).await;
    assert_eq!(code, Some(3));
    let (code, _) = check(&u, &[], &["Sim Project"]).await;
    assert_eq!(code, Some(64), "no credential");
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let (code, r) = check(
        &dead,
        &[("RALLY_API_KEY", "_sim_alice_key")],
        &["Sim Project"],
    )
    .await;
    assert_eq!(code, Some(2), "{r}");
    sim.stop().await;
}
