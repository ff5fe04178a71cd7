//! `POST /testcase/<id>/Results/add`: new-object maps in `CollectionItems` become results of
//! that test case. Each new result is decided like a single create; refs to existing results
//! pass as they are. A refusal refuses the whole request (nothing is forwarded).

use bytes::Bytes;
use serde_json::Value;

use super::decide::Decision;
use super::envelope::{self, BodyError};
use super::{Interceptor, Outcome, WriteCtx, answer};
use crate::error::ProxyError;

/// Handles one `Results/add` request for `test_case`.
pub async fn handle(
    icpt: &Interceptor,
    w: &WriteCtx<'_>,
    test_case: &str,
    parts: http::request::Parts,
    body: Bytes,
) -> Result<Outcome, ProxyError> {
    let map = envelope::parse(&body).map_err(|e| w.bad(e))?;
    let items = map
        .get("CollectionItems")
        .and_then(Value::as_array)
        .ok_or_else(|| w.bad(BodyError::Items))?;
    let shadow = icpt.shadow();
    let mut out_items = Vec::new();
    let mut all_filled = Vec::new();
    let mut decision_label = "allowed";
    for item in items {
        let Some(fields) = item.as_object() else {
            return Err(w.bad(BodyError::Items));
        };
        // An existing result's ref is not a new result: pass it as it is.
        if fields.len() == 1 && fields.contains_key("_ref") {
            out_items.push(item.clone());
            continue;
        }
        let d = icpt
            .decide(w, "results_add", fields, Some(test_case.to_string()), true)
            .await;
        match d {
            Decision::Refuse { code, message } if !shadow => {
                return Err(ProxyError::Refused {
                    status: icpt.cfg.intercept.block_status,
                    kind: w.kind,
                    code,
                    message,
                });
            }
            Decision::Forward {
                fields,
                filled,
                decision,
            } => {
                out_items.push(Value::Object(fields));
                all_filled.extend(filled);
                if decision != "allowed" {
                    decision_label = decision;
                }
            }
            Decision::Refuse { .. } => out_items.push(item.clone()),
        }
    }
    if shadow {
        return Ok(Outcome::forward(parts, body));
    }
    let mut m = map.clone();
    m.insert("CollectionItems".into(), Value::Array(out_items));
    Ok(Outcome::Forward {
        parts,
        body: answer::to_bytes(&Value::Object(m)),
        headers: answer::decoration(&all_filled, decision_label),
    })
}
