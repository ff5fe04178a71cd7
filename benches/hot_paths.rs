//! criterion benches for the pure functions on the request path: classification, envelope
//! parsing and enrichment, `_ref` rewriting, redaction.
//!
//!     cargo bench --bench hot_paths

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rally_sidecar::refs::Rewriter;

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
        b.iter(|| rally_sidecar::telemetry::redact::path_and_query(black_box(pq)).len())
    });
}

fn classification(c: &mut Criterion) {
    use rally_sidecar::intercept::classify::classify;
    let mut group = c.benchmark_group("classify");
    for (name, method, path) in [
        (
            "create",
            http::Method::PUT,
            "/slm/webservice/v2.0/testcaseresult/create?key=abc&workspace=/workspace/200",
        ),
        (
            "read_passthrough",
            http::Method::GET,
            "/slm/webservice/v2.0/testcase?query=(FormattedID%20%3D%20TC1)&fetch=Name",
        ),
        ("batch", http::Method::POST, "/slm/webservice/v2.0/batch"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| classify(black_box(&method), black_box(path)))
        });
    }
    group.finish();
}

fn envelope_and_enrichment(c: &mut Criterion) {
    use rally_sidecar::intercept::enrich::{Sources, enrich};
    use rally_sidecar::intercept::envelope::{parse, result_fields, test_case_id};
    let bare = br#"{"TestCaseResult": {"TestCase": "/testcase/1001", "Verdict": "Pass", "Notes": "from CI"}}"#;
    let full = br#"{"testcaseresult": {"TestCase": "https://rally1.rallydev.com/slm/webservice/v2.0/testcase/1001", "Verdict": "Fail", "Build": "b-42", "Date": "2026-11-24T12:00:00.000Z", "Tester": "/user/400", "Duration": 12.5, "Notes": "a longer note about the failure, as CI tools write them"}}"#;
    let sources = Sources {
        header_build: Some("header-build".into()),
        received_at: "2026-11-24T12:00:00.000Z".into(),
        owner: Some("/user/400".into()),
        ..Sources::default()
    };
    let mut group = c.benchmark_group("envelope");
    for (name, body) in [("bare_result", &bare[..]), ("complete_result", &full[..])] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(BenchmarkId::new("parse", name), |b| {
            b.iter(|| {
                let map = parse(black_box(body)).unwrap();
                let (_, fields) = result_fields(map).unwrap();
                test_case_id(&fields).map(|s| s.len())
            })
        });
        group.bench_function(BenchmarkId::new("parse_and_enrich", name), |b| {
            b.iter(|| {
                let map = parse(black_box(body)).unwrap();
                let (_, fields) = result_fields(map).unwrap();
                matches!(
                    enrich(fields, &sources),
                    rally_sidecar::intercept::enrich::Enriched::Ready(..)
                )
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    ref_rewriting,
    redaction,
    classification,
    envelope_and_enrichment
);
criterion_main!(benches);
