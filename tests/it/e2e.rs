//! End-to-end: the real clients — pyral from PyPI and the `rally` toolkit from npm — run
//! unchanged against the simulator directly and through the sidecar, both over HTTPS with a CA
//! from `rally_sidecar::commands::cert`. The clients are installed on first use, pinned, into `.e2e/`
//! (git-ignored); a lock file serialises that between test processes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use rally_sidecar::config::{Overrides, RawConfig};
use rally_sidecar::sim::model::{FixtureResult, Fixtures};
use rally_sidecar::sim::{self, SimHandle, SimOptions};

use crate::support::{Sidecar, temp_dir};

/// pyral for the machine's Python 3.11 (1.7.0 needs 3.12; see docs/simulator.md, "Running it").
const PYRAL_311: &str = "pyral==1.6.0";
/// pyral on Python >= 3.12.
const PYRAL_312: &str = "pyral==1.7.0";
const REQUESTS: &str = "requests==2.32.3";
const NODE_RALLY: &str = "rally@2.1.3";
/// Results with Build "bulk" in the e2e simulator, to make pyral page.
pub const BULK: usize = 1_100;

pub struct Toolchain {
    /// (python interpreter, PYTHONPATH with pyral, label)
    pub pythons: Vec<(PathBuf, PathBuf, String)>,
    pub node_modules: PathBuf,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut std::process::Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Python >= 3.12 on this machine, if any (PATH first, then pyenv's versions).
fn python_312() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = ["python3.14", "python3.13", "python3.12"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Ok(home) = std::env::var("HOME")
        && let Ok(dir) = std::fs::read_dir(Path::new(&home).join(".pyenv/versions"))
    {
        let mut found: Vec<PathBuf> = dir
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin/python3"))
            .collect();
        found.sort();
        found.reverse();
        candidates.extend(found);
    }
    candidates.into_iter().find(|p| {
        std::process::Command::new(p)
            .args([
                "-c",
                "import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn pip_install(python: &Path, target: &Path, pins: &[&str]) {
    let marker = target.join(".installed");
    let want = pins.join(" ");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == want) {
        return;
    }
    let _ = std::fs::remove_dir_all(target);
    run(
        std::process::Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "--target",
            ])
            .arg(target)
            .args(pins),
        &format!("pip install {want}"),
    );
    std::fs::write(&marker, want).expect("marker");
}

/// Installs (once) and returns the pinned clients.
pub fn toolchain() -> &'static Toolchain {
    static TOOLS: OnceLock<Toolchain> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let dir = root().join(".e2e");
        std::fs::create_dir_all(&dir).expect(".e2e");
        let lock = std::fs::File::create(dir.join(".lock")).expect("lock file");
        lock.lock().expect("lock .e2e");

        let mut pythons = Vec::new();
        let py311 = dir.join("py-default");
        pip_install(Path::new("python3"), &py311, &[PYRAL_311, REQUESTS]);
        pythons.push((PathBuf::from("python3"), py311, PYRAL_311.to_string()));
        match python_312() {
            Some(py) => {
                let target = dir.join("py-3.12plus");
                pip_install(&py, &target, &[PYRAL_312, REQUESTS]);
                pythons.push((py, target, PYRAL_312.to_string()));
            }
            None => eprintln!(
                "e2e: no Python >= 3.12 found; pyral 1.7.0 is not exercised on this machine"
            ),
        }

        let node = dir.join("node");
        let marker = node.join(".installed");
        if !std::fs::read_to_string(&marker).is_ok_and(|m| m == NODE_RALLY) {
            std::fs::create_dir_all(&node).expect("node dir");
            run(
                std::process::Command::new("npm")
                    .args([
                        "install",
                        "--silent",
                        "--no-audit",
                        "--no-fund",
                        "--no-package-lock",
                        "--prefix",
                    ])
                    .arg(&node)
                    .arg(NODE_RALLY),
                "npm install rally",
            );
            std::fs::write(&marker, NODE_RALLY).expect("marker");
        }
        drop(lock);
        Toolchain {
            pythons,
            node_modules: node.join("node_modules"),
        }
    })
}

