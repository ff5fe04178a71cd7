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
    assert!(html.contains("<td data-label=\"Verdict\">Inconclusive</td><td data-label=\"Build\">status-build</td><td data-label=\"State\" class=\"state-confirmed\">confirmed</td>"), "{html}");
    assert!(
        html.contains("<tr class=\"unconfirmed\">"),
        "the unconfirmed write is highlighted"
    );
    assert!(html.contains("confirmed <b>1</b>") && html.contains("unconfirmed <b>1</b>"));
    assert!(html.contains("status-build"), "the build context is shown");
    assert_eq!(
        html.matches("<script").count(),
        1,
        "one inline script, no script file"
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

#[tokio::test]
async fn check_without_projects_checks_every_project_the_user_has() {
    let sim = simulator(SimOptions::default()).await;
    let u = sim.base_url.clone();
    // Bob is a Viewer wherever he has a permission: not a yes.
    let (code, r) = check(&u, &[("RALLY_API_KEY", "_sim_bob_key")], &[]).await;
    assert_eq!(code, Some(1), "{r}");
    assert_eq!(r["projects"].as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(r["projects"][0]["project"], "Sim Project");
    assert_eq!(r["projects"][0]["can_write"], false);
    // Alice: an open project where she is Editor, and a closed one; listed both, a yes.
    let (code, r) = check(&u, &[("RALLY_API_KEY", "_sim_alice_key")], &[]).await;
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["projects"].as_array().map(Vec::len), Some(2), "{r}");
    assert!(
        r["projects"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x["can_write"] == false))
    );
    sim.stop().await;
}

