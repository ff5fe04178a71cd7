//! Request classification never panics, and only result writes under the service root are
//! intercepted.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rally_sidecar::intercept::classify::{classify, classify_entry, Operation};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (method, path) = text.split_once(' ').unwrap_or(("POST", &text));
    if let Ok(m) = http::Method::from_bytes(method.as_bytes()) {
        let op = classify(&m, path);
        if op != Operation::Passthrough {
            assert!(path.starts_with("/slm/webservice/v2.0"), "{path}");
            assert!(m == http::Method::POST || m == http::Method::PUT);
        }
    }
    let _ = classify_entry(method, path);
});