/// The simulator and the sidecar, both on HTTPS, with the CA clients must trust.
pub struct Stack {
    pub sim: SimHandle,
    pub sidecar: Sidecar,
    pub ca: PathBuf,
}

impl Stack {
    pub async fn start(
        fixtures: Fixtures,
        tweak: impl FnOnce(&mut RawConfig, &mut Overrides),
    ) -> Stack {
        let dir = temp_dir("e2e-tls");
        let certs = rally_sidecar::commands::cert::generate(&dir, &[]).expect("certs");
        let tls = rally_sidecar::tls::server_config(&certs.cert, &certs.key, true).expect("tls");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let sim = sim::start(
            listener,
            Some(tls),
            SimOptions {
                fixtures,
                ..SimOptions::default()
            },
        )
        .expect("sim");
        let (cert, key, ca) = (certs.cert.clone(), certs.key.clone(), certs.ca_cert.clone());
        let sidecar = Sidecar::start(&sim.base_url, |raw, ov| {
            ov.tls_cert = Some(cert);
            ov.tls_key = Some(key);
            raw.upstream.ca_file = Some(ca);
            tweak(raw, ov);
        })
        .await;
        Stack {
            sim,
            sidecar,
            ca: certs.ca_cert,
        }
    }

    pub fn sim_hostport(&self) -> String {
        format!("localhost:{}", self.sim.addr.port())
    }

    pub fn sidecar_hostport(&self) -> String {
        format!("localhost:{}", self.sidecar.addr.port())
    }
}

/// The default fixtures plus `BULK` results with Build "bulk".
pub fn bulk_fixtures() -> Fixtures {
    let mut f = Fixtures::default();
    f.test_case_results.extend((0..BULK).map(|i| FixtureResult {
        test_case: 1001 + (i % 50) as i64,
        build: "bulk".into(),
        date: format!("2025-01-01T00:{:02}:{:02}.000Z", (i / 60) % 60, i % 60),
        verdict: "Pass".into(),
        tester: None,
        notes: None,
    }));
    f
}

/// Runs a client script with a bounded time; returns its JSON line.
pub async fn run_script(mut cmd: tokio::process::Command, what: &str) -> serde_json::Value {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // The machine may set these globally; the scripts must trust only our CA and go direct.
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "CURL_CA_BUNDLE",
    ] {
        cmd.env_remove(var);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within 300 s"))
        .expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(last).unwrap_or(serde_json::Value::Null);
    assert!(
        out.status.success() && v["ok"] == true,
        "{what} failed:\nstdout: {stdout}\nstderr: {stderr}"
    );
    tracing::info!(
        what,
        checks = v["checks"].as_array().map(Vec::len),
        "e2e script passed"
    );
    v
}

pub fn pyral(
    python: &Path,
    pythonpath: &Path,
    script: &str,
    server: &str,
    ca: &Path,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(root().join("tests/e2e").join(script))
        .env("PYTHONPATH", pythonpath)
        .env("E2E_SERVER", server)
        .env("REQUESTS_CA_BUNDLE", ca)
        .env("NO_PROXY", "localhost,127.0.0.1");
    cmd
}

