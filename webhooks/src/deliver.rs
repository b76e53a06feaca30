//! Sending: the dispatcher claims due deliveries, posts each signed in a task of its own, and
//! records every outcome (delivered, or the next attempt after a backoff, or dead). Sends run
//! side by side, at most [`PER_ENDPOINT`] to one endpoint, so that a slow or unanswering endpoint
//! holds back only its own deliveries.

use crate::store::{Attempted, Due};
use crate::{Error, Rounds, Settings, Webhooks, guard, metric, sign};
use backon::{BackoffBuilder, ExponentialBuilder};
use meter_schemas::period::now_us;
use meter_store::LiveStore;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::task::JoinSet;

/// Sends in flight at most, over all endpoints.
const IN_FLIGHT: usize = 64;
/// Sends in flight at most to one endpoint.
const PER_ENDPOINT: usize = 4;

impl Webhooks {
    /// Fans out new alerts and sends due deliveries as soon as the store raises an alert, as soon
    /// as a send ends, and every [`crate::Settings::poll`] (for retries), until dropped.
    pub async fn run(self: Arc<Self>, alerts: Arc<dyn LiveStore>) {
        let mut rounds = Rounds::new(&*alerts, self.settings.poll);
        let mut sending = JoinSet::new();
        // Endpoint of each send in flight, and how many go to each endpoint.
        let mut endpoint_of = HashMap::new();
        let mut busy: HashMap<String, usize> = HashMap::new();
        loop {
            let ended = tokio::select! {
                _ = rounds.next() => None,
                Some(done) = sending.join_next_with_id(), if !sending.is_empty() => Some(done),
            };
            let mut settle = |done: Result<(tokio::task::Id, Result<(), Error>), tokio::task::JoinError>| {
                let (id, outcome) = match done {
                    Ok((id, outcome)) => (id, outcome),
                    Err(e) => (e.id(), Err(Error::Task(format!("a webhook send ended abnormally: {e}")))),
                };
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "recording a webhook delivery failed; it is sent again");
                }
                if let Some(endpoint) = endpoint_of.remove(&id)
                    && let Some(n) = busy.get_mut(&endpoint)
                {
                    *n -= 1;
                    if *n == 0 {
                        busy.remove(&endpoint);
                    }
                }
            };
            if let Some(done) = ended {
                settle(done);
            } else if let Err(e) = self.fan_out(&*alerts).await {
                tracing::warn!(error = %e, "queueing alerts for webhooks failed; trying again");
            }
            while let Some(done) = sending.try_join_next_with_id() {
                settle(done);
            }
            let room = IN_FLIGHT.saturating_sub(sending.len());
            if room == 0 {
                continue;
            }
            match self.claim(room, busy.clone()).await {
                Ok(due) => {
                    for d in due {
                        *busy.entry(d.endpoint_id.clone()).or_default() += 1;
                        let endpoint = d.endpoint_id.clone();
                        let task = sending.spawn(self.clone().send(d));
                        endpoint_of.insert(task.id(), endpoint);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "claiming webhook deliveries failed; trying again"),
            }
        }
    }

    /// Claims up to `room` deliveries due now, leaving out endpoints with [`PER_ENDPOINT`] sends
    /// in flight (`busy` counts them). A claim lasts twice the timeout, so that another
    /// dispatcher on the same file does not send them too.
    async fn claim(&self, room: usize, busy: HashMap<String, usize>) -> Result<Vec<Due>, Error> {
        let lease = self.settings.timeout.saturating_mul(2).as_micros().min(i64::MAX as u128) as i64;
        let now = now_us();
        self.store.claim(room, PER_ENDPOINT, busy, now, now.saturating_add(lease)).await
    }

    /// Posts `d` signed and records the outcome.
    async fn send(self: Arc<Self>, d: Due) -> Result<(), Error> {
        let guarded = !d.by_admin && !self.settings.allow_private_targets;
        // The client's resolver checks names; an address in the URL is checked here.
        if guarded && reqwest::Url::parse(&d.url).map_or(true, |u| guard::internal(&u)) {
            let why = format!("not sent: {} is an internal address, which a tenant's endpoint may not be", d.url);
            return self.record(d, Err(why)).await;
        }
        let http = if d.by_admin { &self.http_admin } else { &self.http_tenant };
        let t = now_us() / 1_000_000;
        let sent = http
            .post(&d.url)
            .header("Content-Type", "application/json")
            .header("Meter-Signature", sign(&d.secret, t, d.body.as_bytes()))
            .header("Meter-Event-Id", &d.alert_id)
            .body(d.body.clone())
            .send()
            .await;
        let outcome = match sent {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("answered {}", r.status())),
            Err(e) => Err(format!("not reached: {}", causes(&e))),
        };
        self.record(d, outcome).await
    }

    async fn record(&self, d: Due, outcome: Result<(), String>) -> Result<(), Error> {
        let now = now_us();
        let first = d.first_us.unwrap_or(now);
        let attempts = d.attempts + 1;
        let settings = self.settings.clone();
        let label = match &outcome {
            Ok(()) => {
                let raised = raised_us(&d.body);
                metrics::histogram!(metric::ALERT_TO_DELIVERY).record((now - raised).max(0) as f64 / 1e6);
                "delivered"
            }
            Err(_) if now - first >= settings.retry_for.as_micros() as i64 => "dead",
            Err(_) => "failed",
        };
        metrics::counter!(metric::ATTEMPTS, "outcome" => label).increment(1);
        if let Err(e) = &outcome {
            tracing::info!(alert = %d.alert_id, delivery = d.id, attempts, error = %e, outcome = label, "webhook delivery failed");
        }
        let attempted = match outcome {
            Ok(()) => Attempted::Delivered { attempts, first_us: first, at_us: now },
            Err(error) => Attempted::Failed {
                attempts,
                first_us: first,
                next_us: now + retry_delay(&settings, attempts).as_micros() as i64,
                dead: label == "dead",
                error,
            },
        };
        self.store.record(d.id, attempted).await
    }
}

