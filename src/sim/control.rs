//! The control API under `/__sim/` (on the simulator's own port, no Rally credentials): the
//! statistics tests assert on, every stored object of a type, the fault knobs and behaviour
//! switches changed live (partial JSON; a fault `profile` name sets the base), and a reset.
//! It is not WSAPI: its answers are plain JSON and its errors are HTTP 4xx.

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::faults::FaultConfig;
use super::model::Type;
use super::respond::Reply;
use super::{Simulator, Switches};

const USAGE: &str =
    "control API: GET stats, GET|POST faults, GET|POST switches, POST reset, GET objects/<type>";

fn bad_request(msg: impl Into<String>) -> Reply {
    Reply::Json(StatusCode::BAD_REQUEST, json!({"error": msg.into()}))
}

fn ok(v: impl Serialize) -> Reply {
    Reply::Json(
        StatusCode::OK,
        serde_json::to_value(v).unwrap_or(Value::Null),
    )
}

/// `base` with the fields `patch` names replaced: knobs not given keep their value.
fn merged<T: Serialize + DeserializeOwned>(base: &T, patch: &Value) -> Result<T, String> {
    let mut merged = serde_json::to_value(base).map_err(|e| e.to_string())?;
    if let (Some(m), Some(p)) = (merged.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            m.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(merged).map_err(|e| e.to_string())
}

impl Simulator {
    pub(super) fn control(&self, method: &Method, rest: &str, body: &Bytes, origin: &str) -> Reply {
        let patch = || -> Result<Value, Reply> {
            serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid JSON: {e}")))
        };
        match (method, rest.trim_end_matches('/')) {
            (&Method::GET, "stats") => ok(self.stats()),
            (&Method::GET, "faults") => ok(self.faults()),
            (&Method::POST, "faults") => {
                let mut patch = match patch() {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                // A profile replaces every knob; the other fields given then refine it.
                let base = match patch.as_object_mut().and_then(|m| m.remove("profile")) {
                    None => Ok(self.faults()),
                    Some(Value::String(name)) => FaultConfig::profile(&name),
                    Some(other) => Err(format!("profile must be a name, not {other}")),
                };
                match base
                    .and_then(|b| merged(&b, &patch))
                    .and_then(|f| self.set_faults(f.clone()).map(|_| f))
                {
                    Ok(f) => ok(f),
                    Err(e) => bad_request(e),
                }
            }
            (&Method::GET, "switches") => ok(self.switches()),
            (&Method::POST, "switches") => {
                let patch = match patch() {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                match merged::<Switches>(&self.switches(), &patch) {
                    Ok(s) => {
                        self.set_switches(s.clone());
                        ok(s)
                    }
                    Err(e) => bad_request(e),
                }
            }
            (&Method::POST, "reset") => {
                self.reset();
                ok(json!({"reset": true}))
            }
            (&Method::GET, path) if path.starts_with("objects/") => {
                match Type::parse(&path["objects/".len()..]) {
                    Some(t) => ok(json!({"Type": t.name(), "Results": self.objects(t, origin)})),
                    None => Reply::Json(StatusCode::NOT_FOUND, json!({"error": "unknown type"})),
                }
            }
            _ => Reply::Json(StatusCode::NOT_FOUND, json!({"error": USAGE})),
        }
    }
}
