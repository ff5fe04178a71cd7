//! Logs of a real process: the human format is plain text in a file or a pipe and coloured
//! only when asked (`log.color`); the JSON format is one object per line without duplicated
//! keys (checked with a parser that refuses them: `serde_json::Value` would keep one silently).

use std::collections::HashSet;
use std::fmt;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use rally_sidecar::sim::SimOptions;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::json;

use crate::process::SidecarProcess;
use crate::support::{send, simulator, temp_dir};

const WS: &str = "/slm/webservice/v2.0";

/// Any JSON value, refusing an object that names a key twice, at any depth.
struct NoDuplicates;

impl<'de> Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NoDuplicates;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<NoDuplicates, A::Error> {
                let mut seen = HashSet::new();
                while let Some(k) = m.next_key::<String>()? {
                    if !seen.insert(k.clone()) {
                        return Err(de::Error::custom(format!("duplicate key {k:?}")));
                    }
                    m.next_value::<NoDuplicates>()?;
                }
                Ok(NoDuplicates)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<NoDuplicates, A::Error> {
                while s.next_element::<NoDuplicates>()?.is_some() {}
                Ok(NoDuplicates)
            }
            fn visit_bool<E>(self, _: bool) -> Result<NoDuplicates, E> {
                Ok(NoDuplicates)
            }
            fn visit_i64<E>(self, _: i64) -> Result<NoDuplicates, E> {
                Ok(NoDuplicates)
            }
            fn visit_u64<E>(self, _: u64) -> Result<NoDuplicates, E> {
                Ok(NoDuplicates)
            }
            fn visit_f64<E>(self, _: f64) -> Result<NoDuplicates, E> {
                Ok(NoDuplicates)
            }
            fn visit_str<E>(self, _: &str) -> Result<NoDuplicates, E> {
                Ok(NoDuplicates)
            }
            fn visit_unit<E>(self) -> Result<NoDuplicates, E> {
                Ok(NoDuplicates)
            }
        }
        d.deserialize_any(V)
    }
}

