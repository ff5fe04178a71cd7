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
