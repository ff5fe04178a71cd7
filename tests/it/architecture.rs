//! The shape of the code, checked so it stays as docs/architecture.md describes it: the
//! product's top-level modules import each other without a cycle, no file under `src/` grows
//! past 600 lines, and nothing the build or the tests read lies outside the repository.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Code lines only: comments say where to read more, they do not depend on anything.
fn code(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.trim_start().starts_with("//"))
}

/// Top-level module → the top-level modules it names with `crate::`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or("")
            .trim_end_matches(".rs")
            .to_string();
        if top == "main" || top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read");
        let deps = graph.entry(top.clone()).or_default();
        for line in code(&text) {
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    deps.insert(name);
                }
            }
            // `use crate::{a, b::c}` names several.
            if let Some(i) = line.find("crate::{") {
                for part in line[i + "crate::{".len()..].split([',', '}']) {
                    let name: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != top {
                        deps.insert(name);
                    }
                }
            }
        }
    }
    // Only edges between modules (not to items of lib.rs such as `crate::run`).
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    graph
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for d in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_product_modules_import_each_other_without_a_cycle() {
    let graph = imports();
    assert!(
        graph.contains_key("proxy") && graph["proxy"].contains("intercept"),
        "{graph:?}"
    );
    assert_eq!(find_cycle(&graph), None, "{graph:#?}");
    // The detector itself finds one when there is one.
    let mut looped = graph.clone();
    looped
        .entry("wsapi".into())
        .or_default()
        .insert("proxy".into());
    assert!(find_cycle(&looped).is_some());
}

#[test]
fn no_file_under_src_is_over_600_lines() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    assert!(files.len() > 50);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).ok()?.lines().count();
            (n > 600).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these: {long:?}");
}

#[test]
fn nothing_reads_outside_the_repository() {
    let mut files = Vec::new();
    for dir in [
        "src",
        "tests",
        "benches",
        "examples",
        "harness",
        "fuzz/fuzz_targets",
    ] {
        rust_files(&root().join(dir), &mut files);
    }
    // The sibling directory beside our CI checkout, spelt in pieces so that no file of the
    // project names it, this one included.
    let sibling = ["..", "shared"].join("/");
    let outside = [sibling.as_str(), "/work/shared", "join(\"..\")"];
    let found: Vec<String> = files
        .iter()
        .filter(|f| !f.ends_with("architecture.rs"))
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            code(&text)
                .filter(|l| outside.iter().any(|o| l.contains(o)))
                .map(|l| format!("{}: {}", f.display(), l.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        found.is_empty(),
        "a fresh clone has nothing beside it: {found:?}"
    );
}

#[test]
fn the_public_surface_is_what_its_users_need() {
    // With `unreachable_pub` on (CI's clippy denies warnings), an item only the crate uses is
    // `pub(crate)`, so the compiler reports it when it falls out of use.
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).expect("src/lib.rs");
    assert!(lib.contains("#![warn(unreachable_pub)]"), "the lint is on");
    // The request path's inner modules are not public: tests, examples and the harness go
    // through the commands, the config, the simulator and `run_with`.
    for private in [
        "admin", "error", "proxy", "rally", "request", "server", "wsapi",
    ] {
        assert!(
            lib.lines().any(|l| l == format!("mod {private};")),
            "{private} is private"
        );
    }
}

#[test]
fn the_fuzz_crates_lock_file_lists_every_dependency_of_the_product() {
    // CI builds the fuzz targets with `--locked` (.ci/run); a dependency added to the product
    // and not to fuzz/Cargo.lock fails CI there, long after `cargo test` passed here. The
    // fix: `cargo metadata --manifest-path fuzz/Cargo.toml > /dev/null`, then commit the lock.
    let manifest: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .expect("Cargo.toml")
        .parse()
        .expect("Cargo.toml is TOML");
    let lock: toml::Table = std::fs::read_to_string(root().join("fuzz/Cargo.lock"))
        .expect("fuzz/Cargo.lock")
        .parse()
        .expect("fuzz/Cargo.lock is TOML");
    let product = lock["package"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p.get("name").and_then(|n| n.as_str()) == Some("rally-sidecar"))
        })
        .expect("fuzz/Cargo.lock has the rally-sidecar package");
    let locked: BTreeSet<String> = product["dependencies"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .filter_map(|d| d.as_str())
                // "name" or "name version" when two versions are locked.
                .filter_map(|d| d.split(' ').next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let missing: Vec<String> = manifest["dependencies"]
        .as_table()
        .expect("[dependencies]")
        .iter()
        .filter(|(_, spec)| spec.get("optional").and_then(|o| o.as_bool()) != Some(true))
        .map(|(name, spec)| {
            spec.get("package")
                .and_then(|p| p.as_str())
                .unwrap_or(name)
                .to_string()
        })
        .filter(|name| !locked.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "fuzz/Cargo.lock lacks {missing:?}: run `cargo metadata --manifest-path fuzz/Cargo.toml > /dev/null` and commit it"
    );
}
