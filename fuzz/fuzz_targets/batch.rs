//! Batch bodies: parsing and classifying every entry never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rally_sidecar::intercept::classify::classify_entry;
use rally_sidecar::intercept::envelope::{parse, result_fields};

fuzz_target!(|data: &[u8]| {
    let Ok(map) = parse(data) else { return };
    let Some(entries) = map.get("Batch").and_then(|b| b.as_array()) else { return };
    for entry in entries {
        let e = entry.get("Entry").unwrap_or(entry);
        let op = classify_entry(
            e.get("Method").and_then(|m| m.as_str()).unwrap_or(""),
            e.get("Path").and_then(|p| p.as_str()).unwrap_or(""),
        );
        if let Some(body) = e.get("Body").and_then(|b| b.as_object()) {
            let _ = (op, result_fields(body.clone()));
        }
    }
});
