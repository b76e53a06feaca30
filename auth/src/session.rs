//! Browser sessions: a **portal** session shows one tenant its own dashboard; a **console**
//! session lets finance and operators into the console. A key opens one
//! ([`Sessions::create`]) and gets a link carrying a one-time token; the page exchanges the
//! token for a cookie secret ([`Sessions::exchange`]), which then authenticates each request
//! ([`Sessions::authenticate`]) until the session expires or is revoked. Tokens and cookie
//! secrets are 256 random bits, stored only as SHA-256; a session is listed without either.

use crate::{Error, Principal, Role, hash};
use base64::Engine;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Prefix of a link's one-time token.
pub const LINK_PREFIX: &str = "mtl_";
/// Prefix of a session cookie's secret.
pub const COOKIE_PREFIX: &str = "mts_";
/// The longest a session may last.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// The shortest.
pub const MIN_TTL: Duration = Duration::from_secs(60);

/// What a session opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// One tenant's dashboard: reads that tenant, manages its webhook endpoints.
    Portal,
    /// The finance console: what an admin key may do.
    Console,
}

impl SessionKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Portal => "portal",
            SessionKind::Console => "console",
        }
    }

    /// The kind stored as `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [SessionKind::Portal, SessionKind::Console].into_iter().find(|k| k.as_str() == s)
    }

    /// What a request made in such a session may do.
    fn role(self) -> Role {
        match self {
            SessionKind::Portal => Role::Read,
            SessionKind::Console => Role::Admin,
        }
    }
}

/// A session as stored: hashes, never the token or the cookie secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    /// Public id (`ses_…`), unique.
    pub id: String,
    /// What it opens.
    pub kind: SessionKind,
    /// The tenant of a portal session.
    pub tenant: Option<String>,
    /// SHA-256 of the link's token, hex; unique.
    pub link_hash: String,
    /// The key that opened it.
    pub created_by: String,
    /// µs since the epoch.
    pub created_us: i64,
    /// When it ends, µs.
    pub expires_us: i64,
}

/// A session as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionInfo {
    /// Public id.
    pub id: String,
    /// What it opens.
    pub kind: SessionKind,
    /// The tenant of a portal session.
    pub tenant: Option<String>,
    /// The key that opened it.
    pub created_by: String,
    /// µs.
    pub created_us: i64,
    /// µs.
    pub expires_us: i64,
    /// When its link was exchanged for a cookie, µs.
    pub exchanged_us: Option<i64>,
    /// When it was revoked, µs.
    pub revoked_us: Option<i64>,
}

/// Storage of sessions, shared by every process of an installation. Calls block.
pub trait SessionTable: Send + Sync {
    /// Stores a new session; an id or link hash already stored is an error and stores nothing.
    fn insert(&self, session: &StoredSession) -> Result<(), Error>;

    /// Exchanges the link whose token hashes to `link_hash` for a cookie whose secret hashes to
    /// `cookie_hash`, at `now_us`: once, and only while the session is neither expired nor
    /// revoked. The session, or `None`.
    fn exchange(&self, link_hash: &str, cookie_hash: &str, now_us: i64) -> Result<Option<SessionInfo>, Error>;

    /// The session whose cookie secret hashes to `cookie_hash`, while it is neither expired nor
    /// revoked at `now_us`.
    fn by_cookie(&self, cookie_hash: &str, now_us: i64) -> Result<Option<SessionInfo>, Error>;

    /// Marks session `id` revoked at `now_us`; false when there is no such session unrevoked.
    fn revoke(&self, id: &str, now_us: i64) -> Result<bool, Error>;

    /// The session `id`.
    fn get(&self, id: &str) -> Result<Option<SessionInfo>, Error>;

    /// The sessions of `tenant` (every one for `None`), newest first.
    fn list(&self, tenant: Option<&str>) -> Result<Vec<SessionInfo>, Error>;
}

/// A session just opened. The token exists only here.
pub struct NewSession {
    /// The session.
    pub info: SessionInfo,
    /// The link's one-time token, to put in the link.
    pub token: String,
}

impl fmt::Debug for NewSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewSession").field("info", &self.info).field("token", &"<redacted>").finish()
    }
}

