//! `rally-sidecar demo`: one command for a new user with no Rally account. It makes a local CA,
//! starts the simulator over HTTPS on an ephemeral port and the sidecar over HTTPS in front of
//! it, then prints how to point pyral, the Node toolkit and curl at the sidecar.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Overrides, RawConfig};
use crate::sim::{self, SimOptions};

/// Where the demo listens and keeps its certificates.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub dir: PathBuf,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            dir: std::env::temp_dir().join("rally-sidecar-demo"),
        }
    }
}

/// Runs the simulator and the sidecar until `shutdown`.
pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> Result<(), String> {
    let certs = crate::commands::cert::generate(&opts.dir, &[]).map_err(|e| e.to_string())?;
    let tls =
        crate::tls::server_config(&certs.cert, &certs.key, true).map_err(|e| e.to_string())?;
    let sim_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let sim =
        sim::start(sim_listener, Some(tls), SimOptions::default()).map_err(|e| e.to_string())?;

    let ov = Overrides {
        listen: Some(opts.listen.to_string()),
        upstream: Some(sim.base_url.clone()),
        admin_listen: Some(opts.admin_listen.to_string()),
        tls_cert: Some(certs.cert.clone()),
        tls_key: Some(certs.key.clone()),
    };
    let mut raw = RawConfig::default();
    raw.upstream.ca_file = Some(certs.ca_cert.clone());
    raw.journal.path = Some(opts.dir.join("journal.sqlite"));
    // So results written without a Build show enrichment at work rather than a refusal.
    raw.context.build = Some(crate::config::Text::Str("demo-build".into()));
    raw.guard.rule = Some(vec![crate::config::RawRule {
        field: "c_Lifecycle".into(),
        values: vec!["Archived".into(), "Deprecated".into()],
    }]);
    let cfg = Config::validate(&raw, &ov).map_err(|e| e.to_string())?;
    let listeners = crate::Listeners::bind(&cfg)
        .await
        .map_err(|e| e.to_string())?;
    let port = listeners
        .proxy
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(opts.listen.port());
    let admin = listeners
        .admin
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let ca = certs.ca_cert.display().to_string();
    println!(
        "rally-sidecar demo: the sidecar on https://localhost:{port} in front of a simulated Rally at {sim_url}

  pyral:   REQUESTS_CA_BUNDLE={ca} python3 -c 'from pyral import Rally; \\
             r = Rally(\"localhost:{port}\", apikey=\"_sim_alice_key\", workspace=\"Sim Workspace\", project=\"Sim Project\"); \\
             print(r.put(\"TestCaseResult\", {{\"TestCase\": \"/testcase/1001\", \"Verdict\": \"Pass\", \"Build\": \"b1\", \"Date\": \"2026-01-01T00:00:00.000Z\"}}).ref)'
  Node:    NODE_EXTRA_CA_CERTS={ca} node -e 'require(\"rally\")({{server: \"https://localhost:{port}\", apiKey: \"_sim_alice_key\"}}) \\
             .query({{type: \"testcase\", limit: 5, fetch: [\"FormattedID\", \"Name\"]}}).then(r => console.log(r.Results))'
  curl:    curl --cacert {ca} -H 'ZSESSIONID: _sim_alice_key' https://localhost:{port}/slm/webservice/v2.0/testcase/1001

  credentials: alice _sim_alice_key (Editor), bob _sim_bob_key (Viewer), dave _sim_dave_readonly (read-only key),
               carol@example.com / carol-pass (basic auth, Editor)
  writes:  results without Build/Date/Tester get them filled (build context: \"demo-build\"; change it with
           curl -X PUT http://{admin}/context -H 'Content-Type: application/json' -d '{{\"build\": \"my-build\"}}');
           TC90 is archived (c_Lifecycle)
           and TC91 is in a closed project: writes to them are refused. Journal: {journal}
  admin:   http://{admin}/healthz /readyz /metrics /context
  Ctrl-C stops both.",
                sim_url = sim.base_url,
        journal = opts.dir.join("journal.sqlite").display(),
    );
    let result = crate::run(cfg, listeners, shutdown)
        .await
        .map_err(|e| e.to_string());
    sim.stop().await;
    result
}

/// `rally-sidecar demo` (and `cargo run` with nothing configured).
pub fn cli(
    listen: Option<std::net::SocketAddr>,
    admin: Option<std::net::SocketAddr>,
    dir: Option<std::path::PathBuf>,
) -> u8 {
    let mut opts = DemoOptions::default();
    if let Some(l) = listen {
        opts.listen = l;
    }
    if let Some(a) = admin {
        opts.admin_listen = a;
    }
    if let Some(d) = dir {
        opts.dir = d;
    }
    let _logs = super::human_logs();
    super::block_on(async move {
        let token = tokio_util::sync::CancellationToken::new();
        crate::cancel_on_signals(token.clone());
        match run(opts, token).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("rally-sidecar demo: {e}");
                1
            }
        }
    })
}
