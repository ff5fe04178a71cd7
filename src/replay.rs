//! `rally-sidecar journal replay`: re-sends writes the journal holds as unconfirmed, with a
//! credential from the environment (`RALLY_API_KEY`). Each one is first looked for by its
//! fingerprint — it may have landed after all — and only written again if absent; then read
//! back. Each row ends confirmed, or stays unconfirmed with the new cause.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use serde_json::Value;

use crate::config::Config;
use crate::confirm::{self, Expected, Fate, Kind, rally::RallyWrite};
use crate::credential::Fingerprinter;
use crate::journal::{Journal, Row, State};
use crate::proxy::Proxy;
use crate::server::ConnInfo;

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

/// The sidecar's machinery used from a command (`journal replay`, `sweep`) rather than for a
/// client: a proxy for the configured upstream, and an API key as the credential.
pub struct Standalone {
    pub proxy: Proxy,
    /// `ZSESSIONID` and `Content-Type` for every request the command makes.
    pub headers: HeaderMap,
    pub cred: crate::credential::Credential,
    pub conn: ConnInfo,
}

impl Standalone {
    pub fn new(cfg: Arc<Config>, api_key: &str) -> Result<Standalone, String> {
        let (client, _) =
            crate::proxy::upstream::build(&cfg.upstream).map_err(|e| e.to_string())?;
        let proxy = Proxy::new(
            cfg,
            client,
            Arc::new(crate::metrics::Metrics::new()),
            Arc::new(crate::intercept::context::BuildContext::default()),
            None,
        )
        .map_err(|e| e.to_string())?;
        let mut headers = HeaderMap::new();
        headers.insert(
            "zsessionid",
            HeaderValue::from_str(api_key)
                .map_err(|_| "RALLY_API_KEY is not a valid header value")?,
        );
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let cred = Fingerprinter::new().of(&headers).ok_or("no credential")?;
        let conn = ConnInfo {
            peer: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            local: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: false,
        };
        Ok(Standalone {
            proxy,
            headers,
            cred,
            conn,
        })
    }
}

/// Replays `rows` (only unconfirmed ones are touched).
pub async fn replay(
    cfg: Arc<Config>,
    journal: &Journal,
    rows: Vec<Row>,
    api_key: &str,
) -> Result<Vec<Replayed>, String> {
    let Standalone {
        proxy,
        headers,
        cred,
        conn,
    } = Standalone::new(cfg.clone(), api_key)?;
    let lookups = proxy.lookups().ok_or("no lookups")?;
    let mut out = Vec::new();
    for row in rows.into_iter().filter(|r| r.state == State::Unconfirmed) {
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
            out.push(Replayed {
                id: row.id,
                state: State::Unconfirmed,
                object_id: None,
                adopted: false,
                detail: format!("bad stored path {}", row.path),
            });
            continue;
        };
        let up = RallyWrite {
            proxy: &proxy,
            lookups,
            cred: &cred,
            method: if row.operation == "update" {
                Method::POST
            } else {
                Method::PUT
            },
            uri,
            headers: headers.clone(),
            body: bytes::Bytes::from(row.body.clone()),
            conn,
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
        out.push(r);
    }
    Ok(out)
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