/// A link exchanged: the cookie's secret, which exists only here, and its session.
pub struct Exchanged {
    /// The session.
    pub info: SessionInfo,
    /// The cookie's secret.
    pub secret: String,
}

impl fmt::Debug for Exchanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exchanged").field("info", &self.info).field("secret", &"<redacted>").finish()
    }
}

fn secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Sessions, over their table.
pub struct Sessions {
    table: Arc<dyn SessionTable>,
}

impl Sessions {
    /// Sessions kept in `table`.
    pub fn new(table: Arc<dyn SessionTable>) -> Arc<Self> {
        Arc::new(Self { table })
    }

    /// Opens a session of `kind` (a portal session for `tenant`) lasting `ttl`, by the key `by`,
    /// at `now_us`.
    pub fn create(
        &self,
        kind: SessionKind,
        tenant: Option<&str>,
        ttl: Duration,
        by: &str,
        now_us: i64,
    ) -> Result<NewSession, Error> {
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(Error::Invalid(format!("ttl: {} is not between 1 minute and 24 hours", humanize(ttl))));
        }
        match (kind, tenant) {
            (SessionKind::Portal, None) => {
                return Err(Error::Invalid("tenant: a portal session shows one tenant".into()));
            }
            (SessionKind::Console, Some(_)) => {
                return Err(Error::Invalid("tenant: a console session is for every tenant; drop it".into()));
            }
            (SessionKind::Portal, Some(t)) => {
                meter_schemas::envelope::check_id(t).map_err(|m| Error::Invalid(format!("tenant: {m}")))?;
            }
            (SessionKind::Console, None) => {}
        }
        let token = secret(LINK_PREFIX);
        let link_hash = hash(&token);
        let stored = StoredSession {
            id: format!("ses_{}", &link_hash[..16]),
            kind,
            tenant: tenant.map(str::to_string),
            link_hash,
            created_by: by.to_string(),
            created_us: now_us,
            expires_us: now_us.saturating_add(ttl.as_micros() as i64),
        };
        self.table.insert(&stored)?;
        let info = SessionInfo {
            id: stored.id,
            kind,
            tenant: stored.tenant,
            created_by: stored.created_by,
            created_us: stored.created_us,
            expires_us: stored.expires_us,
            exchanged_us: None,
            revoked_us: None,
        };
        Ok(NewSession { info, token })
    }

    /// Exchanges a link's `token` for a cookie's secret, once; `None` for a token that is
    /// unknown, used, expired or revoked (all alike).
    pub fn exchange(&self, token: &str, now_us: i64) -> Result<Option<Exchanged>, Error> {
        if !token.starts_with(LINK_PREFIX) || token.len() > 200 {
            return Ok(None);
        }
        let secret = secret(COOKIE_PREFIX);
        let info = self.table.exchange(&hash(token), &hash(&secret), now_us)?;
        Ok(info.map(|info| Exchanged { info, secret }))
    }

    /// Who a request carrying cookie secret `secret` is, at `now_us`.
    pub fn authenticate(&self, secret: &str, now_us: i64) -> Result<Principal, crate::AuthError> {
        if !secret.starts_with(COOKIE_PREFIX) || secret.len() > 200 {
            return Err(crate::AuthError::Unauthenticated);
        }
        match self.table.by_cookie(&hash(secret), now_us) {
            Ok(Some(s)) => Ok(Principal { key_id: s.id, role: s.kind.role(), tenant: s.tenant }),
            Ok(None) => Err(crate::AuthError::Unauthenticated),
            Err(e) => Err(crate::AuthError::Unavailable(e.to_string())),
        }
    }

    /// Revokes session `id`; false when there is no such session unrevoked.
    pub fn revoke(&self, id: &str, now_us: i64) -> Result<bool, Error> {
        self.table.revoke(id, now_us)
    }

    /// Session `id`.
    pub fn get(&self, id: &str) -> Result<Option<SessionInfo>, Error> {
        self.table.get(id)
    }

    /// The sessions of `tenant` (every one for `None`), newest first.
    pub fn list(&self, tenant: Option<&str>) -> Result<Vec<SessionInfo>, Error> {
        self.table.list(tenant)
    }
}

fn humanize(d: Duration) -> String {
    format!("{} s", d.as_secs())
}
