//! The `[admin]` section validated: the listener, the bearer token that guards the control and
//! data endpoints (from `admin.token_file`, a mounted Secret, or `RALLY_SIDECAR_ADMIN_TOKEN`),
//! and the rule that a listener off loopback never runs without one — the admin API changes
//! every user's builds and shows every user's writes, so it is refused at start, naming the key,
//! rather than served open to a network.

use std::fmt;
use std::net::SocketAddr;

use super::raw::{List, RawConfig};
use super::{ConfigError, DEFAULT_ADMIN_LISTEN, Overrides, defaults};

/// The shortest token accepted: guessing one must be hopeless.
pub(super) const MIN_TOKEN_LEN: usize = 16;

/// The admin bearer token. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// The token itself, for the one comparison that needs it and for clients that send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub enable_shutdown: bool,
    /// Required on every guarded endpoint when present.
    pub token: Option<AdminToken>,
    pub require_token: bool,
    /// Host names accepted in `Host` besides IP literals and `localhost` (lower case).
    pub allowed_hosts: Vec<String>,
}

impl AdminConfig {
    /// Whether the listener is reachable from loopback only.
    pub fn is_loopback(&self) -> bool {
        self.listen.ip().is_loopback()
    }
}

pub(super) fn validate(raw: &RawConfig, ov: &Overrides, e: &mut Vec<ConfigError>) -> AdminConfig {
    let a = &raw.admin;
    let text = ov
        .admin_listen
        .clone()
        .or_else(|| a.listen.clone())
        .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.into());
    let listen = super::validate::socket_addr("admin.listen", &text, e);
    let token = token(a.token.as_deref(), a.token_file.as_deref(), e);
    let require_token = a.require_token.unwrap_or(defaults::REQUIRE_TOKEN);
    let cfg = AdminConfig {
        listen,
        enable_shutdown: a.enable_shutdown.unwrap_or(defaults::ENABLE_SHUTDOWN),
        token,
        require_token,
        allowed_hosts: hosts(a.allowed_hosts.clone(), e),
    };
    if cfg.token.is_none() && !cfg.is_loopback() {
        e.push(err(
            "admin.token_file",
            format!(
                "the admin listener {listen} is not on loopback, so /context, /writes, /shutdown and \
                 the status page need a token: set admin.token_file (or RALLY_SIDECAR_ADMIN_TOKEN)"
            ),
        ));
    } else if cfg.token.is_none() && require_token {
        e.push(err(
            "admin.token_file",
            "admin.require_token = true needs a token: set admin.token_file (or RALLY_SIDECAR_ADMIN_TOKEN)"
                .into(),
        ));
    }
    cfg
}

fn err(key: &str, message: String) -> ConfigError {
    ConfigError {
        key: key.into(),
        message,
    }
}

fn token(
    inline: Option<&str>,
    file: Option<&std::path::Path>,
    e: &mut Vec<ConfigError>,
) -> Option<AdminToken> {
    let (key, text) = match (inline, file) {
        (Some(_), Some(_)) => {
            e.push(err(
                "admin.token_file",
                "give admin.token_file or RALLY_SIDECAR_ADMIN_TOKEN (admin.token), not both".into(),
            ));
            return None;
        }
        (Some(t), None) => ("admin.token", t.to_string()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(t) => ("admin.token_file", t),
            Err(x) => {
                e.push(err(
                    "admin.token_file",
                    format!("cannot read {}: {x}", path.display()),
                ));
                return None;
            }
        },
        (None, None) => return None,
    };
    // A Secret's file often ends with a newline; the token is what is between.
    let t = text.trim();
    if t.len() < MIN_TOKEN_LEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
        e.push(err(
            key,
            format!(
                "the token must be at least {MIN_TOKEN_LEN} printable ASCII characters without spaces \
                 (e.g. `openssl rand -hex 32`)"
            ),
        ));
        return None;
    }
    Some(AdminToken(t.to_string()))
}

fn hosts(list: Option<List>, e: &mut Vec<ConfigError>) -> Vec<String> {
    let mut out = Vec::new();
    for h in list.map(List::into_vec).unwrap_or_default() {
        let h = h.trim().to_ascii_lowercase();
        if h.is_empty() || h.contains(['/', ' ', '@']) {
            e.push(err(
                "admin.allowed_hosts",
                format!("{h:?} is not a host name like \"rally-sidecar.example.internal\""),
            ));
        } else {
            out.push(h);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<super::super::Config, String> {
        let mut table: toml::Table = toml.parse().map_err(|e| format!("{e}"))?;
        let errs = super::super::apply_env(
            &mut table,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            &[],
        );
        assert!(errs.is_empty());
        let raw = RawConfig::from_table(table).map_err(|e| e.to_string())?;
        super::super::Config::validate(&raw, &Overrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn off_loopback_without_a_token_is_refused_naming_the_key() {
        let e = load("[admin]\nlisten = \"0.0.0.0:9464\"\n", &[]).expect_err("refused");
        assert!(
            e.contains("admin.token_file") && e.contains("not on loopback"),
            "{e}"
        );
        let e = load("[admin]\nrequire_token = true\n", &[]).expect_err("refused");
        assert!(e.contains("admin.require_token"), "{e}");
        let ok = load(
            "[admin]\nlisten = \"0.0.0.0:9464\"\n",
            &[("RALLY_SIDECAR_ADMIN_TOKEN", "0123456789abcdef0123")],
        )
        .expect("a token from the environment");
        assert_eq!(
            ok.admin.token.as_ref().map(AdminToken::expose),
            Some("0123456789abcdef0123")
        );
        assert!(
            !format!("{ok:?}").contains("0123456789abcdef"),
            "Debug hides it"
        );
        assert!(load("", &[]).expect("loopback").admin.token.is_none());
    }

    #[test]
    fn token_files_are_trimmed_and_short_tokens_refused() {
        let dir = std::env::temp_dir().join(format!("rs-admin-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("good");
        std::fs::write(&good, "s3cret-s3cret-s3cret\n").expect("write");
        let short = dir.join("short");
        std::fs::write(&short, "abc\n").expect("write");
        let cfg = load(
            &format!("[admin]\ntoken_file = {:?}\n", good.display().to_string()),
            &[],
        )
        .expect("valid");
        assert_eq!(
            cfg.admin.token.as_ref().map(AdminToken::expose),
            Some("s3cret-s3cret-s3cret")
        );
        let e = load(
            &format!("[admin]\ntoken_file = {:?}\n", short.display().to_string()),
            &[],
        )
        .expect_err("short");
        assert!(
            e.contains("admin.token_file") && e.contains("at least 16"),
            "{e}"
        );
        let e = load(
            &format!("[admin]\ntoken_file = {:?}\n", good.display().to_string()),
            &[("RALLY_SIDECAR_ADMIN_TOKEN", "0123456789abcdef0123")],
        )
        .expect_err("both");
        assert!(e.contains("not both"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
