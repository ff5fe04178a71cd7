//! `_ref` rewriting: any split of the input into two chunks gives the same output as one
//! chunk, never panics, and leaves no rewritable occurrence of the upstream origin.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rally_sidecar::refs::Rewriter;

const FROM: &str = "https://rally1.rallydev.com";
const TO: &str = "http://127.0.0.1:8080";

fn run(chunks: &[&[u8]]) -> Vec<u8> {
    let mut rw = Rewriter::new(FROM, TO).expect("valid origins");
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&rw.push(c));
    }
    out.extend_from_slice(&rw.finish());
    out
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize % data.len();
    let body = &data[1..];
    let split = split.min(body.len());
    let whole = run(&[body]);
    assert_eq!(run(&[&body[..split], &body[split..]]), whole, "chunking changed the output");
    let bytes: Vec<u8> = whole;
    for b in [b'/', b'"', b'?', b'#'] {
        let mut needle = FROM.as_bytes().to_vec();
        needle.push(b);
        assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_slice()), "an origin was left");
    }
});