#[tokio::test]
async fn sweep_dry_run_apply_idempotency_and_journal() {
    use rally_sidecar::journal::{Journal, NewWrite, State};
    use rally_sidecar::sim::model::{FixtureResult, Fixtures, Type};
    let mut f = Fixtures::default();
    f.verdicts.push("In Progress".into());
    let r = |tc: i64, build: &str, date: &str, verdict: &str| FixtureResult {
        test_case: tc,
        build: build.into(),
        date: date.into(),
        verdict: verdict.into(),
        tester: None,
        notes: None,
    };
    f.test_case_results.extend([
        r(1001, "stuck-1", "2020-01-01T00:00:00.000Z", "In Progress"),
        r(1002, "stuck-2", "2021-06-01T00:00:00.000Z", "In Progress"),
        r(1003, "recent", "2099-01-01T00:00:00.000Z", "In Progress"),
        r(1004, "done", "2020-01-01T00:00:00.000Z", "Pass"),
        r(1091, "closed", "2020-01-01T00:00:00.000Z", "In Progress"),
        r(1005, "landed-j", "2020-02-02T00:00:00.000Z", "Pass"),
    ]);
    let sim = simulator(SimOptions {
        fixtures: f,
        ..SimOptions::default()
    })
    .await;
    let dir = crate::support::temp_dir("sweep");
    let journal_path = dir.join("j.sqlite");
    let j = Journal::open(&journal_path).expect("journal");
    // An unconfirmed write that did land, and one that did not.
    for (build, verdict) in [("landed-j", "Pass"), ("never-landed", "Pass")] {
        let body = json!({"TestCaseResult": {"TestCase": "/testcase/1005", "Build": build, "Date": "2020-02-02T00:00:00.000Z", "Verdict": verdict}});
        let id = j
            .insert(NewWrite {
                request_id: "r".into(),
                received_at: "2020-02-02T00:00:00.000Z".into(),
                credential: "fp".into(),
                operation: "create".into(),
                path: "/p".into(),
                body: body.to_string().into(),
                ..NewWrite::default()
            })
            .await
            .expect("insert");
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
    }
    let mut raw = rally_sidecar::config::RawConfig::default();
    raw.sweep.stuck_verdicts = Some(rally_sidecar::config::List::Items(vec![
        "In Progress".into(),
    ]));
    raw.sweep.older_than = Some("1h".into());
    raw.scope.workspace = Some("Sim Workspace".into());
    raw.scope.projects = Some(rally_sidecar::config::List::Items(vec![
        "Sim Project".into(),
    ]));
    raw.journal.path = Some(journal_path.clone());
    let ov = rally_sidecar::config::Overrides {
        upstream: Some(sim.base_url.clone()),
        ..Default::default()
    };
    let cfg = std::sync::Arc::new(rally_sidecar::config::Config::validate(&raw, &ov).expect("cfg"));
    let verdict_of = |build: &str| {
        sim.sim
            .objects(Type::TestCaseResult, "")
            .into_iter()
            .find(|o| o["Build"] == build)
            .map(|o| (o["Verdict"].clone(), o["Notes"].clone()))
            .expect("stored")
    };

    let now = time::OffsetDateTime::now_utc();
    let dry =
        rally_sidecar::commands::sweep::run(cfg.clone(), Some(&j), "_sim_alice_key", false, now)
            .await
            .expect("dry run");
    let planned: Vec<_> = dry
        .actions
        .iter()
        .map(|a| a.build.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        planned,
        vec!["stuck-1", "stuck-2"],
        "old and stuck, in the scope's project only"
    );
    assert!(dry.outcomes.is_empty());
    assert_eq!(
        verdict_of("stuck-1").0,
        "In Progress",
        "a dry run changes nothing"
    );
    assert_eq!(
        dry.journal_reconfirmed.len(),
        1,
        "the write that landed is re-confirmed first"
    );
    assert_eq!(dry.journal_unresolved.len(), 1);

    let applied =
        rally_sidecar::commands::sweep::run(cfg.clone(), Some(&j), "_sim_alice_key", true, now)
            .await
            .expect("apply");
    assert_eq!(
        applied
            .outcomes
            .iter()
            .filter(|(_, o)| o == "applied")
            .count(),
        2,
        "{:?}",
        applied.outcomes
    );
    let (v, notes) = verdict_of("stuck-1");
    assert_eq!(v, "Blocked");
    let notes = notes.as_str().expect("notes").to_string();
    assert!(
        notes.starts_with("[rally-sidecar sweep ")
            && notes
                .contains("Verdict In Progress -> Blocked: still In Progress after more than 1h"),
        "{notes}"
    );
    assert_eq!(verdict_of("recent").0, "In Progress");
    assert_eq!(verdict_of("done").0, "Pass");

    let again =
        rally_sidecar::commands::sweep::run(cfg.clone(), Some(&j), "_sim_alice_key", true, now)
            .await
            .expect("again");
    assert!(
        again.actions.is_empty() && again.outcomes.is_empty(),
        "two runs, one change"
    );
    assert_eq!(
        verdict_of("stuck-1")
            .1
            .as_str()
            .map(|n| n.matches("rally-sidecar sweep").count()),
        Some(1),
        "one audit line"
    );

    // The CLI: dry-run by default, JSON plan.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rally-sidecar"))
        .args(["sweep", "--once", "--json", "--upstream", &sim.base_url])
        .env("RALLY_API_KEY", "_sim_alice_key")
        .env("RALLY_SIDECAR_SWEEP_STUCK_VERDICTS", "Pass")
        .env("RALLY_SIDECAR_SWEEP_OLDER_THAN", "1h")
        .env("RALLY_SIDECAR_JOURNAL_PATH", dir.join("cli.sqlite"))
        .output()
        .await
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["dry_run"], true);
    assert!(report["actions"].as_array().is_some_and(|a| a.len() >= 2));
    assert_eq!(verdict_of("done").0, "Pass", "still nothing changed");
    sim.stop().await;
}

/// The validator, installed pinned from PyPI into .e2e/ (it bundles the Kubernetes schemas).
const K8S_VALIDATE: &str = "kubernetes-validate==1.37.0";

fn k8s_validator() -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".e2e");
    std::fs::create_dir_all(&dir).expect(".e2e");
    let lock = std::fs::File::create(dir.join(".k8s-lock")).expect("lock");
    lock.lock().expect("lock");
    let target = dir.join("k8s");
    let marker = target.join(".installed");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(K8S_VALIDATE) {
        let _ = std::fs::remove_dir_all(&target);
        let out = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "--target",
            ])
            .arg(&target)
            .arg(K8S_VALIDATE)
            .output()
            .expect("pip");
        assert!(
            out.status.success(),
            "pip install {K8S_VALIDATE}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&marker, K8S_VALIDATE).expect("marker");
    }
    target
}

