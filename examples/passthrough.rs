//! Pass-through load run: the same keep-alive load against a fixed local origin directly and
//! through a rally-sidecar process, in one run, so the two can be compared as ratios.
//!
//!     cargo build --release && cargo run --release --example passthrough -- \
//!         [--seconds 10] [--connections 32] [--body 100] [--sidecar [name=]PATH ...] \
//!         [--target URL ...] [--requests N] [--no-direct]
//!
//! `--body N` sets the origin's response size in bytes (100 = a small GET, 102400 = 100 KB).
//! `--sidecar` may be given several times (e.g. `before=/tmp/old after=target/release/rally-sidecar`)
//! to compare builds side by side in one run; each is started as its own process.
//! `--rounds R` measures every target R times, interleaved, and reports medians (a shared,
//! noisy machine). `--requests N` sends exactly N requests per target (no warm-up) instead of a timed run: with
//! the sidecar under `valgrind --tool=callgrind` (bench/profile-passthrough.sh) two runs with
//! different N give instructions per request. Sidecars are stopped with SIGTERM, so a profiler
//! writes its output and the access log is flushed.
//! `--json` makes the origin answer Rally-like JSON whose refs the sidecar rewrites.
//! Extra `--target URL` or `--target name=URL` values (e.g. an nginx in front of the same
//! origin, see bench/compare-nginx.sh) are measured too;
//! `{origin}` in a target is replaced by the origin's address; `--cpu-of name=PID[,PID...]` names
//! the processes whose CPU time a target costs (a sidecar's own is always measured), printed as
//! CPU µs per request. Results print as a Markdown table.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::zombie_processes
)]

use std::time::{Duration, Instant};

use rally_sidecar_harness::load::{Until, cpu_seconds, load, origin_body, start_origin};

struct Args {
    seconds: u64,
    connections: usize,
    body: usize,
    json: bool,
    sidecars: Vec<(String, String)>,
    requests: Option<u64>,
    rounds: usize,
    direct: bool,
    sidecar_env: Vec<(String, String)>,
    targets: Vec<String>,
    /// Target name → processes whose CPU time is its cost (e.g. nginx's workers).
    cpu_of: std::collections::HashMap<String, Vec<u32>>,
    origin_addr: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 10,
        connections: 32,
        body: 100,
        json: false,
        sidecars: vec![],
        requests: None,
        rounds: 1,
        direct: true,
        sidecar_env: vec![],
        targets: vec![],
        cpu_of: Default::default(),
        origin_addr: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--seconds" => a.seconds = it.next().unwrap().parse().unwrap(),
            "--connections" => a.connections = it.next().unwrap().parse().unwrap(),
            "--body" => a.body = it.next().unwrap().parse().unwrap(),
            "--json" => a.json = true,
            "--sidecar" => {
                let v = it.next().unwrap();
                let named = v
                    .split_once('=')
                    .map(|(n, p)| (n.to_string(), p.to_string()));
                a.sidecars
                    .push(named.unwrap_or_else(|| ("rally-sidecar".to_string(), v)));
            }
            "--requests" => a.requests = Some(it.next().unwrap().parse().unwrap()),
            "--no-direct" => a.direct = false,
            "--rounds" => a.rounds = it.next().unwrap().parse::<usize>().unwrap().max(1),
            "--sidecar-env" => {
                let kv = it.next().unwrap();
                let (k, v) = kv.split_once('=').unwrap();
                a.sidecar_env.push((k.into(), v.into()));
            }
            "--target" => a.targets.push(it.next().unwrap()),
            "--cpu-of" => {
                let v = it.next().unwrap();
                let (name, pids) = v.split_once('=').unwrap();
                let pids = pids.split(',').filter_map(|p| p.trim().parse::<u32>().ok());
                a.cpu_of.entry(name.into()).or_default().extend(pids);
            }
            "--origin" => a.origin_addr = Some(it.next().unwrap()),
            other => panic!("unknown flag {other}"),
        }
    }
    if a.sidecars.is_empty() {
        a.sidecars.push((
            "rally-sidecar".into(),
            "target/release/rally-sidecar".into(),
        ));
    }
    a
}

