//! Parsing a TestCaseResult body and enriching it never panics, never overwrites what was
//! sent, and only ever adds Build, Date and Tester.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rally_sidecar::intercept::enrich::{enrich, Enriched, Sources};
use rally_sidecar::intercept::envelope::{parse, result_fields, test_case_id};

fuzz_target!(|data: &[u8]| {
    let Ok(map) = parse(data) else { return };
    let Ok((_, fields)) = result_fields(map) else { return };
    let _ = test_case_id(&fields);
    let sources = Sources {
        header_build: Some("h".into()),
        received_at: "2026-01-01T00:00:00.000Z".into(),
        owner: Some("/user/1".into()),
        ..Sources::default()
    };
    if let Enriched::Ready(out, filled) = enrich(fields.clone(), &sources) {
        for (k, v) in &fields {
            if !filled.iter().any(|f| f.field == k) {
                assert_eq!(out.get(k), Some(v), "{k} was changed");
            }
        }
        for k in out.keys() {
            assert!(fields.contains_key(k) || ["Build", "Date", "Tester"].contains(&k.as_str()), "{k} appeared");
        }
    }
});