pub fn node(node_modules: &Path, script: &str, server: &str, ca: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(root().join("tests/e2e").join(script))
        .env("NODE_PATH", node_modules)
        .env("E2E_SERVER", server)
        .env("NODE_EXTRA_CA_CERTS", ca)
        .env("NO_PROXY", "localhost,127.0.0.1");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pyral_runs_unchanged_against_the_simulator_and_through_the_sidecar() {
    let tools = toolchain();
    let stack = Stack::start(bulk_fixtures(), |_, _| {}).await;
    for (python, path, label) in &tools.pythons {
        for (target, server) in [
            ("simulator", stack.sim_hostport()),
            ("sidecar", stack.sidecar_hostport()),
        ] {
            for auth in ["apikey", "basic"] {
                let mut cmd = pyral(python, path, "pyral_results.py", &server, &stack.ca);
                cmd.env("E2E_AUTH", auth)
                    .env("E2E_BULK", BULK.to_string())
                    .env("E2E_VIA", target);
                let v = run_script(cmd, &format!("{label} {auth} against the {target}")).await;
                assert!(v["checks"].as_array().is_some_and(|c| c.len() >= 12));
            }
        }
    }
    stack.sidecar.stop().await;
    stack.sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_toolkit_runs_unchanged_against_the_simulator_and_through_the_sidecar() {
    let tools = toolchain();
    let stack = Stack::start(Fixtures::default(), |_, _| {}).await;
    for (target, server) in [
        ("simulator", format!("https://{}", stack.sim_hostport())),
        ("sidecar", format!("https://{}", stack.sidecar_hostport())),
    ] {
        for auth in ["apikey", "basic"] {
            let mut cmd = node(&tools.node_modules, "node_results.js", &server, &stack.ca);
            cmd.env("E2E_AUTH", auth).env("E2E_VIA", target);
            run_script(cmd, &format!("node {auth} against the {target}")).await;
        }
    }
    // Basic auth went through the 401 challenge first (the toolkit never sends credentials
    // preemptively), so the simulator saw unauthenticated requests.
    assert!(stack.sim.sim.stats().unauthorized > 0);
    stack.sidecar.stop().await;
    stack.sim.stop().await;
}

/// Issue 4 end to end: results written with no Build, Date or Tester through the sidecar are
/// stored complete; a write to the archived TC90 surfaces the sidecar's message as an
/// ordinary Rally error in both clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_get_enrichment_and_the_guard_through_the_sidecar() {
    use rally_sidecar::config::RawRule;
    use rally_sidecar::sim::model::Type;
    let tools = toolchain();
    let stack = Stack::start(Fixtures::default(), |raw, _| {
        raw.guard.rule = Some(vec![RawRule {
            field: "c_Lifecycle".into(),
            values: vec!["Archived".into(), "Deprecated".into()],
        }]);
    })
    .await;
    let build = "e2e-build-42";
    let admin = format!("http://{}/context", stack.sidecar.admin);
    let set = crate::support::send(
        http::Method::PUT,
        &admin,
        &[crate::support::JSON],
        bytes::Bytes::from(format!("{{\"build\": \"{build}\"}}")),
    )
    .await;
    assert_eq!(set.status, http::StatusCode::OK, "{}", set.text());

    let server = stack.sidecar_hostport();
    for (python, path, label) in &tools.pythons {
        for (auth, tester) in [("apikey", "/user/400"), ("basic", "/user/402")] {
            let mut cmd = pyral(python, path, "pyral_enrich.py", &server, &stack.ca);
            cmd.env("E2E_AUTH", auth)
                .env("E2E_BUILD", build)
                .env("E2E_TESTER", tester);
            run_script(cmd, &format!("{label} {auth} enrichment")).await;
        }
    }
    for (auth, tester) in [("apikey", "/user/400"), ("basic", "/user/402")] {
        let mut cmd = node(
            &tools.node_modules,
            "node_enrich.js",
            &format!("https://{server}"),
            &stack.ca,
        );
        cmd.env("E2E_AUTH", auth)
            .env("E2E_BUILD", build)
            .env("E2E_TESTER", tester);
        run_script(cmd, &format!("node {auth} enrichment")).await;
    }
    // Checked from the simulator's side: every stored result is complete, none names TC90.
    let stored = stack.sim.sim.objects(Type::TestCaseResult, "");
    assert!(stored.len() >= 4 * tools.pythons.len());
    for r in &stored {
        assert!(r["Build"].as_str().is_some_and(|b| !b.is_empty()), "{r}");
        assert!(r["Date"].as_str().is_some_and(|d| d.ends_with('Z')), "{r}");
        assert!(r["Tester"]["_ref"].as_str().is_some(), "{r}");
        assert_ne!(
            r["TestCase"]["_ref"]
                .as_str()
                .map(|s| s.ends_with("/testcase/1090")),
            Some(true)
        );
    }
    stack.sidecar.stop().await;
    stack.sim.stop().await;
}

/// Issue 5 end to end: pyral and the Node toolkit write through the sidecar to a simulator
/// that drops 30% of creates and answers 20% with concurrency conflicts; every result they
/// were told is stored is present exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_writing_through_faults_get_each_confirmed_result_exactly_once() {
    use rally_sidecar::sim::faults::FaultConfig;
    use rally_sidecar::sim::model::Type;
    let tools = toolchain();
    let stack = Stack::start(Fixtures::default(), |raw, _| {
        raw.confirm.initial_backoff = Some("10ms".into());
        raw.confirm.max_backoff = Some("200ms".into());
        raw.confirm.readback_window = Some("700ms".into());
        raw.confirm.max_attempts = Some(6);
    })
    .await;
    stack
        .sim
        .sim
        .set_faults(FaultConfig {
            drop_writes: 0.3,
            conflict_rate: 0.2,
            ..FaultConfig::default()
        })
        .expect("faults");
    let server = stack.sidecar_hostport();
    let mut told = Vec::new();
    let mut runs = Vec::new();
    for (python, path, label) in tools.pythons.iter().take(1) {
        for auth in ["apikey", "basic"] {
            let mut cmd = pyral(python, path, "pyral_faults.py", &server, &stack.ca);
            cmd.env("E2E_AUTH", auth).env("E2E_COUNT", "15");
            runs.push(run_script(cmd, &format!("{label} {auth} through faults")).await);
        }
    }
    for auth in ["apikey", "basic"] {
        let mut cmd = node(
            &tools.node_modules,
            "node_faults.js",
            &format!("https://{server}"),
            &stack.ca,
        );
        cmd.env("E2E_AUTH", auth).env("E2E_COUNT", "15");
        runs.push(run_script(cmd, &format!("node {auth} through faults")).await);
    }
    for v in &runs {
        for b in v["confirmed"].as_array().into_iter().flatten() {
            told.push(b.as_str().unwrap_or_default().to_string());
        }
    }
    let stored = stack.sim.sim.objects(Type::TestCaseResult, "");
    // A write may still end unconfirmed (seven unlucky attempts); it is then an error in the
    // client and never a duplicate.
    let mut failed = 0;
    for v in &runs {
        for f in v["failed"].as_array().into_iter().flatten() {
            failed += 1;
            let b = f[0].as_str().unwrap_or_default();
            assert!(
                f[1].as_str()
                    .unwrap_or_default()
                    .contains("result not confirmed"),
                "{f}"
            );
            assert!(
                stored.iter().filter(|o| o["Build"] == b).count() <= 1,
                "{b}: no duplicate"
            );
        }
    }
    assert_eq!(told.len() + failed, 60);
    assert!(
        told.len() >= 50,
        "most writes were confirmed: {}",
        told.len()
    );
    for b in &told {
        let n = stored.iter().filter(|o| o["Build"] == b.as_str()).count();
        assert_eq!(n, 1, "{b} is stored exactly once");
    }
    let st = stack.sim.sim.stats();
    assert!(
        st.dropped > 0 && st.conflicts > 0,
        "the faults did happen: {st:?}"
    );
    stack.sidecar.stop().await;
    stack.sim.stop().await;
}

