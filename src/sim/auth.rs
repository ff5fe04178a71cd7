//! Authentication the way Rally does it: an API key in the `ZSESSIONID` header, or HTTP basic
//! auth with a server-side session (cookies `JSESSIONID`, `ZSESSIONID`, `SUBBUCKETID`, KB 57528)
//! whose writes need the security token `GET /security/authorize` issued to that session. An
//! API key sent together with a live basic-auth session cookie is answered as that session (the
//! cookie wins, KB 127054), so its writes fail with `Invalid key` unless they carry the
//! session's token. Missing or bad credentials are a 401; a read-only key may only read.

use std::collections::HashMap;

use http::{HeaderMap, StatusCode, header};
use serde_json::json;

use super::respond::Reply;
use super::store::{Principal, Session};
use super::{Simulator, State};
use crate::wsapi::{Envelope, error_envelope};

/// Rally's answer to a write whose security token is missing, wrong or not this session's.
pub(super) const INVALID_KEY: &str = "Not authorized to perform action: Invalid key";

/// Outcome of authentication.
pub(super) enum Auth {
    /// Who is calling, and the session opened for this request (its cookies go on the answer).
    Ok(Principal, Option<String>),
    Missing,
    Bad,
}

/// The value of cookie `name` in the request, if sent.
pub(super) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The `Set-Cookie` values a new basic-auth session answers with. Not `Secure`: the simulator
/// also serves plain HTTP, where a client would drop such cookies.
pub(super) fn session_cookies(id: &str, session: &Session) -> Vec<String> {
    vec![
        format!("JSESSIONID={id}; Path=/; HttpOnly"),
        format!("ZSESSIONID={}; Path=/; HttpOnly", session.zsession),
        format!("SUBBUCKETID={}; Path=/", session.subbucket),
    ]
}

/// A UUID-like security token from the seeded dice, so runs stay reproducible.
fn uuid_token(st: &mut State) -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&st.dice.token().to_le_bytes());
    bytes[8..].copy_from_slice(&st.dice.token().to_le_bytes());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

impl Simulator {
    pub(super) fn authenticate(&self, st: &mut State, headers: &HeaderMap) -> Auth {
        if let Some(key) = headers.get("zsessionid").and_then(|v| v.to_str().ok()) {
            let Some(p) = st.store.user_for_key(key.trim()) else {
                return Auth::Bad;
            };
            if st.switches.session_cookie_beats_api_key
                && let Some(session) =
                    cookie(headers, "JSESSIONID").and_then(|sid| st.store.sessions.get(&sid))
            {
                return Auth::Ok(
                    Principal {
                        user: session.user,
                        read_only: false,
                        basic: true,
                    },
                    None,
                );
            }
            return Auth::Ok(p, None);
        }
        let Some(auth) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Auth::Missing;
        };
        let Some(encoded) = auth
            .strip_prefix("Basic ")
            .or_else(|| auth.strip_prefix("basic "))
        else {
            return Auth::Bad;
        };
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        let Some((user, pass)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return Auth::Bad;
        };
        let Some(p) = st.store.user_for_password(user, pass) else {
            return Auth::Bad;
        };
        // Keep the client's session if it is this user's; otherwise open one.
        let existing = cookie(headers, "JSESSIONID")
            .filter(|s| st.store.sessions.get(s).is_some_and(|x| x.user == p.user));
        match existing {
            Some(_) => Auth::Ok(p, None),
            None => {
                let sid = st.store.new_session(p.user);
                Auth::Ok(p, Some(sid))
            }
        }
    }

    /// `GET /security/authorize`: a new token, bound to the caller's session when it has one.
    pub(super) fn authorize(&self, headers: &HeaderMap, new_session: Option<&str>) -> Reply {
        let mut st = self.lock();
        let token = uuid_token(&mut st);
        let sid = new_session
            .map(str::to_string)
            .or_else(|| cookie(headers, "JSESSIONID"));
        if let Some(session) = sid.as_ref().and_then(|s| st.store.sessions.get_mut(s)) {
            session.token = Some(token.clone());
        }
        let mut env = error_envelope(Envelope::Operation, &[], &[]);
        env["OperationResult"]["SecurityToken"] = json!(token);
        Reply::Json(StatusCode::OK, env)
    }

    /// A basic-auth write must carry `key=<the token issued to this session>` and the session's
    /// cookie; a session opened by this very request cannot have a token yet.
    pub(super) fn token_ok(
        &self,
        headers: &HeaderMap,
        params: &HashMap<String, String>,
        new_session: Option<&str>,
    ) -> bool {
        if new_session.is_some() {
            return false;
        }
        let st = self.lock();
        let Some(sid) = cookie(headers, "JSESSIONID") else {
            return false;
        };
        let Some(session) = st.store.sessions.get(&sid) else {
            return false;
        };
        match (session.token.as_deref(), params.get("key")) {
            (Some(t), Some(k)) => t == k,
            _ => false,
        }
    }
}