#[tokio::test]
async fn kubernetes_manifests_validate_against_the_schemas() {
    let lib = tokio::task::spawn_blocking(k8s_validator)
        .await
        .expect("install");
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let manifests: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("deploy/kubernetes"))
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    assert!(manifests.len() >= 6);
    let validate = |files: Vec<std::path::PathBuf>| {
        let lib = lib.clone();
        async move {
            tokio::process::Command::new("python3")
                .args(["-m", "kubernetes_validate", "--strict"])
                .args(&files)
                .env("PYTHONPATH", &lib)
                .output()
                .await
                .expect("validate")
        }
    };
    let out = validate(manifests).await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The validator has teeth: a misspelt field fails strict validation.
    let broken = crate::support::temp_dir("k8s").join("broken.yaml");
    let text = std::fs::read_to_string(root.join("deploy/kubernetes/deployment.yaml"))
        .expect("read")
        .replace("readinessProbe:", "readinesProbe:");
    std::fs::write(&broken, text).expect("write");
    assert!(
        !validate(vec![broken]).await.status.success(),
        "a misspelt field must fail"
    );

    // Structure, and the ConfigMap's config parsed by the sidecar itself.
    let toml_out = crate::support::temp_dir("k8s").join("config.toml");
    let out = tokio::process::Command::new("python3")
        .arg(root.join("tests/e2e/k8s_check.py"))
        .arg(root.join("deploy/kubernetes"))
        .arg(&toml_out)
        .env("PYTHONPATH", &lib)
        .output()
        .await
        .expect("check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let raw = rally_sidecar::config::RawConfig::from_toml(
        &std::fs::read_to_string(&toml_out).expect("toml"),
    )
    .expect("the ConfigMap's config parses");
    assert!(raw.listen.tls_cert.is_some());
    assert_eq!(raw.admin.listen.as_deref(), Some("0.0.0.0:9464"));
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_that_exist() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/grafana-dashboard.json"
    ))
    .expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    // Label families appear in the exposition once they have a sample: give each one.
    use rally_sidecar::telemetry::metrics::*;
    let m = Metrics::new();
    m.record_request(&http::Method::GET, StatusCode::OK);
    m.bytes
        .get_or_create(&DirectionLabels {
            direction: Direction::Response,
        })
        .inc();
    m.proxy_errors
        .get_or_create(&ErrorLabels { kind: "x".into() })
        .inc();
    m.intercepted
        .get_or_create(&OpLabels {
            operation: "create".into(),
        })
        .inc();
    m.filled
        .get_or_create(&FillLabels {
            field: "Build".into(),
            source: "header".into(),
        })
        .inc();
    m.blocked
        .get_or_create(&ReasonLabels { reason: "x".into() })
        .inc();
    m.shadow
        .get_or_create(&ShadowLabels {
            decision: "x".into(),
        })
        .inc();
    m.confirmations
        .get_or_create(&OutcomeLabels {
            outcome: "confirmed".into(),
        })
        .inc();
    let exposed = m.encode();
    let families: Vec<&str> = exposed
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut seen = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("rally_sidecar_"))
            {
                let base = ["_bucket", "_sum", "_count", "_total"]
                    .iter()
                    .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
                assert!(
                    families.contains(&base),
                    "{name} (in {:?}) is not a metric the sidecar exports: {families:?}",
                    panel["title"]
                );
                seen += 1;
            }
        }
    }
    assert!(seen >= 15, "the dashboard covers the metrics: {seen}");
}

#[tokio::test]
async fn the_periodic_sweep_runs_inside_serve() {
    use rally_sidecar::sim::model::{FixtureResult, Fixtures, Type};
    let mut f = Fixtures::default();
    f.verdicts.push("In Progress".into());
    f.test_case_results.push(FixtureResult {
        test_case: 1006,
        build: "periodic".into(),
        date: "2020-01-01T00:00:00.000Z".into(),
        verdict: "In Progress".into(),
        tester: None,
        notes: None,
    });
    let sim = simulator(SimOptions {
        fixtures: f,
        ..SimOptions::default()
    })
    .await;
    let proc = crate::process::SidecarProcess::spawn(
        &sim.base_url,
        &[
            ("RALLY_API_KEY", "_sim_alice_key"),
            ("RALLY_SIDECAR_SWEEP_STUCK_VERDICTS", "In Progress"),
            ("RALLY_SIDECAR_SWEEP_INTERVAL", "200ms"),
            ("RALLY_SIDECAR_SWEEP_APPLY", "true"),
        ],
    )
    .await;
    let swept = || {
        sim.sim
            .objects(Type::TestCaseResult, "")
            .into_iter()
            .any(|o| o["Build"] == "periodic" && o["Verdict"] == "Blocked")
    };
    // Bounded wait: the first sweep runs one interval after start.
    for _ in 0..100 {
        if swept() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        swept(),
        "the periodic sweep changed the stuck result; logs:\n{}",
        proc.log_text()
    );
    assert!(proc.log_text().contains("sweep done"));
    proc.stop().await;
    sim.stop().await;
}
