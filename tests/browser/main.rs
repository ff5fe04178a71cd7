#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Browser tests: the status page in a real headless Chromium (Debian's `chromium`), driven by
//! playwright-core from npm. A separate target, left out of `cargo test` (it needs a browser):
//! run it with `cargo test --test browser`, or `bash tests/browser/run`, which installs
//! Chromium first when it is missing. The simulator and the sidecar run in-process here; the
//! checks, made as a person would look, are in `status_page.cjs`, which also writes the
//! screenshots docs/operations.md shows (docs/img/). playwright-core is installed, pinned, into
//! the gitignored `.e2e/browser/`; it never downloads a browser.

#[path = "../it/support.rs"]
mod support;

use std::path::PathBuf;
use std::process::Stdio;

use bytes::Bytes;
use http::Method;
use rally_sidecar::config::{RawConfig, RawRule, Text};
use rally_sidecar::sim::{SimHandle, SimOptions};
use serde_json::json;

use support::{Sidecar, send, simulator, temp_dir};

const PLAYWRIGHT: &str = "playwright-core@1.65.1";
const BUILD: &str = "nightly-118";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The browser: `$CHROMIUM`, else Debian's.
fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "no Chromium at {} — install it (apt-get install -y chromium) or set CHROMIUM; \
         bash tests/browser/run does it for you",
        path.display()
    );
    path
}

/// Installs playwright-core once (pinned, no browser download) and returns its package path.
fn playwright_core() -> PathBuf {
    let dir = root().join(".e2e").join("browser");
    let marker = dir.join(".installed");
    if !std::fs::read_to_string(&marker).is_ok_and(|m| m == PLAYWRIGHT) {
        std::fs::create_dir_all(&dir).expect(".e2e/browser");
        let out = std::process::Command::new("npm")
            .args([
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "--no-package-lock",
                "--prefix",
            ])
            .arg(&dir)
            .arg(PLAYWRIGHT)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run npm");
        assert!(
            out.status.success(),
            "npm install {PLAYWRIGHT}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&marker, PLAYWRIGHT).expect("marker");
    }
    dir.join("node_modules").join("playwright-core")
}

fn script(sim: &SimHandle, steps: &[&str]) {
    let mut f = sim.sim.faults();
    f.script = steps.iter().map(|s| s.to_string()).collect();
    sim.sim.set_faults(f).expect("faults");
}

/// One result; `build` as an `X-Rally-Build` header, else the config's build is filled.
async fn result(sidecar: &Sidecar, tc: u32, verdict: &str, build: Option<&str>) -> String {
    let body =
        json!({"TestCaseResult": {"TestCase": format!("/testcase/{tc}"), "Verdict": verdict}});
    let mut headers = vec![("zsessionid", "_sim_alice_key")];
    if let Some(b) = build {
        headers.push(("x-rally-build", b));
    }
    let a = send(
        Method::POST,
        &sidecar.url("/slm/webservice/v2.0/testcaseresult/create"),
        &headers,
        Bytes::from(body.to_string()),
    )
    .await;
    a.headers
        .get("x-rally-sidecar-confirmed")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("refused")
        .to_string()
}

/// Yesterday's build, all confirmed; today's: three confirmed, one refused (TC90 is
/// archived), one unconfirmed (Rally keeps failing), with `BUILD` filled from the config.
async fn a_day_of_builds(sim: &SimHandle, sidecar: &Sidecar) {
    for tc in [1001, 1002] {
        assert_eq!(
            result(sidecar, tc, "Pass", Some("nightly-117")).await,
            "true"
        );
    }
    for (tc, verdict) in [(1001, "Pass"), (1002, "Fail"), (1003, "Pass")] {
        assert_eq!(result(sidecar, tc, verdict, None).await, "true");
    }
    assert_eq!(result(sidecar, 1090, "Pass", None).await, "refused");
    script(sim, &["error", "error", "error", "error"]);
    assert_eq!(result(sidecar, 1004, "Blocked", None).await, "false");
    script(sim, &[]);
}

fn config(raw: &mut RawConfig) {
    raw.context.build_env = Some(rally_sidecar::config::List::Items(vec![]));
    raw.context.build = Some(Text::Str(BUILD.into()));
    raw.confirm.initial_backoff = Some("10ms".into());
    raw.confirm.max_backoff = Some("50ms".into());
    raw.confirm.readback_window = Some("800ms".into());
    raw.guard.rule = Some(vec![RawRule {
        field: "c_Lifecycle".into(),
        values: vec!["Archived".into()],
    }]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_as_a_person_sees_it() {
    let browser = chromium();
    let playwright = playwright_core();
    let sim = simulator(SimOptions::default()).await;
    let journal = temp_dir("browser").join("journal.sqlite");
    let sidecar = Sidecar::start(&sim.base_url, |raw, _| {
        config(raw);
        raw.journal.path = Some(journal);
    })
    .await;
    a_day_of_builds(&sim, &sidecar).await;

    let shots = root().join("docs").join("img");
    let out = tokio::process::Command::new("node")
        .arg(root().join("tests/browser/status_page.cjs"))
        .env("PLAYWRIGHT_CORE", &playwright)
        .env("CHROMIUM", &browser)
        .env("ADMIN_URL", format!("http://{}", sidecar.admin))
        .env("PROXY_URL", format!("http://{}", sidecar.addr))
        .env("BUILD", BUILD)
        .env("SCREENSHOTS", &shots)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the browser checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok - without reloading the page"),
        "{stdout}"
    );
    for shot in ["status-page.png", "status-page-phone.png"] {
        let png = std::fs::read(shots.join(shot)).expect("screenshot written");
        assert!(png.starts_with(b"\x89PNG"), "{shot} is a PNG");
    }
    sidecar.stop().await;
    sim.stop().await;
}
