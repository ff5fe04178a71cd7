//! The sidecar's own reads from Rally, made with the caller's credential so they see exactly
//! what the caller may see: the target TestCase for the guard (cached per credential
//! fingerprint and test case for `guard.cache_ttl`, concurrent misses coalesced into one read),
//! the credential's owner for Tester (cached per fingerprint), a result's current TestCase for
//! updates, and — for confirmation — a result read back by ObjectID and results searched by
//! fingerprint. Failed reads are never cached.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use moka::future::Cache;
use serde_json::{Map, Value};

use super::Rally;
use super::credential::Credential;
use super::governor::Priority;
use crate::error::ProxyError;
use crate::wsapi::{parse_ref, scope_id};

/// Reads made on behalf of callers, with their caches.
pub struct Lookups {
    rally: Arc<Rally>,
    /// Attributes of TestCase the guard needs (rule fields included).
    fetch: String,
    test_cases: Cache<(String, String), Arc<Lookup>>,
    owners: Cache<String, Arc<User>>,
    /// Credentials Rally would not name a user for, remembered briefly so that a bogus key
    /// does not make every request cost another read.
    unknown: Cache<String, Arc<String>>,
}

/// A Rally user, as the sidecar names writers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `/user/<ObjectID>`: also the Tester ref.
    pub reference: String,
    pub name: Option<String>,
}

/// What a read of the TestCase (with the caller's credential) returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The TestCase's attributes (with `Project` fetched, including its `State`).
    Found(Map<String, Value>),
    /// Rally answered, but the TestCase is not readable; Rally's error text.
    NotReadable(String),
    /// The lookup itself failed (transport, timeout, unexpected answer).
    Failed(String),
}

/// A read-back's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadBack {
    Found(Map<String, Value>),
    NotFound,
    Failed(String),
}

impl Lookups {
    pub fn new(rally: Arc<Rally>, rule_fields: &[String], ttl: Duration) -> Lookups {
        let mut fields: Vec<String> = [
            "FormattedID",
            "Name",
            "Recycled",
            "Project",
            "State",
            "Workspace",
        ]
        .into_iter()
        .map(str::to_string)
        .collect();
        for f in rule_fields {
            if !fields.contains(f) {
                fields.push(f.clone());
            }
        }
        Lookups {
            rally,
            fetch: fields.join(","),
            test_cases: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
            owners: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            unknown: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
        }
    }

    /// The client these reads go through.
    pub fn rally(&self) -> &Arc<Rally> {
        &self.rally
    }

    /// A GET as a new request (see [`Rally::get_json`]).
    pub async fn get_json(
        &self,
        cred: &Credential,
        path_and_query: &str,
    ) -> Result<(StatusCode, Value), ProxyError> {
        self.rally
            .get_json(cred, path_and_query, Priority::Normal)
            .await
    }

    async fn fetch_test_case(&self, cred: &Credential, id: &str) -> Result<Arc<Lookup>, String> {
        let (status, json) = self
            .get_json(cred, &format!("testcase/{id}?fetch={}", self.fetch))
            .await
            .map_err(|e| e.to_string())?;
        if status != StatusCode::OK {
            return Err(format!("Rally answered {status} to the test case read"));
        }
        if let Some(tc) = json.get("TestCase").and_then(Value::as_object) {
            let mut tc = tc.clone();
            self.complete_project(cred, &mut tc).await;
            return Ok(Arc::new(Lookup::Found(tc)));
        }
        match first_error(&json) {
            Some(e) => Ok(Arc::new(Lookup::NotReadable(e))),
            None => Err("Rally's answer to the test case read had no TestCase".into()),
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
            .and_then(scope_id)
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
            Err(e) => Lookup::Failed((*e).clone()),
        }
    }

    /// Whether Rally recently would not name this credential's user: [`Lookups::owner`] would
    /// answer from that memory, so there is no point in asking it again yet.
    pub fn owner_unknown(&self, cred: &Credential) -> bool {
        self.unknown.contains_key(cred.fingerprint())
    }

    /// The caller's Rally user (cached per credential): the Tester a result gets when it
    /// names none, and who the journal says wrote it. Once known, the credential's requests
    /// count against that user's slots (Rally's cap is per user, whatever the key).
    pub async fn owner(&self, cred: &Credential) -> Result<User, String> {
        if let Some(why) = self.unknown.get(cred.fingerprint()).await {
            return Err((*why).clone());
        }
        let fetch = async {
            let (status, json) = self
                .get_json(cred, "user?fetch=ObjectID,UserName")
                .await
                .map_err(|e| e.to_string())?;
            let user = json.get("User");
            let oid = match user.and_then(|u| u.get("ObjectID")) {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                _ => return Err(format!("Rally answered {status} without the current user")),
            };
            let name = user
                .and_then(|u| u.get("UserName"))
                .and_then(Value::as_str)
                .map(str::to_string);
            Ok(Arc::new(User {
                reference: format!("/user/{oid}"),
                name,
            }))
        };
        let user = match self
            .owners
            .try_get_with(cred.fingerprint().to_string(), fetch)
            .await
        {
            Ok(u) => (*u).clone(),
            Err(e) => {
                self.unknown
                    .insert(cred.fingerprint().to_string(), e.clone())
                    .await;
                return Err((*e).clone());
            }
        };
        self.rally.learn_user(cred, &user.reference);
        Ok(user)
    }

    /// The TestCase id a stored result belongs to (for the guard on updates).
    pub async fn result_test_case(&self, cred: &Credential, result_id: &str) -> Option<String> {
        let (_, json) = self
            .get_json(cred, &format!("testcaseresult/{result_id}?fetch=TestCase"))
            .await
            .ok()?;
        json.get("TestCaseResult")
            .and_then(|r| r.get("TestCase"))
            .and_then(parse_ref)
            .map(|(_, id)| id)
    }

    /// A stored result, read back by ObjectID (a follow-up of a write already sent).
    pub async fn read_result(&self, cred: &Credential, object_id: i64) -> ReadBack {
        let path = format!("testcaseresult/{object_id}?fetch=TestCase,Build,Date,Verdict,Tester");
        match self.rally.get_json(cred, &path, Priority::FollowUp).await {
            Ok((_, json)) => match json.get("TestCaseResult").and_then(Value::as_object) {
                Some(r) => ReadBack::Found(r.clone()),
                None => match first_error(&json) {
                    Some(e) if e.contains("Cannot find") || e.contains("not found") => {
                        ReadBack::NotFound
                    }
                    Some(e) => ReadBack::Failed(e),
                    None => ReadBack::Failed("an answer without the result".into()),
                },
            },
            Err(e) => ReadBack::Failed(e.to_string()),
        }
    }

    /// The ObjectIDs of the results a query finds (a fingerprint search of a write already
    /// sent).
    pub async fn find_results(&self, cred: &Credential, query: &str) -> Result<Vec<i64>, String> {
        let q = percent_encoding::utf8_percent_encode(query, percent_encoding::NON_ALPHANUMERIC);
        let (status, json) = self
            .rally
            .get_json(
                cred,
                &format!("testcaseresult?query={q}&fetch=ObjectID&pagesize=200"),
                Priority::FollowUp,
            )
            .await
            .map_err(|e| e.to_string())?;
        let r = json
            .get("QueryResult")
            .ok_or_else(|| format!("Rally answered {status} without a QueryResult"))?;
        if let Some(e) = r
            .get("Errors")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            return Err(e.as_str().unwrap_or("query error").to_string());
        }
        Ok(r.get("Results")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|o| o.get("ObjectID").and_then(Value::as_i64))
                    .collect()
            })
            .unwrap_or_default())
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