/// How long to wait after the `attempts`-th failed attempt: `first_backoff` doubled after each
/// further failure up to `max_backoff`, with jitter so that deliveries that failed together (an
/// endpoint that was down) are not all retried at one instant.
fn retry_delay(settings: &Settings, attempts: u32) -> std::time::Duration {
    ExponentialBuilder::new()
        .with_min_delay(settings.first_backoff)
        .with_max_delay(settings.max_backoff)
        .with_jitter()
        .without_max_times()
        .build()
        // Past 64 doublings every delay is `max_backoff` anyway.
        .nth(attempts.saturating_sub(1).min(64) as usize)
        .unwrap_or(settings.max_backoff)
        // backon adds its jitter after the cap: keep `max_backoff` a maximum.
        .min(settings.max_backoff)
}

/// `e` and its causes, `: `-separated (reqwest's own message leaves out why a send failed).
pub(crate) fn causes(e: &dyn std::error::Error) -> String {
    std::iter::successors(Some(e), |e| e.source()).map(|e| e.to_string()).collect::<Vec<_>>().join(": ")
}

/// When the alert in `body` was raised.
fn raised_us(body: &str) -> i64 {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["created"].as_str().and_then(meter_schemas::period::parse_time).unwrap_or_else(now_us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;

    async fn hooks(dir: &std::path::Path) -> Arc<Webhooks> {
        Arc::new(Webhooks::open(&dir.join("webhooks.db"), Settings::default()).unwrap())
    }

    /// Queues `n` alerts of `tenant` for its endpoints, due at `due_us` (long past).
    async fn queue(w: &Webhooks, tenant: &str, n: usize, due_us: i64) {
        let alerts = (0..n)
            .map(|i| crate::store::Queued {
                alert_id: format!("alrt_{tenant}_{i}"),
                tenant: tenant.into(),
                body: "{}".into(),
            })
            .collect();
        w.store.queue(alerts, Some(0), due_us).await.unwrap();
    }

    /// A tenant's endpoint stored with an internal address (registered before the guard knew
    /// that form, or while private targets were allowed) is not sent to.
    #[tokio::test]
    async fn a_tenant_endpoint_at_an_internal_address_is_not_sent_to() {
        let dir = tempfile::tempdir().unwrap();
        let w = hooks(dir.path()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tenants, _) = w.register("http://198.51.100.7/hook", Some("t"), false).await.unwrap();
        let db = meter_sqlite::rusqlite::Connection::open(dir.path().join("webhooks.db")).unwrap();
        db.execute("UPDATE endpoints SET url = ?2 WHERE id = ?1", [&tenants.id, &url]).unwrap();
        queue(&w, "t", 1, 0).await;
        let due = w.claim(IN_FLIGHT, HashMap::new()).await.unwrap();
        assert_eq!(due.len(), 1);
        w.clone().send(due.into_iter().next().unwrap()).await.unwrap();
        let accepted = tokio::time::timeout(std::time::Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "no connection was made");
        let d = &w.deliveries(crate::Scope::All, None, 10).await.unwrap()[0];
        assert_eq!((d.state.as_str(), d.attempts), ("pending", 1));
        assert!(d.last_error.as_deref().unwrap().contains("internal address"), "{d:?}");
    }

    /// One endpoint's backlog, older than everything else, does not keep another endpoint's
    /// deliveries from being claimed while its own sends are in flight.
    #[tokio::test]
    async fn a_backlog_at_one_endpoint_does_not_hide_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let w = hooks(dir.path()).await;
        let (slow, _) = w.register("http://198.51.100.7/hook", Some("s"), true).await.unwrap();
        let (other, _) = w.register("http://198.51.100.8/hook", Some("o"), true).await.unwrap();
        queue(&w, "s", 3000, 0).await;
        queue(&w, "o", 1, 3000).await;
        let first = w.claim(IN_FLIGHT, HashMap::new()).await.unwrap();
        assert_eq!(first.iter().filter(|d| d.endpoint_id == slow.id).count(), PER_ENDPOINT);
        let busy = HashMap::from([(slow.id.clone(), PER_ENDPOINT)]);
        let next = w.claim(IN_FLIGHT - PER_ENDPOINT, busy).await.unwrap();
        let ids: Vec<&str> = next.iter().map(|d| d.endpoint_id.as_str()).collect();
        assert_eq!(ids, [other.id.as_str()], "the other endpoint's delivery is claimed");
    }
}