/// Issue 11: pyral creates the types test tooling touches besides results — attachments on a
/// result and on a test case, a task, a discussion post, an iteration and a release — against
/// the simulator, with both kinds of credentials, and reads a numeric Build back as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pyral_creates_attachments_tasks_posts_and_timeboxes_against_the_simulator() {
    use rally_sidecar::sim::model::Type;
    let tools = toolchain();
    let stack = Stack::start(Fixtures::default(), |_, _| {}).await;
    let scratch = temp_dir("e2e-attachments");
    for (python, path, label) in &tools.pythons {
        for auth in ["apikey", "basic"] {
            let mut cmd = pyral(
                python,
                path,
                "pyral_types.py",
                &stack.sim_hostport(),
                &stack.ca,
            );
            cmd.env("E2E_AUTH", auth).env("E2E_DIR", &scratch);
            let v = run_script(cmd, &format!("{label} {auth} new types")).await;
            assert!(v["checks"].as_array().is_some_and(|c| c.len() >= 12));
        }
    }
    let runs = 2 * tools.pythons.len();
    assert_eq!(
        stack.sim.sim.objects(Type::Attachment, "").len(),
        2 * runs,
        "one attachment on a result and one on a test case per run"
    );
    assert_eq!(
        stack.sim.sim.objects(Type::AttachmentContent, "").len(),
        2 * runs
    );
    stack.sidecar.stop().await;
    stack.sim.stop().await;
}
