//! The "done when" run, reduced to stay fast (the full figures are in
//! docs/benchmarks.md, from `examples/fleet.rs`): sidecar *processes* in fleet mode, one API
//! key, the simulator capped at 12 per user with latency, drops, conflicts and 5xx; pod 0
//! killed with SIGKILL mid-run; PostgreSQL stopped for a few seconds mid-run; two central
//! replayers at once afterwards. The simulator never sees more open requests for the user than
//! the budget, the killed pod's permits stop counting within the lease, and every write is
//! stored exactly once.

use std::time::Duration;

use rally_sidecar_harness::fleet::{self, FleetOptions, PgOutage};

#[tokio::test]
async fn four_pods_one_key_a_kill_and_an_outage_land_every_write_once() {
    // SIDECAR_UNDER_TEST: a copy of this tree's binary, where several checkouts share one
    // target directory and so one target/debug/rally-sidecar.
    let binary = std::env::var_os("SIDECAR_UNDER_TEST")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_rally-sidecar").into());
    let mut o = FleetOptions::new(binary, 160, std::env::temp_dir());
    o.concurrency = 8;
    o.budget = 6;
    o.lease = "3s".into();
    o.unavailable_timeout = "2s".into();
    o.kill_after = Some(40);
    o.pg_outage = Some(PgOutage {
        after: 90,
        length: Duration::from_secs(4),
    });
    o.replay_rounds = 4;
    let r = fleet::fleet_run(o).await.expect("the fleet run ran");
    eprintln!("{}", fleet::fleet_summary(&r));
    assert!(
        r.max_open_at_upstream <= 6,
        "{} requests open at Rally with a budget of 6",
        r.max_open_at_upstream
    );
    assert!(r.max_open_at_upstream > 1, "the pods ran in parallel");
    let kill = r.kill.as_ref().expect("pod 0 was killed");
    let back = kill.permits_back_after_s.expect("its permits came back");
    assert!(
        back <= kill.lease_s + 1.5,
        "its permits counted {back:.1} s after the kill (lease {} s)",
        kill.lease_s
    );
    let down = r.pg_outage.as_ref().expect("PostgreSQL was stopped");
    assert!(
        down.readyz
            .as_deref()
            .is_some_and(|l| l.contains("PostgreSQL unreachable")),
        "/readyz said why: {:?}",
        down.readyz
    );
    assert!(
        r.replay.iter().all(|x| x.replayed_twice == 0),
        "{:?}",
        r.replay
    );
    assert_eq!(r.after_replay.duplicates, 0, "nothing stored twice");
    assert_eq!(r.after_replay.missing, 0, "nothing lost");
    assert_eq!(r.after_replay.stored_once, 160, "every write landed");
    assert!(r.is_clean());
}
