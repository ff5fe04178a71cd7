//! criterion benches for the pure functions on the request path.
//!
//!     cargo bench --bench hot_paths

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rally_sidecar::proxy::refs::Rewriter;

fn rally_page(items: usize, origin: &str) -> Vec<u8> {
    let item = format!(
        r#"{{"_rallyAPIMajor":"2","_rallyAPIMinor":"0","_ref":"{origin}/slm/webservice/v2.0/testcaseresult/10000000001","_refObjectUUID":"5a1e0000-0000-4000-8000-0002540be401","_objectVersion":"1","_refObjectName":"b1 Pass","Build":"b1","Verdict":"Pass","TestCase":{{"_rallyAPIMajor":"2","_rallyAPIMinor":"0","_ref":"{origin}/slm/webservice/v2.0/testcase/1001","_type":"TestCase"}},"_type":"TestCaseResult"}}"#
    );
    let mut s = String::from(
        r#"{"QueryResult":{"_rallyAPIMajor":"2","_rallyAPIMinor":"0","Errors":[],"Warnings":[],"Results":["#,
    );
    for i in 0..items {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&item);
    }
    s.push_str("]}}");
    s.into_bytes()
}

fn ref_rewriting(c: &mut Criterion) {
    let from = "https://rally1.rallydev.com";
    let mut group = c.benchmark_group("ref_rewrite");
    for items in [1usize, 200, 2000] {
        let page = rally_page(items, from);
        group.throughput(Throughput::Bytes(page.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("rewrite_16k_chunks", items),
            &page,
            |b, page| {
                b.iter(|| {
                    let mut rw = Rewriter::new(from, "https://localhost:8443").unwrap();
                    let mut n = 0;
                    for chunk in page.chunks(16 * 1024) {
                        n += rw.push(black_box(chunk)).len();
                    }
                    n + rw.finish().len()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("copy_baseline", items),
            &page,
            |b, page| {
                b.iter(|| {
                    page.chunks(16 * 1024)
                        .map(|c| bytes::Bytes::copy_from_slice(black_box(c)).len())
                        .sum::<usize>()
                })
            },
        );
    }
    group.finish();
}

fn redaction(c: &mut Criterion) {
    let pq = "/slm/webservice/v2.0/testcaseresult/create?key=abc123def456&workspace=/workspace/200&project=/project/300&projectScopeUp=false";
    c.bench_function("redact_path_and_query", |b| {
        b.iter(|| rally_sidecar::redact::path_and_query(black_box(pq)).len())
    });
}

criterion_group!(benches, ref_rewriting, redaction);
criterion_main!(benches);