#[test]
fn the_duplicate_check_can_fail() {
    assert!(serde_json::from_str::<NoDuplicates>(r#"{"a": 1, "b": {"c": [1, {"d": 2}]}}"#).is_ok());
    assert!(serde_json::from_str::<NoDuplicates>(r#"{"a": 1, "b": {"c": 1, "c": 2}}"#).is_err());
}

/// A result write through the sidecar: the busiest log lines (request span, settle fields).
async fn one_write(proxy: std::net::SocketAddr) {
    let body = json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Verdict": "Pass", "Build": "logs-1"}});
    let a = send(
        Method::POST,
        &format!("http://{proxy}{WS}/testcaseresult/create"),
        &[("zsessionid", "_sim_alice_key")],
        Bytes::from(body.to_string()),
    )
    .await;
    assert_eq!(
        a.headers["x-rally-sidecar-confirmed"],
        "true",
        "{}",
        a.text()
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_without_duplicated_keys() {
    let sim = simulator(SimOptions::default()).await;
    let proc = SidecarProcess::spawn(&sim.base_url, &[("RALLY_SIDECAR_LOG_LEVEL", "debug")]).await;
    one_write(proc.addr).await;
    let lines = proc.lines.clone();
    proc.stop().await;
    let lines = lines.lock().expect("lines").clone();
    assert!(
        lines.iter().any(|l| l.contains("write settled")),
        "the run logged the write: {lines:?}"
    );
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "no colour in JSON: {line}");
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "one object per line: {line}"
        );
        if let Err(e) = serde_json::from_str::<NoDuplicates>(line) {
            panic!("{e}: {line}");
        }
    }
    sim.stop().await;
}

/// The text without `ESC [ ... m` colour sequences.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `serve` with the human format, stderr into a file; makes one write; returns the log.
async fn human_log(color: Option<&str>) -> String {
    let sim = simulator(SimOptions::default()).await;
    let dir = temp_dir("logs");
    let log = dir.join("stderr.log");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rally-sidecar"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .args(["--upstream", &sim.base_url])
    .env("RALLY_SIDECAR_LOG_FORMAT", "human")
    .env("RALLY_SIDECAR_JOURNAL_PATH", dir.join("journal.sqlite"))
    .env_remove("RUST_LOG")
    .env_remove("NO_COLOR")
    .env_remove("RALLY_SIDECAR_LOG_COLOR")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).expect("log file"))
    .kill_on_drop(true);
    if let Some(c) = color {
        cmd.env("RALLY_SIDECAR_LOG_COLOR", c);
    }
    let mut child = cmd.spawn().expect("spawn");
    // The proxy's address, from the ready line once colour codes are taken out.
    let mut proxy = None;
    for _ in 0..600 {
        let text = strip_ansi(&std::fs::read_to_string(&log).unwrap_or_default());
        proxy = text
            .split("proxy_addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
        if proxy.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    one_write(proxy.expect("the sidecar logged its address")).await;
    assert!(crate::process::sigterm(child.id().expect("pid")));
    let _ = tokio::time::timeout(Duration::from_secs(40), child.wait()).await;
    sim.stop().await;
    std::fs::read_to_string(&log).expect("log")
}

#[tokio::test]
async fn the_human_format_colours_only_when_asked_or_on_a_terminal() {
    let plain = human_log(None).await;
    assert!(plain.contains("rally-sidecar ready"), "{plain}");
    assert!(plain.contains("rally-sidecar stopped"), "{plain}");
    assert!(
        !plain.contains('\u{1b}'),
        "a file gets plain text: {plain:?}"
    );
    let coloured = human_log(Some("always")).await;
    assert!(
        coloured.contains("\u{1b}["),
        "log.color = always: {coloured:?}"
    );
}

/// Access lines are written in batches (telemetry::logging::sink); a clean stop writes every
/// one of them, however soon after the requests it comes. Only access lines are logged here,
/// so no other line at the stop ("draining", "stopped") writes them out on its way.
#[tokio::test]
async fn a_clean_stop_writes_every_access_line() {
    let sim = simulator(SimOptions::default()).await;
    let dir = temp_dir("logs-batched");
    // The addresses are chosen here: the ready line that names them is not logged.
    let free = crate::support::free_addr;
    let (proxy, admin) = (free(), free());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rally-sidecar"))
        .args(["serve", "--listen", &proxy.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .args(["--upstream", &sim.base_url])
        .env("RALLY_SIDECAR_LOG_FORMAT", "json")
        // The request span (target rally_sidecar::proxy) carries the id into the access line.
        .env(
            "RALLY_SIDECAR_LOG_LEVEL",
            "warn,rally_sidecar::access=info,rally_sidecar::proxy=info",
        )
        .env("RALLY_SIDECAR_JOURNAL_PATH", dir.join("journal.sqlite"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    let log = tokio::spawn(async move {
        let mut all = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut all).await;
        all
    });
    let url = format!("http://{proxy}{WS}/defect?fetch=Name");
    let mut up = false;
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(proxy).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the sidecar listens");
    let n = 200;
    for i in 0..n {
        let id = format!("batched-access-{i}");
        let a = send(
            Method::GET,
            &url,
            &[("zsessionid", "_sim_alice_key"), ("x-request-id", &id)],
            Bytes::new(),
        )
        .await;
        assert_eq!(a.status, http::StatusCode::OK);
    }
    tracing::info!("{n} requests answered; stopping the sidecar at once");
    assert!(crate::process::sigterm(child.id().expect("pid")));
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()), "{status:?}");
    let log = log.await.expect("stderr read to its end");
    let access = log
        .lines()
        .filter(|l| l.contains("batched-access-") && l.contains("\"access\""))
        .count();
    assert_eq!(access, n, "one access line per request:\n{log}");
    sim.stop().await;
}

/// When whatever read the sidecar's stderr has gone away, logging fails quietly: the sidecar
/// still serves and still stops on SIGTERM (tracing-subscriber's own writer reported the
/// failed write with `eprintln!`, which panics on a closed stderr — in the signal task, so
/// SIGTERM was lost).
#[tokio::test]
async fn a_closed_stderr_does_not_stop_the_sidecar_from_stopping() {
    let sim = simulator(SimOptions::default()).await;
    let dir = temp_dir("logs-closed");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rally-sidecar"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .args(["--upstream", &sim.base_url])
    .env("RALLY_SIDECAR_LOG_FORMAT", "json")
    .env("RALLY_SIDECAR_JOURNAL_PATH", dir.join("journal.sqlite"))
    .env_remove("RUST_LOG")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut reader = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let mut proxy = None;
    while proxy.is_none() {
        let line = reader
            .next_line()
            .await
            .expect("read")
            .expect("the sidecar started");
        proxy = rally_sidecar_harness::soak::ready_addrs(&line).map(|(p, _)| p);
    }
    drop(reader);
    let proxy = proxy.expect("proxy address");
    for _ in 0..3 {
        let a = send(
            Method::GET,
            &format!("http://{proxy}{WS}/defect"),
            &[("zsessionid", "_sim_alice_key")],
            Bytes::new(),
        )
        .await;
        assert_eq!(
            a.status,
            http::StatusCode::OK,
            "still serving with nobody reading its logs"
        );
    }
    assert!(crate::process::sigterm(child.id().expect("pid")));
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait()).await;
    assert!(
        matches!(status, Ok(Ok(s)) if s.success()),
        "stopped cleanly on SIGTERM: {status:?}"
    );
    sim.stop().await;
}