/// A sidecar process under load.
struct Sidecar {
    name: String,
    child: std::process::Child,
    addr: String,
    /// The thread copying its stderr to [`log_path`]; ends when the process does.
    drain: std::thread::JoinHandle<()>,
}

fn spawn_sidecar(name: &str, bin: &str, upstream: &str, env: &[(String, String)]) -> Sidecar {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--upstream",
        upstream,
    ])
    .env("RALLY_SIDECAR_LOG_FORMAT", "json")
    .env(
        "RALLY_SIDECAR_JOURNAL_PATH",
        std::env::temp_dir().join(format!("rally-sidecar-passthrough-{name}.sqlite")),
    )
    .env("RALLY_SIDECAR_LOG_LEVEL", "warn,rally_sidecar=info")
    .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (run cargo build --release first)"));
    let stderr = child.stderr.take().unwrap();
    let mut reader = std::io::BufReader::new(stderr);
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "sidecar exited");
        // The ready line names the listeners: JSON, or `proxy_addr=...` in the human format.
        let human = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("proxy_addr="))
            .filter(|_| line.contains("admin_addr="))
            .map(str::to_string);
        let json = rally_sidecar_harness::soak::ready_addrs(&line).map(|(p, _)| p.to_string());
        if let Some(addr) = json.or(human) {
            // Keep draining stderr so the sidecar never blocks on a full pipe: into a file, in
            // large reads (the load generator shares a CPU with this thread), so the access
            // lines can be counted after the stop.
            let log = log_path(name);
            let drain = std::thread::spawn(move || {
                let mut file = std::fs::File::create(log).unwrap();
                let _ = std::io::copy(&mut reader, &mut file);
            });
            return Sidecar {
                name: name.to_string(),
                child,
                addr,
                drain,
            };
        }
    }
}

/// Where a sidecar's stderr (its logs) is kept.
fn log_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("rally-sidecar-passthrough-{name}.log"))
}

