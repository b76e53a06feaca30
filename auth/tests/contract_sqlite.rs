//! The key table's contract against the SQLite backend.

use meter_auth::{KeyTable, SqliteKeys};
use std::sync::Arc;

fn table() -> Arc<dyn KeyTable> {
    // Each test keeps its directory for as long as the process runs.
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    Arc::new(SqliteKeys::open(&dir.path().join("keys.db")).unwrap())
}

meter_auth::keys_contract!(table());

mod sessions {
    use meter_auth::{SessionTable, SqliteKeys};
    use std::sync::Arc;

    fn table() -> Arc<dyn SessionTable> {
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        Arc::new(SqliteKeys::open(&dir.path().join("keys.db")).unwrap())
    }

    meter_auth::sessions_contract!(table());

    #[test]
    fn only_hashes_are_on_disk() {
        use meter_auth::session::{SessionKind, Sessions};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let sessions = Sessions::new(Arc::new(SqliteKeys::open(&path).unwrap()));
        let s =
            sessions.create(SessionKind::Portal, Some("acme"), std::time::Duration::from_secs(600), "k", 1).unwrap();
        let x = sessions.exchange(&s.token, 2).unwrap().unwrap();
        let mut raw = std::fs::read(&path).unwrap();
        raw.extend(std::fs::read(dir.path().join("keys.db-wal")).unwrap_or_default());
        for secret in [&s.token, &x.secret] {
            assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()), "a secret on disk");
        }
    }
}
