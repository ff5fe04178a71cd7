//! What a journaled write costs at each durability level: a row recorded before the write is
//! forwarded, and settled once its fate is known (`cargo bench --bench journal`). The journal
//! uses `Full`; this measures what that costs against `Normal` on the machine it runs on.

#![allow(clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use rally_sidecar::journal::{Durability, Journal, NewWrite, Settled, State};

fn write(n: u64) -> NewWrite {
    NewWrite {
        request_id: format!("bench-{n}"),
        received_at: "2026-11-27T00:00:00.000Z".into(),
        credential: "digest".into(),
        operation: "create".into(),
        path: "/slm/webservice/v2.0/testcaseresult/create".into(),
        body: r#"{"TestCaseResult":{"TestCase":"/testcase/1001","Build":"b","Date":"2026-11-27T00:00:00.000Z","Verdict":"Pass"}}"#.into(),
        build: Some("b".into()),
        ..NewWrite::default()
    }
}

fn journal_write(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("rs-bench-journal-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let mut g = c.benchmark_group("journal: record, then settle, one write");
    for (name, level) in [("full", Durability::Full), ("normal", Durability::Normal)] {
        let path = dir.join(format!("{name}.sqlite"));
        let j = Journal::open_with(&path, level).expect("journal");
        let mut n = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                rt.block_on(async {
                    let p = j.begin(write(n)).await.expect("begin");
                    p.settle(Settled {
                        state: State::Confirmed,
                        attempts: 1,
                        cause: None,
                        object_id: Some(n as i64),
                        latency_ms: Some(1.0),
                    })
                    .await
                    .expect("settle");
                })
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, journal_write);
criterion_main!(benches);
