//! What the sidecar records and prints, tried as an adversary would: a bogus key cannot
//! multiply upstream reads, a journal that cannot take a row says so on `/readyz`, and text
//! from clients and Rally cannot forge a log line or reach an operator's terminal raw.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use rally_sidecar::config::Text;
use rally_sidecar::journal::{Journal, NewWrite};
use rally_sidecar::sim::SimOptions;
use serde_json::json;

use crate::support::{Sidecar, get, logs, send, simulator, temp_dir};

const WS: &str = "/slm/webservice/v2.0";
const ALICE: (&str, &str) = ("zsessionid", "_sim_alice_key");

#[tokio::test]
async fn a_batch_under_a_bogus_key_costs_a_bounded_number_of_upstream_requests() {
    let sim = simulator(SimOptions::default()).await;
    let sidecar = Sidecar::start(&sim.base_url, |raw, _| {
        raw.context.build = Some(Text::Str("b".into()));
    })
    .await;
    // 500 results for 500 different test cases: caching each test case would not help.
    let entries: Vec<_> = (0..500)
        .map(|i| json!({"Entry": {"Path": "/testcaseresult/create", "Method": "POST",
            "Body": {"TestCaseResult": {"TestCase": format!("/testcase/{}", 200_000 + i), "Verdict": "Pass"}}}}))
        .collect();
    let before = sim.sim.stats().requests;
    let a = send(
        Method::POST,
        &sidecar.url(&format!("{WS}/batch")),
        &[("zsessionid", "_made_up_key_")],
        Bytes::from(json!({ "Batch": entries }).to_string()),
    )
    .await;
    let upstream = sim.sim.stats().requests - before;
    tracing::info!(status = %a.status, upstream, "a bogus key's batch of 500");
    assert!(
        upstream <= 5,
        "{upstream} upstream requests for one batch under a bogus key"
    );
    assert!(a.status != StatusCode::OK || a.text().contains("Errors"));
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn readyz_fails_saying_why_when_the_journal_cannot_take_a_row() {
    let sim = simulator(SimOptions::default()).await;
    let journal = temp_dir("room").join("j.sqlite");
    let path = journal.clone();
    let sidecar = Sidecar::start(&sim.base_url, |raw, _| {
        raw.journal.path = Some(path);
        raw.intercept.max_body = Some(16 * 1024);
        raw.journal.max_bytes = Some(64 * 1024);
        raw.context.build = Some(Text::Str("b".into()));
    })
    .await;
    let readyz = format!("http://{}/readyz", sidecar.admin);
    assert_eq!(get(&readyz, &[]).await.status, StatusCode::OK);
    // Rows no pruning may touch, as a backlog of writes not yet confirmed would be.
    let other = Journal::open(&journal).expect("journal");
    for n in 0..2 {
        other
            .insert(NewWrite {
                request_id: format!("held-{n}"),
                received_at: "2026-01-01T00:00:00.000Z".into(),
                credential: "fp".into(),
                operation: "create".into(),
                path: "/p".into(),
                body: "x".repeat(12 * 1024).into(),
                ..NewWrite::default()
            })
            .await
            .expect("insert");
    }
    let mut ready = get(&readyz, &[]).await;
    for _ in 0..100 {
        if ready.status != StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = get(&readyz, &[]).await;
    }
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let text = ready.text();
    assert!(
        text.contains("FAIL journal: cannot take a row") && text.contains("journal.max_bytes"),
        "{text}"
    );
    // A write that does not fit is refused before Rally sees it.
    let a = send(
        Method::POST,
        &sidecar.url(&format!("{WS}/testcaseresult/create")),
        &[ALICE],
        Bytes::from(
            json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Verdict": "Pass", "Notes": "n".repeat(14_000)}})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    assert_eq!(sim.sim.stats().writes_received, 0, "nothing was forwarded");
    sidecar.stop().await;
    sim.stop().await;
}

/// A value a client can make Rally echo in its error text (Rally quotes a reference it cannot
/// parse), carrying a would-be log line and a terminal escape sequence.
const FORGED: &str =
    "/user/1\n2026-01-01T00:00:00.000000Z  INFO rally_sidecar: forged line \u{1b}[2J";

fn no_raw_control(text: &str) {
    assert!(!text.contains('\u{1b}'), "a raw escape sequence: {text:?}");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00.000000Z  INFO rally_sidecar: forged")),
        "a forged line: {text}"
    );
}

#[tokio::test]
async fn text_from_clients_and_rally_cannot_forge_log_lines_or_reach_the_terminal_raw() {
    let sim = simulator(SimOptions::default()).await;
    let body = json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Verdict": "Pass", "Tester": FORGED}})
        .to_string();

    // JSON logs (the harness captures them): every line is one whole record.
    let sidecar = Sidecar::start(&sim.base_url, |raw, _| {
        raw.context.build = Some(Text::Str("b".into()));
    })
    .await;
    let url = sidecar.url(&format!("{WS}/testcaseresult/create"));
    let a = send(Method::POST, &url, &[ALICE], Bytes::from(body.clone())).await;
    assert!(
        a.text().contains("forged line"),
        "Rally echoed it: {}",
        a.text()
    );
    sidecar.stop().await;
    let captured = logs().contents();
    let echoed: Vec<&str> = captured
        .lines()
        .filter(|l| l.contains("forged line"))
        .collect();
    assert!(!echoed.is_empty(), "the echo was logged");
    for line in echoed {
        serde_json::from_str::<serde_json::Value>(line).expect("one JSON record per line");
    }
    no_raw_control(&captured);

    // Human logs, from the real binary, and what `journal list` prints afterwards.
    let dir = temp_dir("escape");
    let journal = dir.join("j.sqlite");
    let (port, admin) = (
        crate::support::free_addr().port(),
        crate::support::free_addr().port(),
    );
    let bin = env!("CARGO_BIN_EXE_rally-sidecar");
    let child = tokio::process::Command::new(bin)
        .args(["serve", "--upstream", &sim.base_url])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .env("RALLY_SIDECAR_LOG_FORMAT", "human")
        .env("RALLY_SIDECAR_BUILD", "b")
        .env("RALLY_SIDECAR_JOURNAL_PATH", &journal)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let health = format!("http://127.0.0.1:{admin}/readyz");
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", admin))
            .await
            .is_ok()
            && get(&health, &[]).await.status == StatusCode::OK
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("http://127.0.0.1:{port}{WS}/testcaseresult/create");
    let a = send(Method::POST, &url, &[ALICE], Bytes::from(body)).await;
    assert!(a.text().contains("forged line"));
    crate::process::sigterm(child.id().expect("pid"));
    let out = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .expect("exits")
        .expect("output");
    let human = String::from_utf8_lossy(&out.stderr).into_owned();
    let settled: Vec<&str> = human
        .lines()
        .filter(|l| l.contains("write settled"))
        .collect();
    assert_eq!(settled.len(), 1, "{human}");
    assert!(
        settled[0].contains("forged line") && settled[0].contains("\\n2026-01-01"),
        "{human}"
    );
    no_raw_control(&human);

    let listed = std::process::Command::new(bin)
        .args(["journal", "list"])
        .env("RALLY_SIDECAR_JOURNAL_PATH", &journal)
        .output()
        .expect("journal list");
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert_eq!(text.lines().count(), 1, "one row, one line: {text}");
    assert!(
        text.contains("rejected") && text.contains("forged line"),
        "{text}"
    );
    assert!(text.contains("\\u{1b}[2J"), "{text}");
    no_raw_control(&text);
    sim.stop().await;
}
