//! The running sidecar: [`run`] assembles the pieces (the Rally client, interception, the
//! journal, the proxy and admin listeners), starts the background tasks (journal housekeeping,
//! the upstream watcher, the periodic sweep), and drains on shutdown: signal → stop accepting →
//! answer held writes before the deadline → flush the journal → return.

mod fleet;

use std::sync::Arc;

use crate::{intercept, journal, rally, server, tls};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{Admin, AdminHandler, Readiness};
use crate::config::Config;
use crate::proxy::{Proxy, ProxyHandler};
use crate::server::{ConnObserver, ServeOptions};
use crate::telemetry::metrics::Metrics;

/// The sockets `run` serves on; tests bind them to `127.0.0.1:0`.
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the addresses in `cfg`.
    pub async fn bind(cfg: &Config) -> std::io::Result<Listeners> {
        let proxy = TcpListener::bind(cfg.listen.addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {} (listen.addr): {e}", cfg.listen.addr),
            )
        })?;
        let admin = TcpListener::bind(cfg.admin.listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {} (admin.listen): {e}", cfg.admin.listen),
            )
        })?;
        Ok(Listeners { proxy, admin })
    }
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("listener TLS: {0}")]
    ListenerTls(#[from] tls::TlsError),
    #[error("{0}")]
    Upstream(#[from] rally::connect::UpstreamError),
    #[error("{0}")]
    Setup(String),
}

/// Handles to a running sidecar's shared state, for tests and embedding.
#[derive(Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// The build context the admin API sets.
    pub context: Arc<intercept::context::BuildContext>,
    /// What the proxy last saw of the upstream.
    pub health: Arc<rally::health::UpstreamHealth>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            metrics: Arc::new(Metrics::new()),
            readiness: Arc::new(Readiness::default()),
            context: Arc::new(intercept::context::BuildContext::default()),
            health: Arc::new(rally::health::UpstreamHealth::default()),
        }
    }
}

struct CountConnections(Arc<Metrics>);
impl ConnObserver for CountConnections {
    fn opened(&self) {
        self.0.open_connections.inc();
    }
    fn closed(&self) {
        self.0.open_connections.dec();
    }
}

/// Runs the sidecar on `listeners` until `shutdown` is cancelled (by a signal, `POST /shutdown`
/// or the caller), then drains within `shutdown_grace` and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    run_with(config, listeners, shutdown, Shared::default()).await
}

