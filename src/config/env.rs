//! The environment overlay (`RALLY_SIDECAR_<SECTION>_<KEY>`, or `RALLY_SIDECAR_<KEY>` for
//! top-level keys) and the list of keys the raw shape accepts.

use std::collections::BTreeMap;

use super::raw::*;
use super::{ConfigError, ENV_PREFIX};

/// Overlays `RALLY_SIDECAR_<SECTION>_<KEY>` (or `RALLY_SIDECAR_<KEY>` for top-level keys) on a
/// parsed file. `true`/`false` become booleans and all-digit values integers; everything else is a
/// string. Variables naming no known key are reported, since a typo would otherwise be silent.
pub fn apply_env(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
    known_extra: &[&str],
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let mut rest = rest.to_ascii_lowercase();
        if known_extra.contains(&rest.as_str()) {
            continue;
        }
        if rest == "build" {
            // The documented short form of RALLY_SIDECAR_CONTEXT_BUILD.
            rest = "context_build".into();
        }
        // A secret is text whatever it looks like: "0123…" must not become the number 123….
        let parsed = if rest.ends_with("token") {
            toml::Value::String(value.clone())
        } else if value == "true" || value == "false" {
            toml::Value::Boolean(value == "true")
        } else if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            value
                .parse::<i64>()
                .map(toml::Value::Integer)
                .unwrap_or(toml::Value::String(value.clone()))
        } else {
            toml::Value::String(value.clone())
        };
        let section = SECTIONS
            .iter()
            .find(|s| rest.starts_with(&format!("{s}_")))
            .copied();
        match section {
            Some(section) => {
                let key = rest[section.len() + 1..].to_string();
                let entry = table
                    .entry(section.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(t) = entry {
                    t.insert(key, parsed);
                } else {
                    errors.push(ConfigError {
                        key: name.clone(),
                        message: format!("[{section}] in the file is not a table"),
                    });
                }
            }
            None => {
                table.insert(rest, parsed);
            }
        }
    }
    errors
}

/// Which keys each section accepts, read from the raw structs themselves (so this list and
/// what the file may hold cannot drift apart); `[[guard.rule]]` entries' keys are listed under
/// `guard`.
pub fn known_keys() -> BTreeMap<&'static str, Vec<&'static str>> {
    use serde_aux::serde_introspection::serde_introspect as fields;
    let mut m = BTreeMap::new();
    m.insert("(top)", fields::<RawTop>().to_vec());
    m.insert("listen", fields::<RawListen>().to_vec());
    m.insert("upstream", fields::<RawUpstream>().to_vec());
    m.insert("admin", fields::<RawAdmin>().to_vec());
    m.insert("log", fields::<RawLog>().to_vec());
    m.insert("intercept", fields::<RawIntercept>().to_vec());
    m.insert("context", fields::<RawContext>().to_vec());
    let mut guard: Vec<&'static str> = fields::<RawGuard>()
        .iter()
        .copied()
        .filter(|k| *k != "rule")
        .collect();
    guard.extend_from_slice(fields::<RawRule>());
    m.insert("guard", guard);
    m.insert("confirm", fields::<RawConfirm>().to_vec());
    m.insert("journal", fields::<RawJournal>().to_vec());
    m.insert("scope", fields::<RawScope>().to_vec());
    m.insert("sweep", fields::<RawSweep>().to_vec());
    m.insert("fleet", fields::<super::fleet::RawFleet>().to_vec());
    m
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_section_has_its_keys() {
        let known = super::known_keys();
        let mut sections: Vec<&str> = super::SECTIONS.to_vec();
        sections.push("(top)");
        sections.sort();
        assert_eq!(known.keys().copied().collect::<Vec<_>>(), sections);
        assert!(known["upstream"].contains(&"max_concurrency_per_credential"));
        assert!(known["guard"].contains(&"values") && !known["guard"].contains(&"rule"));
    }
}
