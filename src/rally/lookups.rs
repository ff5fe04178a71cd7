//! The sidecar's own reads from Rally, made with the caller's credential so they see exactly
//! what the caller may see: the target TestCase for the guard (cached per credential
//! fingerprint and test case for `guard.cache_ttl`, concurrent misses coalesced into one read),
//! the credential's owner for Tester (cached per fingerprint), a result's current TestCase for
//! updates, and — for confirmation — a result read back by ObjectID and results searched by
//! fingerprint. A failed read (Rally unreachable, a timeout, the credential refused) is not
//! cached as an answer, but remembered briefly for its credential (`guard.failure_cache_ttl`):
//! meanwhile that credential's guard, owner and update-target lookups fail at once, so a batch
//! of 500 results under a bogus key costs one upstream read, not a thousand.

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
    reads: Arc<super::coalesce::Coalescer>,
    /// Attributes of TestCase the guard needs (rule fields included).
    fetch: String,
    test_cases: Cache<(String, String), Arc<Lookup>>,
    owners: Cache<String, Arc<User>>,
    /// Credentials (by fingerprint) whose last lookup failed, and why: remembered briefly
    /// (`guard.failure_cache_ttl`) so that a bogus key does not make every request cost reads.
    failures: Cache<String, Arc<String>>,
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
            reads: super::coalesce::Coalescer::new(rally.clone()),
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
            failures: failure_cache(Duration::from_secs(5)),
        }
    }

    /// Remembers a credential's failed lookup for `ttl` (zero: not at all).
    pub fn remember_failures(mut self, ttl: Duration) -> Lookups {
        self.failures = failure_cache(ttl);
        self
    }

    /// Why this credential's lookups fail at the moment, if they do.
    async fn failing(&self, cred: &Credential) -> Option<String> {
        self.failures
            .get(cred.fingerprint())
            .await
            .map(|e| format!("{e} (a lookup with this credential failed moments ago)"))
    }

    async fn failed(&self, cred: &Credential, error: &str) {
        self.failures
            .insert(cred.fingerprint().to_string(), Arc::new(error.to_string()))
            .await;
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
        if let Some(e) = self.failing(cred).await {
            return Lookup::Failed(e);
        }
        let key = (cred.fingerprint().to_string(), id.to_string());
        match self
            .test_cases
            .try_get_with(key, self.fetch_test_case(cred, id))
            .await
        {
            Ok(found) => (*found).clone(),
            Err(e) => {
                self.failed(cred, &e).await;
                Lookup::Failed((*e).clone())
            }
        }
    }

    /// Whether a lookup with this credential failed moments ago: [`Lookups::owner`] would
    /// answer from that memory, so there is no point in asking it again yet.
    pub fn owner_unknown(&self, cred: &Credential) -> bool {
        self.failures.contains_key(cred.fingerprint())
    }

    /// The caller's Rally user (cached per credential): the Tester a result gets when it
    /// names none, and who the journal says wrote it. Once known, the credential's requests
    /// count against that user's slots (Rally's cap is per user, whatever the key).
    pub async fn owner(&self, cred: &Credential) -> Result<User, String> {
        if let Some(e) = self.failing(cred).await {
            return Err(e);
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
                self.failed(cred, &e).await;
                return Err((*e).clone());
            }
        };
        self.rally.learn_user(cred, &user.reference);
        Ok(user)
    }

    /// The TestCase id a stored result belongs to (for the guard on updates).
    pub async fn result_test_case(&self, cred: &Credential, result_id: &str) -> Option<String> {
        if self.failing(cred).await.is_some() {
            return None;
        }
        let (_, json) = match self
            .get_json(cred, &format!("testcaseresult/{result_id}?fetch=TestCase"))
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                self.failed(cred, &e.to_string()).await;
                return None;
            }
        };
        json.get("TestCaseResult")
            .and_then(|r| r.get("TestCase"))
            .and_then(parse_ref)
            .map(|(_, id)| id)
    }

    /// A stored result read back (a follow-up of a write already sent): with the next coalesced
    /// round of its user's read-backs in `workspace` when one is given, else by ObjectID.
    pub async fn read_result(
        &self,
        cred: &Credential,
        object_id: i64,
        workspace: Option<&str>,
    ) -> ReadBack {
        if let Some(ws) = workspace {
            return self.reads.read(cred, ws, object_id).await;
        }
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
        self.find_results_in(cred, query, None).await
    }

    /// [`Lookups::find_results`] over the whole of `workspace` when it is known (a query
    /// without one searches the user's default workspace only, and would miss a result written
    /// to another — then write it twice).
    pub async fn find_results_in(
        &self,
        cred: &Credential,
        query: &str,
        workspace: Option<&str>,
    ) -> Result<Vec<i64>, String> {
        let q = percent_encoding::utf8_percent_encode(query, percent_encoding::NON_ALPHANUMERIC);
        let scope = workspace
            .map(|w| format!("&workspace=/workspace/{w}&project=null"))
            .unwrap_or_default();
        let (status, json) = self
            .rally
            .get_json(
                cred,
                &format!("testcaseresult?query={q}&fetch=ObjectID&pagesize=200{scope}"),
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

fn failure_cache(ttl: Duration) -> Cache<String, Arc<String>> {
    Cache::builder()
        .max_capacity(10_000)
        .time_to_live(ttl.max(Duration::from_millis(1)))
        .build()
}

/// The first entry of the first root value's `Errors`.
pub(crate) fn first_error(json: &Value) -> Option<String> {
    json.as_object()?
        .values()
        .next()?
        .get("Errors")?
        .as_array()?
        .first()?
        .as_str()
        .map(str::to_string)
}
