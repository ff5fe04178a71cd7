//! The caller's credential, as the sidecar may use it: copied onto the sidecar's own reads
//! (so every lookup sees exactly what the caller may see) and summarised as a fingerprint — a
//! keyed hash (HMAC-SHA256 under a per-process random key) used as a cache key and, later, in
//! the journal. The credential itself is never stored, logged, or compared in the clear.

use hmac::{Hmac, KeyInit, Mac};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

/// Headers that carry a Rally credential; copied onto the sidecar's reads for this caller.
const CREDENTIAL_HEADERS: &[HeaderName] = &[header::AUTHORIZATION, header::COOKIE];

/// A caller's credential material and its fingerprint.
#[derive(Clone)]
pub struct Credential {
    headers: Vec<(HeaderName, HeaderValue)>,
    fingerprint: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Computes fingerprints; one per process, its key random.
pub(crate) struct Fingerprinter {
    /// The HMAC with its key already absorbed: cloned per fingerprint, which saves hashing
    /// the key's two padded blocks on every request.
    keyed: Hmac<Sha256>,
}

impl Default for Fingerprinter {
    fn default() -> Self {
        Self::new()
    }
}

impl Fingerprinter {
    pub(crate) fn new() -> Self {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Fingerprinter::with_key(key)
    }

    /// Digests keyed by `key`: the journal's secret, so that they mean the same credential in
    /// every process that opens the journal.
    pub(crate) fn with_key(key: [u8; 32]) -> Self {
        // HMAC pads a key shorter than the hash's block with zeros: padding it here gives
        // the same digests as `new_from_slice(&key)`, without a fallible call.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&key);
        Fingerprinter {
            keyed: <Hmac<Sha256> as KeyInit>::new(&block.into()),
        }
    }

    /// Extracts the credential a request carries: `ZSESSIONID` (API key or OAuth token), basic
    /// `Authorization`, or the SSO session cookie `ZSESSIONID`. Returns `None` for
    /// an anonymous request.
    pub(crate) fn of(&self, headers: &HeaderMap) -> Option<Credential> {
        let mut material: Vec<u8> = Vec::new();
        let mut copied = Vec::new();
        if let Some(v) = headers.get("zsessionid") {
            material.extend_from_slice(b"zsessionid\0");
            material.extend_from_slice(v.as_bytes());
            copied.push((HeaderName::from_static("zsessionid"), detached(v)));
        } else if let Some(v) = headers.get(header::AUTHORIZATION) {
            material.extend_from_slice(b"authorization\0");
            material.extend_from_slice(v.as_bytes());
        } else {
            for cookie in headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
            {
                for pair in cookie.split(';').map(str::trim) {
                    // The SSO session cookie authenticates; JSESSIONID alone does not (it only
                    // binds a basic-auth session), so a request carrying just that is anonymous.
                    if pair.starts_with("ZSESSIONID=") {
                        material.extend_from_slice(pair.as_bytes());
                        material.push(0);
                    }
                }
            }
        }
        if material.is_empty() {
            return None;
        }
        for name in CREDENTIAL_HEADERS {
            for v in headers.get_all(name) {
                copied.push((name.clone(), detached(v)));
            }
        }
        let mut mac = self.keyed.clone();
        mac.update(&material);
        let fingerprint = hex::encode(&mac.finalize().into_bytes()[..16]);
        Some(Credential {
            headers: copied,
            fingerprint,
        })
    }
}

/// A copy of a received header value. The value hyper parsed is a slice of the connection's
/// read buffer: a credential kept with it (by a held write, in a cache) would keep the whole
/// buffer (8 KiB) alive with it.
pub(crate) fn detached(v: &HeaderValue) -> HeaderValue {
    match HeaderValue::from_bytes(v.as_bytes()) {
        Ok(mut own) => {
            own.set_sensitive(v.is_sensitive());
            own
        }
        Err(_) => v.clone(),
    }
}

impl Credential {
    /// A short, non-reversible identifier of the credential.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Puts the credential on a request the sidecar makes for this caller.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (k, v) in &self.headers {
            headers.append(k.clone(), v.clone());
        }
    }
}

/// The credential an operator's command uses (`check`, `sweep`, `journal replay`, the periodic
/// sweep): `RALLY_API_KEY`, or `RALLY_USERNAME` and `RALLY_PASSWORD`. Read in this one place.
#[derive(Clone)]
pub enum Operator {
    ApiKey(String),
    Basic { user: String, password: String },
}

impl Operator {
    pub fn from_env() -> Option<Operator> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(k) = get("RALLY_API_KEY") {
            return Some(Operator::ApiKey(k));
        }
        Some(Operator::Basic {
            user: get("RALLY_USERNAME")?,
            password: get("RALLY_PASSWORD")?,
        })
    }

    /// The API key alone (replay and sweep write with an API key: a basic-auth session's
    /// security token does not outlive the session).
    pub fn api_key(&self) -> Option<&str> {
        match self {
            Operator::ApiKey(k) => Some(k),
            Operator::Basic { .. } => None,
        }
    }

    /// The request headers that carry it.
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        self.apply(&mut h);
        h
    }

    fn apply(&self, h: &mut HeaderMap) {
        match self {
            Operator::ApiKey(k) => {
                if let Ok(v) = HeaderValue::from_str(k) {
                    h.insert("zsessionid", v);
                }
            }
            Operator::Basic { user, password } => {
                use base64::Engine;
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                if let Ok(v) = HeaderValue::from_str(&format!("Basic {token}")) {
                    h.insert(header::AUTHORIZATION, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn distinct_credentials_distinct_fingerprints_and_no_clear_text() {
        let f = Fingerprinter::new();
        let a = f.of(&h(&[("zsessionid", "_alice")])).expect("a");
        let b = f.of(&h(&[("zsessionid", "_bob")])).expect("b");
        let c = f
            .of(&h(&[("authorization", "Basic Y2Fyb2w6cA==")]))
            .expect("c");
        let a2 = f
            .of(&h(&[("zsessionid", "_alice"), ("user-agent", "x")]))
            .expect("a2");
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.fingerprint(), a2.fingerprint());
        assert!(!format!("{a:?}").contains("_alice"));
        assert!(f.of(&h(&[("user-agent", "x")])).is_none());
        // Another process (another key) gives another fingerprint for the same key.
        assert_ne!(
            Fingerprinter::new()
                .of(&h(&[("zsessionid", "_alice")]))
                .expect("a")
                .fingerprint(),
            a.fingerprint()
        );
    }

    #[test]
    fn a_journal_key_names_a_credential_as_a_plain_hmac_does() {
        // The journal keeps digests made with its key: they must not change with how the
        // HMAC is set up.
        let key = [7u8; 32];
        let mut plain = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("any length");
        plain.update(b"zsessionid\0_alice");
        let expected = hex::encode(&plain.finalize().into_bytes()[..16]);
        let got = Fingerprinter::with_key(key)
            .of(&h(&[("zsessionid", "_alice")]))
            .expect("a credential");
        assert_eq!(got.fingerprint(), expected);
    }
}
