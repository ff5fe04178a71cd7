//! Issue 11, items 6 and 7 over HTTP: basic-auth sessions with Rally's three cookies and a
//! UUID-like security token, an API key sent with a session cookie answered `Invalid key`, and
//! the `realistic` fault profile (default read lag stays 0).

use bytes::Bytes;
use http::{Method, StatusCode};
use rally_sidecar::sim::SimOptions;
use serde_json::{Value, json};

use super::{ALICE, WS, create_body};
use crate::support::{get, send, simulator};

fn basic() -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("carol@example.com:carol-pass")
    )
}

#[tokio::test]
async fn basic_auth_sets_rallys_cookies_and_a_uuid_token() {
    let sim = simulator(SimOptions::default()).await;
    let auth = get(
        &format!("{}{WS}/security/authorize", sim.base_url),
        &[("authorization", &basic())],
    )
    .await;
    let mut names: Vec<String> = auth
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| c.split('=').next().map(str::to_string))
        .collect();
    names.sort();
    assert_eq!(names, ["JSESSIONID", "SUBBUCKETID", "ZSESSIONID"]);
    let token = auth.json()["OperationResult"]["SecurityToken"]
        .as_str()
        .expect("token")
        .to_string();
    assert!(
        uuid::Uuid::parse_str(&token).is_ok(),
        "UUID-like token: {token}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn an_api_key_with_a_session_cookie_is_answered_invalid_key() {
    let sim = simulator(SimOptions::default()).await;
    let base = format!("{}{WS}", sim.base_url);
    let auth = get(
        &format!("{base}/security/authorize"),
        &[("authorization", &basic())],
    )
    .await;
    let cookies: Vec<String> = auth
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| c.split(';').next().map(str::to_string))
        .collect();
    let cookie = cookies.join("; ");
    let url = format!("{base}/testcaseresult/create?key=None");
    let with_cookie = [ALICE, ("cookie", cookie.as_str())];
    let refused = send(
        Method::POST,
        &url,
        &with_cookie,
        create_body("/testcase/1001", "k"),
    )
    .await;
    assert_eq!(refused.status, StatusCode::OK);
    assert_eq!(
        refused.json()["CreateResult"]["Errors"][0],
        "Not authorized to perform action: Invalid key"
    );
    assert_eq!(
        get(&format!("{base}/testcase/1001"), &with_cookie)
            .await
            .status,
        StatusCode::OK,
        "reads still work"
    );
    let alone = send(
        Method::POST,
        &url,
        &[ALICE],
        create_body("/testcase/1001", "k"),
    )
    .await
    .json();
    assert_eq!(alone["CreateResult"]["Errors"], json!([]), "{alone}");

    let off = send(
        Method::POST,
        &format!("{}/__sim/switches", sim.base_url),
        &[],
        Bytes::from(json!({"session_cookie_beats_api_key": false}).to_string()),
    )
    .await;
    assert_eq!(off.status, StatusCode::OK);
    let allowed = send(
        Method::POST,
        &url,
        &with_cookie,
        create_body("/testcase/1001", "k"),
    )
    .await
    .json();
    assert_eq!(allowed["CreateResult"]["Errors"], json!([]), "{allowed}");
    sim.stop().await;
}

async fn faults(base_url: &str, patch: Option<Value>) -> (StatusCode, Value) {
    let url = format!("{base_url}/__sim/faults");
    let a = match patch {
        None => get(&url, &[]).await,
        Some(p) => send(Method::POST, &url, &[], Bytes::from(p.to_string())).await,
    };
    (a.status, a.json())
}

#[tokio::test]
async fn the_realistic_profile_is_the_soaks_faults_with_reads_lagging_up_to_8s() {
    let sim = simulator(SimOptions::default()).await;
    let base = format!("{}{WS}", sim.base_url);
    let (_, default) = faults(&sim.base_url, None).await;
    assert_eq!(default["read_lag"], Value::Null, "no read lag unless asked");
    let created = send(
        Method::POST,
        &format!("{base}/testcaseresult/create"),
        &[ALICE],
        create_body("/testcase/1001", "now"),
    )
    .await
    .json();
    let oid = created["CreateResult"]["Object"]["ObjectID"]
        .as_i64()
        .expect("oid");
    assert_eq!(
        get(&format!("{base}/testcaseresult/{oid}"), &[ALICE])
            .await
            .json()["TestCaseResult"]["Build"],
        "now",
        "readable at once by default"
    );

    let (status, realistic) = faults(&sim.base_url, Some(json!({"profile": "realistic"}))).await;
    assert_eq!(status, StatusCode::OK);
    // The soak's rates (src/soak.rs, soak_faults) and Broadcom's "up to 8 s".
    for (knob, want) in [
        ("drop_writes", json!(0.15)),
        ("conflict_rate", json!(0.05)),
        ("error_rate", json!(0.05)),
        ("gateway_timeout_rate", json!(0.02)),
        ("reset_rate", json!(0.01)),
        ("invalid_key_rate", json!(0.0)),
        ("read_lag", json!("0s..8s")),
    ] {
        assert_eq!(realistic[knob], want, "{knob}");
    }

    // Refined: only the read lag left on, so the next result is not readable yet.
    let (_, lag_only) = faults(
        &sim.base_url,
        Some(json!({"profile": "realistic", "drop_writes": 0.0, "conflict_rate": 0.0, "error_rate": 0.0,
                    "gateway_timeout_rate": 0.0, "reset_rate": 0.0})),
    )
    .await;
    assert_eq!(lag_only["read_lag"], "0s..8s");
    let lagged = send(
        Method::POST,
        &format!("{base}/testcaseresult/create"),
        &[ALICE],
        create_body("/testcase/1001", "later"),
    )
    .await
    .json();
    let oid = lagged["CreateResult"]["Object"]["ObjectID"]
        .as_i64()
        .expect("oid");
    assert_eq!(
        get(&format!("{base}/testcaseresult/{oid}"), &[ALICE])
            .await
            .json()["OperationResult"]["Errors"][0],
        "Cannot find object to read",
        "a read right after the write lags it"
    );

    let (status, _) = faults(&sim.base_url, Some(json!({"profile": "chaos"}))).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unknown profiles are refused"
    );
    sim.stop().await;
}
