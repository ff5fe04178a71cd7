//! A stand-in for Rally's WSAPI v2.0 (and `v2.x`), judged against the facts and sources in
//! docs/simulator.md, used by every test of this project, by `rally-sidecar simulate` and
//! `demo`, and by users' own CI; it depends only on the WSAPI vocabulary ([`crate::wsapi`]) and
//! the shared server plumbing, and nothing on the proxy path imports it. This file owns the
//! public face — options, switches, statistics, the shared [`Simulator`] and how it is started.
//! A request goes through `pipeline` (authenticate in `auth`, a slot under the per-user cap,
//! latency, route in `route`, an operation from `ops`/`write` under the `rules`, a seeded fault
//! from [`faults`] on TestCaseResult writes) and leaves through `respond`; `batch` runs
//! `POST /batch`, `control` serves `/__sim/`.

mod auth;
mod batch;
mod control;
pub mod faults;
mod fixtures;
pub mod model;
mod ops;
mod pipeline;
pub mod query;
mod render;
mod respond;
mod route;
mod rules;
mod schema;
mod store;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::server::{Body, BoxError, BoxFuture, ConnInfo, Handler, ServeOptions};
use faults::{Dice, FaultConfig};
use model::{Fixtures, Type};
use store::Store;

/// How the simulator runs.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub fixtures: Fixtures,
    pub seed: u64,
    pub faults: FaultConfig,
    /// Behaviours whose sources are thin; see [`Switches`].
    pub switches: Switches,
    /// Requests one user may have in service at once; more wait in a FIFO queue (KB 95713).
    pub max_concurrency_per_user: usize,
    /// Serve `/__sim/` (statistics, objects, fault knobs, switches, reset).
    pub control_api: bool,
    /// Largest request body accepted.
    pub max_body: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            fixtures: Fixtures::default(),
            seed: 1,
            faults: FaultConfig::default(),
            switches: Switches::default(),
            max_concurrency_per_user: 12,
            control_api: true,
            max_body: 64 * 1024 * 1024,
        }
    }
}

/// Behaviours where a source says Rally does it but not always, or not how exactly: each can be
/// turned off (docs/simulator.md lists them with their sources). Changeable live through
/// `POST /__sim/switches`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Switches {
    /// A TestCaseResult `Date` that does not parse is answered
    /// `Could not update: Could not write changes in Unit Of Work` (KB 77114) instead of a
    /// validation error.
    pub bad_date_unit_of_work: bool,
    /// An API key sent with a live basic-auth session cookie is served as that session, so its
    /// writes fail with `Invalid key` (KB 127054 says this "can" happen).
    pub session_cookie_beats_api_key: bool,
    /// An Attachment must name an `Artifact` or a `TestCaseResult` (pyral's source says the
    /// link is optional; off by default).
    pub attachment_needs_owner: bool,
}

impl Default for Switches {
    fn default() -> Self {
        Switches {
            bad_date_unit_of_work: true,
            session_cookie_beats_api_key: true,
            attachment_needs_owner: false,
        }
    }
}

/// Counters served at `GET /__sim/stats`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Stats {
    pub requests: u64,
    pub requests_by_method: BTreeMap<String, u64>,
    pub unauthorized: u64,
    /// TestCaseResult write requests received (creates + updates, batch entries included).
    pub writes_received: u64,
    /// TestCaseResult writes stored.
    pub persisted: u64,
    pub dropped: u64,
    pub conflicts: u64,
    pub errors: u64,
    pub gateway_timeouts: u64,
    pub resets_before_persist: u64,
    pub resets_after_persist: u64,
    /// Writes refused with `Invalid key` by the `invalid_key_rate` fault.
    pub invalid_keys: u64,
    /// Requests that waited because their user already had the maximum in service.
    pub queued: u64,
    /// Highest number of requests one user had open at once (arrived, queued or in service).
    pub max_open_per_user: BTreeMap<String, usize>,
}

struct State {
    store: Store,
    faults: FaultConfig,
    switches: Switches,
    dice: Dice,
    stats: Stats,
    open: HashMap<i64, usize>,
}

