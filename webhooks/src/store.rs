//! The webhooks' state port: endpoints, one delivery per alert and endpoint, the cursors of the
//! loops that hand alerts on, and their leases. Every process that serves the API or delivers
//! alerts shares it. A backend keeps rows; what to send, when to retry and what is internal
//! stay in [`crate::Webhooks`].

use crate::{Delivery, Endpoint, Error};
use async_trait::async_trait;
use std::collections::HashMap;

/// An endpoint as stored, with its signing secret.
#[derive(Clone, Debug)]
pub struct StoredEndpoint {
    /// What the API shows.
    pub endpoint: Endpoint,
    /// When it was registered, microseconds since the epoch.
    pub created_us: i64,
    /// Its signing secret.
    pub secret: String,
    /// Registered by an admin (for a tenant, or for every tenant): not the tenant's to see.
    pub by_admin: bool,
}

/// An alert (or a billing notice) to queue for every endpoint that wants it.
#[derive(Clone, Debug)]
pub struct Queued {
    /// The alert's id.
    pub alert_id: String,
    /// Its tenant.
    pub tenant: String,
    /// The body posted on every attempt.
    pub body: String,
}

/// A delivery claimed for sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// The delivery.
    pub id: u64,
    /// Its endpoint.
    pub endpoint_id: String,
    /// Whether an admin registered the endpoint (admins' endpoints may be internal).
    pub by_admin: bool,
    /// The alert.
    pub alert_id: String,
    /// Where to post.
    pub url: String,
    /// The endpoint's signing secret.
    pub secret: String,
    /// What to post.
    pub body: String,
    /// Attempts before this one.
    pub attempts: u32,
    /// When the first attempt was made.
    pub first_us: Option<i64>,
}

/// What an attempt ended in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempted {
    /// The endpoint answered 2xx at `at_us`.
    Delivered {
        /// Attempts, this one included.
        attempts: u32,
        /// When the first attempt was made.
        first_us: i64,
        /// When this one succeeded.
        at_us: i64,
    },
    /// It failed; `next_us` is when to try again, unless `dead`.
    Failed {
        /// Attempts, this one included.
        attempts: u32,
        /// When the first attempt was made.
        first_us: i64,
        /// When to try again.
        next_us: i64,
        /// Past its retry window: kept in the dead-letter list.
        dead: bool,
        /// Why.
        error: String,
    },
}

/// Storage of the webhooks' state. `tenant` arguments scope a call to what that tenant
/// registered itself (`None`: everything, as an admin sees it).
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Stores a new endpoint.
    async fn insert_endpoint(&self, endpoint: StoredEndpoint) -> Result<(), Error>;

    /// The endpoints in scope, oldest first.
    async fn endpoints(&self, tenant: Option<String>) -> Result<Vec<Endpoint>, Error>;

    /// Removes an endpoint in scope and its deliveries not yet made (pending or dead);
    /// [`Error::NotFound`] when there is none.
    async fn remove_endpoint(&self, id: String, tenant: Option<String>) -> Result<(), Error>;

    /// Deliveries in scope, in `state` when given, newest first, at most `limit`.
    async fn deliveries(
        &self,
        tenant: Option<String>,
        state: Option<String>,
        limit: usize,
    ) -> Result<Vec<Delivery>, Error>;

    /// Puts a dead delivery in scope back in the queue, due at `now_us`, with a fresh retry
    /// window; [`Error::NotFound`] when there is none, [`Error::Conflict`] when it is not dead.
    async fn retry(&self, id: u64, tenant: Option<String>, now_us: i64) -> Result<(), Error>;

    /// Takes or renews the lease `name` for `holder` until `until_us`, unless another holder's
    /// lease runs past `now_us`; returns whether `holder` holds it.
    async fn lease(&self, name: String, holder: String, until_us: i64, now_us: i64) -> Result<bool, Error>;

    /// How far alerts have been handed on to `name` (the last alert's `seq`; 0 at first).
    async fn cursor(&self, name: String) -> Result<u64, Error>;

    /// Moves `name`'s cursor forward to `seq` (never back).
    async fn move_cursor(&self, name: String, seq: u64) -> Result<(), Error>;

    /// Queues each alert (or billing notice) once for every endpoint that wants it (its
    /// tenant's and every tenant's), due at `now_us`, and moves the `alerts` cursor to
    /// `through_seq` when given (alerts), at once.
    async fn queue(&self, alerts: Vec<Queued>, through_seq: Option<u64>, now_us: i64) -> Result<(), Error>;

    /// Claims up to `room` pending deliveries due at `now_us`, oldest due first, at most
    /// `per_endpoint` to one endpoint counting `busy` (sends in flight), until `until_us`:
    /// another dispatcher does not claim them before then.
    async fn claim(
        &self,
        room: usize,
        per_endpoint: usize,
        busy: HashMap<String, usize>,
        now_us: i64,
        until_us: i64,
    ) -> Result<Vec<Due>, Error>;

    /// Records what an attempt at delivery `id` ended in.
    async fn record(&self, id: u64, attempted: Attempted) -> Result<(), Error>;
}
