//! The key table's port: where keys are kept. A backend stores rows and finds the keys not
//! revoked; creating secrets, hashing and caching stay in [`crate::KeyStore`]. Calls block.

use crate::{Error, KeyInfo, Principal, Role};
use std::collections::HashMap;

/// A key as stored: its hash, never its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    /// Public id, unique.
    pub id: String,
    /// SHA-256 of the secret, hex; unique.
    pub hash: String,
    /// What it may do.
    pub role: Role,
    /// Its tenant, for a tenant key.
    pub tenant: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

/// Storage of API keys, shared by every process of an installation.
pub trait KeyTable: Send + Sync {
    /// Stores a new key; an id or hash already stored is an error and stores nothing.
    fn insert(&self, key: &StoredKey) -> Result<(), Error>;

    /// Marks the key `id` revoked at `at` (RFC 3339); false when no such key is unrevoked.
    fn revoke(&self, id: &str, at: &str) -> Result<bool, Error>;

    /// Every key, revoked or not, oldest first (then by id).
    fn list(&self) -> Result<Vec<KeyInfo>, Error>;

    /// The keys not revoked, by hash.
    fn active(&self) -> Result<HashMap<String, Principal>, Error>;

    /// Whether no key was ever stored.
    fn is_empty(&self) -> Result<bool, Error>;
}