/// [`run`] with caller-provided shared state (tests read metrics and readiness through it).
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    shared: Shared,
) -> Result<(), RunError> {
    let config = Arc::new(config);
    let Shared {
        metrics,
        readiness,
        context,
        health,
    } = shared;

    let tls = match &config.listen.tls {
        Some(files) => Some(crate::tls::server_config(
            &files.cert,
            &files.key,
            config.listen.http2,
        )?),
        None => None,
    };
    // The journal must be open before any write is accepted; /readyz waits for it.
    readiness.set("journal", false, "opening");
    let journal = if config.confirm.enabled {
        let path = config.journal.path.clone();
        let (journal, recovered) = crate::journal::Journal::own(&path)
            .await
            .map_err(|e| RunError::Setup(e.to_string()))?;
        if recovered > 0 {
            tracing::warn!(
                recovered,
                journal = %journal.path().display(),
                "writes left pending by an earlier run are marked unconfirmed; `rally-sidecar journal replay` re-sends them"
            );
        }
        journal
            .cap(config.journal.max_bytes)
            .await
            .map_err(|e| RunError::Setup(e.to_string()))?;
        // The backlog is known before the sidecar reports ready; housekeeping keeps it current.
        let backlog = journal.backlog().await.unwrap_or_default();
        metrics.journal_backlog.set(backlog);
        readiness.set(
            "journal",
            true,
            format!(
                "open at {}; backlog {backlog} (pending or unconfirmed)",
                journal.path().display()
            ),
        );
        Some(journal)
    } else {
        readiness.set("journal", true, "disabled (confirm.enabled = false)");
        None
    };
    // Fleet mode (issue 15): connected before any request is accepted.
    let fleet = fleet::FleetMode::start(&config, journal.as_ref(), &readiness, &context).await?;
    // Writers are named by a digest keyed with the journal's own secret, so a digest in a row
    // means the same credential to every process that opens the file.
    let writer_key = journal.as_ref().map(|j| j.writer_secret());
    let (rally, route) = rally::Rally::new(config.clone(), metrics.clone(), health.clone())?;
    let rally = Arc::new(match (&fleet, writer_key) {
        // Fleet mode: the fleet's budget and its writer key (one digest fleet-wide).
        (Some(f), _) => rally.with_fleet(&f.fleet),
        (None, Some(k)) => rally.with_writer_key(k),
        (None, None) => rally,
    });
    readiness.set("upstream_tls", true, "upstream TLS configuration loaded");
    let rule_fields: Vec<String> = config.guard.rules.iter().map(|r| r.field.clone()).collect();
    let lookups = Arc::new(
        rally::lookups::Lookups::new(rally.clone(), &rule_fields, config.guard.cache_ttl)
            .remember_failures(config.guard.failure_cache_ttl),
    );
    let mut interceptor = intercept::Interceptor::new(
        config.clone(),
        lookups,
        context.clone(),
        metrics.clone(),
        journal.clone(),
    );
    // Fleet mode: held writes recorded in the fleet's ledger too.
    interceptor.fleet = fleet.as_ref().and_then(|f| f.writes());
    let interceptor = Arc::new(interceptor);
    let proxy_handle = Arc::new(Proxy::new(
        config.clone(),
        rally.clone(),
        metrics.clone(),
        interceptor,
    ));

    let admin_task_addr = listeners
        .admin
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let admin_token = CancellationToken::new();
    let admin = Arc::new(Admin {
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        enable_shutdown: config.admin.enable_shutdown,
        shutdown: shutdown.clone(),
        context: context.clone(),
        fleet_context: fleet.as_ref().map(|f| f.context.clone()),
        journal: journal.clone(),
        health: health.clone(),
        auth: crate::admin::auth::Guard::new(&config.admin),
        build_config: config.context.clone(),
    });
    let mut admin_opts = ServeOptions::plain("admin");
    admin_opts.grace = std::time::Duration::from_secs(1);
    // Probes, Prometheus and a few operators: a small cap, so the admin port cannot be used to
    // hold thousands of sockets.
    admin_opts.max_connections = 256;
    admin_opts.max_connections_per_peer = 64;
    let admin_task = tokio::spawn(server::serve(
        listeners.admin,
        admin_opts,
        Arc::new(AdminHandler(admin)),
        Arc::new(server::NoObserver),
        admin_token.clone(),
    ));

    let local = listeners.proxy.local_addr().ok();
    readiness.set(
        "listener",
        true,
        format!(
            "listening on {}",
            local.map(|a| a.to_string()).unwrap_or_default()
        ),
    );
    let admin_addr = admin_task_addr;
    tracing::info!(
        proxy_addr = %local.map(|a| a.to_string()).unwrap_or_default(),
        admin_addr = %admin_addr,
        tls = tls.is_some(),
        upstream = %config.upstream.origin_string(),
        route = ?route,
        "rally-sidecar ready"
    );

    let opts = ServeOptions {
        tls,
        header_read_timeout: config.listen.header_read_timeout,
        http2: config.listen.http2,
        max_connections: config.listen.max_connections,
        max_connections_per_peer: config.listen.max_connections_per_peer,
        idle_timeout: config.listen.idle_timeout,
        http2_keep_alive_interval: config.listen.http2_keep_alive_interval,
        http2_keep_alive_timeout: config.listen.http2_keep_alive_timeout,
        grace: config.shutdown_grace,
        name: "proxy",
    };
    let serve_token = shutdown.clone();
    let readiness_for_drain = readiness.clone();
    let give_up = proxy_handle.give_up();
    let grace = config.shutdown_grace;
    let journal_for_drain = journal.clone();
    let drain_flag = tokio::spawn(async move {
        serve_token.cancelled().await;
        readiness_for_drain.set(
            "draining",
            false,
            "shutting down: not accepting new connections",
        );
        // Held writes get the grace period, less a margin to answer them and record their fate.
        // (a fifth of it, at most 5 s: 10,000 held writes took about 1.5 s to answer on two
        // shared cores).
        let margin = (grace / 5).min(std::time::Duration::from_secs(5));
        tokio::time::sleep(grace.saturating_sub(margin)).await;
        if let Some(j) = &journal_for_drain {
            match j
                .settle_all_pending("the sidecar shut down before this write was confirmed")
                .await
            {
                Ok(n) if n > 0 => tracing::warn!(
                    held = n,
                    "shutdown deadline: held writes journaled as unconfirmed and answered now"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot journal the held writes in bulk; each is journaled as it is answered")
                }
            }
        }
        give_up.cancel();
    });
    let sweeper = config.sweep.interval.map(|every| {
        tokio::spawn(sweep_loop(
            config.clone(),
            journal.clone(),
            every,
            shutdown.clone(),
        ))
    });
    let housekeeping = journal.clone().map(|j| {
        tokio::spawn(housekeeping(
            j,
            config.clone(),
            metrics.clone(),
            readiness.clone(),
            shutdown.clone(),
        ))
    });
    let heart = journal.clone().map(|j| tokio::spawn(heartbeat(j)));
    let watcher = tokio::spawn(watch_upstream(
        rally.clone(),
        health.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
    let cut = server::serve(
        listeners.proxy,
        opts,
        Arc::new(ProxyHandler(proxy_handle.clone())),
        Arc::new(CountConnections(metrics.clone())),
        shutdown,
    )
    .await;
    watcher.abort();
    if let Some(h) = housekeeping {
        h.abort();
    }
    if let Some(s) = sweeper {
        s.abort();
    }
    if cut > 0 {
        tracing::warn!(
            cut,
            "connections cut at the end of the shutdown grace period"
        );
    }
    // Read-backs still going on behind answered clients (`confirm.hold = "ambiguous"`): they
    // end by the give-up before the grace deadline, their rows settled.
    let background = &proxy_handle.interceptor().background;
    background.close();
    if tokio::time::timeout(grace, background.wait())
        .await
        .is_err()
    {
        tracing::warn!("background read-backs still running at the end of the grace period");
    }
    drain_flag.abort();
    // Fleet mode: the last journal rows shipped, then this pod leaves the fleet.
    if let Some(f) = fleet {
        f.stop(journal.as_ref()).await;
    }
    if let Some(h) = heart {
        h.abort();
    }
    if let Some(j) = &journal
        && let Err(e) = j.release().await
    {
        tracing::warn!(error = %e, "cannot release the journal's owner lease; it lapses by itself");
    }
    admin_token.cancel();
    let _ = admin_task.await;
    tracing::info!("rally-sidecar stopped");
    Ok(())
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received: draining"),
                _ = int.recv() => tracing::info!("SIGINT received: draining"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        token.cancel();
    });
}

/// Keeps the `upstream` line of `/readyz` current: failed while no connection to the upstream
/// can be made (requests that fail to connect mark it), probed every second until it answers.
async fn watch_upstream(
    rally: Arc<rally::Rally>,
    health: Arc<rally::health::UpstreamHealth>,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_ready = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if health.unreachable_since().is_some() {
            rally.probe().await;
        }
        let (ready, detail) = health.readiness();
        if ready != was_ready {
            if ready {
                tracing::info!("upstream reachable again");
            } else {
                tracing::warn!(%detail, "upstream unreachable; /readyz fails until it answers");
            }
            was_ready = ready;
        }
        readiness.set("upstream", ready, detail);
    }
}

