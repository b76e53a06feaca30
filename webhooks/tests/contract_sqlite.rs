//! The webhooks' state contract against the SQLite backend.

use meter_webhooks::{SqliteWebhooks, WebhookStore};
use std::sync::Arc;

fn store() -> Arc<dyn WebhookStore> {
    // Each test keeps its directory for as long as the process runs.
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    Arc::new(SqliteWebhooks::open(&dir.path().join("webhooks.db")).unwrap())
}

meter_webhooks::webhooks_contract!(store());
