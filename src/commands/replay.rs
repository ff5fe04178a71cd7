//! `rally-sidecar journal replay`: re-sends writes the journal holds as unconfirmed, with a
//! credential from the environment (`RALLY_API_KEY`). Each one is first looked for by its
//! fingerprint — it may have landed after all — and only written again if absent; then read
//! back. Each row ends confirmed, or stays unconfirmed with the new cause.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use serde_json::Value;

use crate::config::Config;
use crate::confirm::{self, Expected, Fate, Kind, rally::RallyWrite};
use crate::journal::{Journal, Row, State};
use crate::rally::Session;
use crate::rally::credential::Operator;

/// What happened to one row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replayed {
    pub id: i64,
    pub state: State,
    pub object_id: Option<i64>,
    pub adopted: bool,
    pub detail: String,
}

/// Removes the `key=` security token (basic-auth sessions do not survive; API keys need none).
fn without_key(path: &str) -> String {
    let Some((p, q)) = path.split_once('?') else {
        return path.to_string();
    };
    let kept: Vec<&str> = q
        .split('&')
        .filter(|kv| !kv.to_ascii_lowercase().starts_with("key="))
        .collect();
    if kept.is_empty() {
        p.to_string()
    } else {
        format!("{p}?{}", kept.join("&"))
    }
}

/// Replays `rows` (only unconfirmed ones are touched), as many at once as the credential's
/// upstream slots (`upstream.max_concurrency_per_credential`); results come newest first,
/// as `journal list` shows rows.
pub async fn replay(
    cfg: Arc<Config>,
    journal: &Journal,
    rows: Vec<Row>,
    api_key: &str,
) -> Result<Vec<Replayed>, String> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let ctx = Session::new(&cfg, &Operator::ApiKey(api_key.to_string()))?;
    let at_once = cfg.upstream.max_concurrency_per_credential.max(1);
    let ctx = &ctx;
    let cfg = &cfg;
    // Rows for the same result (same fingerprint: the client sent it twice) go in separate
    // rounds, so the second finds what the first wrote instead of racing it.
    let mut left: Vec<Row> = rows
        .into_iter()
        .filter(|r| r.state == State::Unconfirmed)
        .collect();
    let mut out = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let mut seen = std::collections::HashSet::new();
        let (now, later): (Vec<Row>, Vec<Row>) = left
            .into_iter()
            .partition(|r| seen.insert(fingerprint_of(r).unwrap_or_else(|| r.id.to_string())));
        let done: Vec<Replayed> = stream::iter(now)
            .map(|row| replay_row(cfg, ctx, journal, row))
            .buffered(at_once)
            .try_collect()
            .await?;
        out.extend(done);
        left = later;
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.id));
    Ok(out)
}

/// The fingerprint query of a row's result, if it can be built.
fn fingerprint_of(row: &Row) -> Option<String> {
    let body: Value = serde_json::from_str(&row.body).ok()?;
    let fields = body.as_object()?.values().next()?.as_object()?;
    confirm::fingerprint_query(&Expected::from_fields(fields))
}

/// Looks for one row's result, writes it again only if absent, reads it back, settles the row.
async fn replay_row(
    cfg: &Arc<Config>,
    ctx: &Session,
    journal: &Journal,
    row: Row,
) -> Result<Replayed, String> {
    let body: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
    let fields = body
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let expected = Expected::from_fields(&fields);
    let uri = format!("{}{}", cfg.upstream.origin_string(), without_key(&row.path));
    let Ok(uri) = uri.parse() else {
        return Ok(Replayed {
            id: row.id,
            state: State::Unconfirmed,
            object_id: None,
            adopted: false,
            detail: format!("bad stored path {}", row.path),
        });
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    ctx.cred.apply(&mut headers);
    let up = RallyWrite {
        lookups: &ctx.lookups,
        cred: &ctx.cred,
        method: if row.operation == "update" {
            Method::POST
        } else {
            Method::PUT
        },
        uri,
        headers,
        body: bytes::Bytes::from(row.body.clone()),
        ctx: None,
    };
    let kind = if row.operation == "update" {
        Kind::Update
    } else {
        Kind::Create
    };
    let fate = confirm::confirm(
        &up,
        kind,
        kind == Kind::Create,
        &expected,
        &cfg.confirm.policy,
        rand::random::<f64>,
        std::future::pending(),
    )
    .await;
    let r = match fate {
        Fate::Confirmed {
            object_id,
            attempts,
            adopted,
            ..
        } => {
            let detail = if adopted {
                "found in Rally by its fingerprint"
            } else {
                "written and read back"
            };
            journal
                .settle(
                    row.id,
                    State::Confirmed,
                    attempts,
                    Some(format!("replayed: {detail}")),
                    Some(object_id),
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            Replayed {
                id: row.id,
                state: State::Confirmed,
                object_id: Some(object_id),
                adopted,
                detail: detail.into(),
            }
        }
        Fate::Rejected {
            attempts, cause, ..
        }
        | Fate::Unconfirmed {
            attempts, cause, ..
        } => {
            journal
                .settle(
                    row.id,
                    State::Unconfirmed,
                    attempts,
                    Some(format!("replay: {cause}")),
                    None,
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            Replayed {
                id: row.id,
                state: State::Unconfirmed,
                object_id: None,
                adopted: false,
                detail: cause,
            }
        }
    };
    Ok(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stored_token_is_not_replayed() {
        assert_eq!(
            super::without_key("/x/create?key=[redacted]&workspace=/workspace/1"),
            "/x/create?workspace=/workspace/1"
        );
        assert_eq!(super::without_key("/x/create?key=None"), "/x/create");
        assert_eq!(super::without_key("/x/create"), "/x/create");
    }
}