/// Renews the journal's owner lease until aborted (after the drain, so held writes stay owned
/// to the end).
async fn heartbeat(journal: journal::Journal) {
    let mut tick = tokio::time::interval(journal::owner::HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match journal.heartbeat().await {
            Ok(true) => {}
            Ok(false) => tracing::error!(
                journal = %journal.path().display(),
                "another sidecar has taken this journal over; two sidecars must not share one journal.path"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot renew the journal's owner lease"),
        }
    }
}

/// Every 2 s: keeps the journal under `journal.max_bytes` and says on `/readyz` whether it can
/// take a row; every 30 s also prunes by age and count and publishes the backlog.
async fn housekeeping(
    journal: journal::Journal,
    cfg: Arc<Config>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) {
    const TICK: std::time::Duration = std::time::Duration::from_secs(2);
    const PRUNE_EVERY: u32 = 15;
    let j = &cfg.journal;
    let limits = journal::capacity::Limits {
        max_bytes: j.max_bytes,
        // A row holds one body and a few short fields.
        row: cfg.intercept.max_body as u64 + 16 * 1024,
    };
    let mut backlog = None;
    for tick in 0u32.. {
        if tick % PRUNE_EVERY == 0 {
            if let Err(e) = journal.prune(j.retention, j.max_confirmed).await {
                tracing::warn!(error = %e, "journal pruning failed");
            }
            if let Err(e) = journal
                .prune_rejected(j.rejected_retention, j.rejected_body_retention)
                .await
            {
                tracing::warn!(error = %e, "journal pruning failed");
            }
            if let Ok(n) = journal.backlog().await {
                metrics.journal_backlog.set(n);
                backlog = Some(n);
            }
        }
        let (ok, room) = match journal.upkeep(limits).await {
            Ok(h) => (h.ok, h.detail),
            Err(e) => (false, format!("cannot check its size: {e}")),
        };
        readiness.set(
            "journal",
            ok,
            format!(
                "{}; open at {}; backlog {} (pending or unconfirmed)",
                room,
                journal.path().display(),
                backlog.map_or("?".into(), |n| n.to_string())
            ),
        );
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// `sweep.interval`: the sweep inside `serve` (mini-redis's periodic-task shape).
async fn sweep_loop(
    config: Arc<Config>,
    journal: Option<journal::Journal>,
    every: std::time::Duration,
    shutdown: CancellationToken,
) {
    let Some(key) = crate::rally::credential::Operator::from_env()
        .and_then(|o| o.api_key().map(str::to_string))
    else {
        tracing::error!(
            "sweep.interval is set but RALLY_API_KEY is not: the periodic sweep is off"
        );
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match crate::commands::sweep::run(
            config.clone(),
            journal.as_ref(),
            &key,
            config.sweep.apply,
            time::OffsetDateTime::now_utc(),
        )
        .await
        {
            Ok(r) => tracing::info!(
                stuck = r.actions.len(),
                applied = r
                    .outcomes
                    .iter()
                    .filter(|(_, o)| *o == crate::commands::sweep::Outcome::Applied)
                    .count(),
                dry_run = r.dry_run,
                journal_reconfirmed = r.journal_reconfirmed.len(),
                journal_unresolved = r.journal_unresolved.len(),
                "sweep done"
            ),
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
    }
}

/// `rally-sidecar serve`: the sidecar until a signal, then its drain.
pub fn cli(args: crate::commands::ConfigArgs) -> u8 {
    let cfg = match args.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Held until the process is done: dropping it writes the last batched access lines.
    let _logs = crate::telemetry::logging::init(&cfg.log);
    crate::commands::block_on(async move {
        let listeners = match Listeners::bind(&cfg).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("rally-sidecar: {e}");
                return 1;
            }
        };
        let token = tokio_util::sync::CancellationToken::new();
        cancel_on_signals(token.clone());
        match run(cfg, listeners, token).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("rally-sidecar: {e}");
                1
            }
        }
    })
}
