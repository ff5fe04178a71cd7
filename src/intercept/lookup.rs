//! The sidecar's own reads from Rally, made with the caller's credential so they see exactly
//! what the caller may see: the target TestCase for the guard (cached per credential
//! fingerprint and test case for `guard.cache_ttl`, concurrent misses coalesced into one read),
//! the credential's owner for Tester (cached per fingerprint), and a result's current TestCase
//! for updates. Failed reads are never cached.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use moka::future::Cache;
use serde_json::{Map, Value};

use super::guard::Lookup;
use crate::credential::Credential;
use crate::governor::Governor;
use crate::proxy::upstream::UpstreamClient;

use crate::wsapi::SERVICE_ROOT;

/// Largest answer a lookup reads.
const MAX_LOOKUP_BODY: usize = 4 * 1024 * 1024;

pub struct Lookups {
    client: UpstreamClient,
    governor: Arc<Governor>,
    origin: String,
    authority: HeaderValue,
    timeout: Duration,
    /// Attributes of TestCase the guard needs (rule fields included).
    fetch: String,
    test_cases: Cache<(String, String), Arc<Lookup>>,
    owners: Cache<String, Arc<String>>,
}

/// An answer the sidecar could not use.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct LookupError(pub String);

impl Lookups {
    pub fn new(
        client: UpstreamClient,
        governor: Arc<Governor>,
        origin: String,
        authority: HeaderValue,
        timeout: Duration,
        rule_fields: &[String],
        ttl: Duration,
    ) -> Lookups {
        let mut fields = vec![
            "FormattedID",
            "Name",
            "Recycled",
            "Project",
            "State",
            "Workspace",
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
        for f in rule_fields {
            if !fields.contains(f) {
                fields.push(f.clone());
            }
        }
        Lookups {
            client,
            governor,
            origin,
            authority,
            timeout,
            fetch: fields.join(","),
            test_cases: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
            owners: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
        }
    }

    /// GET `<service root>/<path_and_query>` with the caller's credential, within the caller's
    /// governor slots; the status and JSON.
    pub async fn get_json(
        &self,
        cred: &Credential,
        path_and_query: &str,
    ) -> Result<(StatusCode, Value), LookupError> {
        self.get_json_as(cred, path_and_query, crate::governor::Priority::Normal)
            .await
    }

    /// [`Lookups::get_json`] waiting in the given governor queue (read-backs and fingerprint
    /// searches of writes already sent are follow-ups).
    pub async fn get_json_as(
        &self,
        cred: &Credential,
        path_and_query: &str,
        priority: crate::governor::Priority,
    ) -> Result<(StatusCode, Value), LookupError> {
        let uri = format!("{}{SERVICE_ROOT}/{path_and_query}", self.origin);
        let mut req = Request::get(uri)
            .body(
                Full::new(Bytes::new())
                    .map_err(crate::server::box_never)
                    .boxed_unsync(),
            )
            .map_err(|e| LookupError(e.to_string()))?;
        let h = req.headers_mut();
        h.insert(header::HOST, self.authority.clone());
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        h.insert("x-rally-sidecar-lookup", HeaderValue::from_static("1"));
        cred.apply(h);
        let _slot = self
            .governor
            .acquire_as(cred.fingerprint(), priority)
            .await
            .map_err(|e| LookupError(e.to_string()))?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| LookupError(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| LookupError(crate::proxy::error_chain(&e)))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_LOOKUP_BODY)
            .collect()
            .await
            .map_err(|e| LookupError(format!("reading the answer: {e}")))?
            .to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status, json))
    }

    async fn fetch_test_case(
        &self,
        cred: &Credential,
        id: &str,
    ) -> Result<Arc<Lookup>, LookupError> {
        let (status, json) = self
            .get_json(cred, &format!("testcase/{id}?fetch={}", self.fetch))
            .await?;
        if status != StatusCode::OK {
            return Err(LookupError(format!(
                "Rally answered {status} to the test case read"
            )));
        }
        if let Some(tc) = json.get("TestCase").and_then(Value::as_object) {
            let mut tc = tc.clone();
            self.complete_project(cred, &mut tc).await;
            return Ok(Arc::new(Lookup::Found(tc)));
        }
        match first_error(&json) {
            Some(e) => Ok(Arc::new(Lookup::NotReadable(e))),
            None => Err(LookupError(
                "Rally's answer to the test case read had no TestCase".into(),
            )),
        }
    }

    /// If the nested Project lacks `State` (a fetch that did not reach it), read the project.
    async fn complete_project(&self, cred: &Credential, tc: &mut Map<String, Value>) {
        let Some(project) = tc.get("Project").and_then(Value::as_object) else {
            return;
        };
        if project.contains_key("State") {
            return;
        }
        let Some(id) = project
            .get("_ref")
            .and_then(Value::as_str)
            .and_then(super::context::scope_id)
        else {
            return;
        };
        if let Ok((StatusCode::OK, json)) = self
            .get_json(cred, &format!("project/{id}?fetch=Name,State"))
            .await
            && let Some(p) = json.get("Project").cloned()
        {
            tc.insert("Project".into(), p);
        }
    }

    /// The TestCase a write targets, as the caller sees it.
    pub async fn test_case(&self, cred: &Credential, id: &str) -> Lookup {
        let key = (cred.fingerprint().to_string(), id.to_string());
        match self
            .test_cases
            .try_get_with(key, self.fetch_test_case(cred, id))
            .await
        {
            Ok(found) => (*found).clone(),
            Err(e) => Lookup::Failed(e.0.clone()),
        }
    }

    /// The caller's own user ref (`/user/<oid>`), for Tester.
    pub async fn owner(&self, cred: &Credential) -> Result<String, LookupError> {
        let fetch = async {
            let (status, json) = self.get_json(cred, "user?fetch=ObjectID,UserName").await?;
            let oid = json.get("User").and_then(|u| u.get("ObjectID"));
            let oid = match oid {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                _ => {
                    return Err(LookupError(format!(
                        "Rally answered {status} without the current user"
                    )));
                }
            };
            Ok(Arc::new(format!("/user/{oid}")))
        };
        self.owners
            .try_get_with(cred.fingerprint().to_string(), fetch)
            .await
            .map(|s| (*s).clone())
            .map_err(|e| (*e).clone())
    }

    /// The TestCase id a stored result belongs to (for the guard on updates).
    pub async fn result_test_case(
        &self,
        cred: &Credential,
        result_id: &str,
    ) -> Result<Option<String>, LookupError> {
        let (_, json) = self
            .get_json(cred, &format!("testcaseresult/{result_id}?fetch=TestCase"))
            .await?;
        Ok(json
            .get("TestCaseResult")
            .and_then(|r| r.get("TestCase"))
            .and_then(super::envelope::parse_ref)
            .map(|(_, id)| id))
    }
}

/// The first entry of the first root value's `Errors`.
pub fn first_error(json: &Value) -> Option<String> {
    json.as_object()?
        .values()
        .next()?
        .get("Errors")?
        .as_array()?
        .first()?
        .as_str()
        .map(str::to_string)
}