/// The simulator: shared by every connection.
pub struct Simulator {
    opts: SimOptions,
    state: Mutex<State>,
    slots: Mutex<HashMap<i64, Arc<Semaphore>>>,
}

/// A running simulator started by [`start`].
pub struct SimHandle {
    pub addr: std::net::SocketAddr,
    /// `http://127.0.0.1:port` or `https://localhost:port`.
    pub base_url: String,
    pub sim: Arc<Simulator>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<usize>,
}

impl SimHandle {
    /// Stops accepting and closes connections (in-flight requests get one second).
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Starts the simulator on `listener` (optionally TLS) in the background.
pub fn start(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    opts: SimOptions,
) -> std::io::Result<SimHandle> {
    start_shared(listener, tls, Arc::new(Simulator::new(opts)))
}

/// Serves an existing simulator on `listener`: a simulator stopped with [`SimHandle::stop`] can
/// be started again with everything it stored (the outage run does this).
pub fn start_shared(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    sim: Arc<Simulator>,
) -> std::io::Result<SimHandle> {
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let host = if tls.is_some() {
        "localhost".to_string()
    } else {
        addr.ip().to_string()
    };
    let shutdown = CancellationToken::new();
    let mut serve_opts = ServeOptions::plain("simulator");
    serve_opts.tls = tls;
    serve_opts.grace = std::time::Duration::from_secs(1);
    let task = tokio::spawn(crate::server::serve(
        listener,
        serve_opts,
        Arc::new(SimHandler(sim.clone())),
        Arc::new(crate::server::NoObserver),
        shutdown.clone(),
    ));
    Ok(SimHandle {
        addr,
        base_url: format!("{scheme}://{host}:{}", addr.port()),
        sim,
        shutdown,
        task,
    })
}

impl Simulator {
    pub fn new(opts: SimOptions) -> Simulator {
        let state = State {
            store: Store::new(opts.fixtures.clone()),
            faults: opts.faults.clone(),
            switches: opts.switches.clone(),
            dice: Dice::new(opts.seed),
            stats: Stats::default(),
            open: HashMap::new(),
        };
        Simulator {
            opts,
            state: Mutex::new(state),
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a bug panicked mid-update; the data is still the best we have.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current statistics.
    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Every stored object of a type, rendered in full (recycled ones included, with
    /// `Recycled`), with `_ref`s under `origin` and API version v2.0.
    pub fn objects(&self, ty: Type, origin: &str) -> Vec<Value> {
        let st = self.lock();
        let base = route::service_base(origin, "v2.0");
        let r = render::Renderer {
            store: &st.store,
            base: &base,
            now: time::OffsetDateTime::now_utc(),
        };
        st.store
            .objects_of(ty)
            .map(|o| r.object(o, &render::Fetch::All, false))
            .collect()
    }

    /// Replaces the fault knobs.
    pub fn set_faults(&self, f: FaultConfig) -> Result<(), String> {
        f.validate()?;
        self.lock().faults = f;
        Ok(())
    }

    pub fn faults(&self) -> FaultConfig {
        self.lock().faults.clone()
    }

    pub fn switches(&self) -> Switches {
        self.lock().switches.clone()
    }

    pub fn set_switches(&self, s: Switches) {
        self.lock().switches = s;
    }

    /// Back to the fixtures, zeroed statistics, the original fault knobs, switches and seed.
    pub fn reset(&self) {
        let mut st = self.lock();
        st.store = Store::new(self.opts.fixtures.clone());
        st.stats = Stats::default();
        st.faults = self.opts.faults.clone();
        st.switches = self.opts.switches.clone();
        st.dice = Dice::new(self.opts.seed);
    }
}

struct SimHandler(Arc<Simulator>);

impl Handler for SimHandler {
    fn call(
        &self,
        req: http::Request<Incoming>,
        conn: ConnInfo,
    ) -> BoxFuture<Result<http::Response<Body>, BoxError>> {
        let sim = self.0.clone();
        Box::pin(sim.handle(req, conn))
    }
}