/// Stops a sidecar the way an orchestrator does (SIGTERM), so it drains, flushes its logs and,
/// under a profiler, writes the profile (killed if still running after 120 s); then counts its
/// access lines.
fn stop(mut s: Sidecar) -> usize {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = s.child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Ok(None) = s.child.try_wait() {
        let _ = s.child.kill();
        let _ = s.child.wait();
    }
    let _ = s.drain.join();
    std::fs::read_to_string(log_path(&s.name))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("rally_sidecar::access"))
        .count()
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The origin's address must be known to build a JSON body naming it; bind first.
    let probe =
        std::net::TcpListener::bind(a.origin_addr.as_deref().unwrap_or("127.0.0.1:0")).unwrap();
    let origin_addr = probe.local_addr().unwrap();
    drop(probe);
    let origin_url = format!("http://{origin_addr}");
    let body = origin_body(a.body, a.json, &origin_url);
    let origin = start_origin(body.clone(), a.json, Some(origin_addr.to_string()));
    let path = "/slm/webservice/v2.0/testcaseresult";
    let mut targets = vec![];
    if a.direct {
        targets.push((
            "direct".to_string(),
            format!("http://{origin}{path}"),
            vec![],
        ));
    }
    let mut sidecars = vec![];
    for (name, bin) in &a.sidecars {
        let s = spawn_sidecar(name, bin, &origin_url, &a.sidecar_env);
        targets.push((
            name.clone(),
            format!("http://{}{path}", s.addr),
            vec![s.child.id()],
        ));
        sidecars.push(s);
    }
    for t in &a.targets {
        // "name=http://..." names a target; a bare URL is its own name.
        let (name, url) = match t.split_once("=http") {
            Some((n, u)) => (n.to_string(), format!("http{u}")),
            None => (t.clone(), t.clone()),
        };
        let pids = a.cpu_of.get(&name).cloned().unwrap_or_default();
        targets.push((name, url.replace("{origin}", &origin.to_string()), pids));
    }
    let until = match a.requests {
        Some(n) => Until::Requests(n),
        None => Until::Seconds(a.seconds),
    };
    println!(
        "body {} bytes{}, {} connections, {} per target, {} CPUs",
        body.len(),
        if a.json { " (JSON with refs)" } else { "" },
        a.connections,
        match until {
            Until::Requests(n) => format!("{n} requests"),
            Until::Seconds(s) => format!("{s} s"),
        },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "\n| target | req/s | p50 ms | p99 ms | p99.9 ms | requests | errors | CPU µs/req (user + sys) |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    // Rounds interleave the targets, so that a neighbour's load on a shared machine falls on
    // all of them alike; each target's figure is its median round, and each ratio the median
    // of the ratios within a round.
    struct Tally {
        rps: Vec<f64>,
        hist: hdrhistogram::Histogram<u64>,
        requests: u64,
        errors: u64,
        sent: u64,
        user: f64,
        sys: f64,
    }
    let mut tallies: Vec<Tally> = targets
        .iter()
        .map(|_| Tally {
            rps: vec![],
            hist: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
            requests: 0,
            errors: 0,
            sent: 0,
            user: 0.0,
            sys: 0.0,
        })
        .collect();
    for round in 0..a.rounds {
        for ((_, url, pids), t) in targets.iter().zip(tallies.iter_mut()) {
            if let (0, Until::Seconds(_)) = (round, until) {
                // A short warm-up fills pools and caches.
                let w = rt.block_on(load(url, a.connections, Until::Seconds(1)));
                t.sent += w.requests + w.errors;
            }
            let cpu_before = cpu_seconds(pids);
            let o = rt.block_on(load(url, a.connections, until));
            let cpu_after = cpu_seconds(pids);
            t.user += cpu_after.0 - cpu_before.0;
            t.sys += cpu_after.1 - cpu_before.1;
            t.sent += o.requests + o.errors;
            t.requests += o.requests;
            t.errors += o.errors;
            t.rps.push(o.requests as f64 / o.elapsed.as_secs_f64());
            t.hist.add(&o.hist).unwrap();
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let results: Vec<_> = targets
        .iter()
        .zip(&tallies)
        .map(|((name, _, pids), t)| {
            let rps = median(&t.rps);
            let ms = |q: f64| t.hist.value_at_quantile(q) as f64 / 1000.0;
            let cpu_per_req = if pids.is_empty() {
                "—".to_string()
            } else {
                let per = |s: f64| s * 1e6 / (t.requests + t.errors).max(1) as f64;
                format!(
                    "{:.1} ({:.1} + {:.1})",
                    per(t.user + t.sys),
                    per(t.user),
                    per(t.sys)
                )
            };
            let spread = if t.rps.len() > 1 {
                let (lo, hi) = t
                    .rps
                    .iter()
                    .fold((f64::MAX, 0f64), |(l, h), &r| (l.min(r), h.max(r)));
                format!(" ({lo:.0}–{hi:.0})")
            } else {
                String::new()
            };
            println!(
                "| {name} | {rps:.0}{spread} | {:.2} | {:.2} | {:.2} | {} | {} | {cpu_per_req} |",
                ms(0.5),
                ms(0.99),
                ms(0.999),
                t.requests,
                t.errors
            );
            (name.clone(), rps, ms(0.5), ms(0.99), t.sent)
        })
        .collect();
    // Ratios against direct and, when measured, against nginx with its access log.
    for base in ["direct", "nginx"] {
        let Some(b) = targets.iter().position(|t| t.0 == base) else {
            continue;
        };
        println!();
        for (i, (name, _, _)) in targets.iter().enumerate() {
            if i == b || name == "direct" {
                continue;
            }
            let ratios: Vec<f64> = tallies[i]
                .rps
                .iter()
                .zip(&tallies[b].rps)
                .map(|(x, y)| x / y)
                .collect();
            println!(
                "{name} vs {base}: throughput x{:.2}{}, p50 {:+.2} ms, p99 {:+.2} ms",
                median(&ratios),
                if ratios.len() > 1 {
                    format!(
                        " (rounds: {})",
                        ratios
                            .iter()
                            .map(|r| format!("{r:.2}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    String::new()
                },
                results[i].2 - results[b].2,
                results[i].3 - results[b].3
            );
        }
    }
    // Every request answered must have its access line once the sidecar has stopped cleanly.
    println!();
    for s in sidecars {
        let name = s.name.clone();
        let sent = results.iter().find(|r| r.0 == name).map_or(0, |r| r.4);
        let lines = stop(s);
        println!("{name}: {lines} access lines for {sent} requests answered");
    }
}
