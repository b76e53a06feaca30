//! meter's own client for Stripe's API. Requests are built by async-stripe's generated crates
//! ([`RequestBuilder`]); this client sends them, because async-stripe's client hides what an
//! exactly-once sender needs: it exposes no reply headers (`Retry-After`,
//! `Stripe-Should-Retry`), loses the status of a reply that is not Stripe's JSON, and its retry
//! strategies send a fresh idempotency key per try (or none). Here every POST carries a key
//! derived from the request ([`crate::key`]), every try of it the same key and the same bytes, at
//! most `rate_limit` requests a second, and replies are read into meter's own slim types.

use crate::Error;
use crate::key::{canonical_form, occasion_key};
use backon::{BackoffBuilder, ExponentialBuilder};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::de::DeserializeOwned;
use std::num::NonZeroU32;
use std::time::Duration;
use stripe_client_core::{RequestBuilder, StripeMethod};

/// Stripe's API version meter speaks: the one async-stripe's requests were generated from.
pub fn api_version() -> String {
    stripe_shared::version::VERSION.to_string()
}

/// How the client talks to Stripe.
#[derive(Clone)]
pub struct Settings {
    /// The secret key (`sk_…` or `rk_…`); never printed.
    pub api_key: String,
    /// `https://api.stripe.com`, or a stand-in's address in tests (no path).
    pub api_base: String,
    /// Requests a second at most (Stripe allows 25 in test mode and 100 live).
    pub rate_limit: NonZeroU32,
    /// Tries of one request before its failure is returned (the outbox tries again later).
    pub attempts: u32,
    /// The first pause between tries; it doubles, with jitter, up to `max_backoff`.
    pub min_backoff: Duration,
    /// The longest pause between tries, unless Stripe's `Retry-After` asks for longer.
    pub max_backoff: Duration,
    /// How long one try may take before it counts as lost.
    pub timeout: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("api_key", &"[redacted]")
            .field("api_base", &self.api_base)
            .field("rate_limit", &self.rate_limit)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Stripe's defaults for `api_key`: 20 requests a second, 6 tries from 0.5 s to 30 s apart.
    pub fn new(api_key: impl Into<String>) -> Self {
        Settings {
            api_key: api_key.into(),
            api_base: "https://api.stripe.com".into(),
            rate_limit: NonZeroU32::new(20).expect("non-zero"),
            attempts: 6,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A client of Stripe's API.
pub struct Client {
    http: reqwest::Client,
    settings: Settings,
    limiter: DefaultDirectRateLimiter,
    version: String,
}

/// What one try came to.
enum Try {
    Done(bytes::Bytes),
    /// Worth trying again with the same key, after at least `after`.
    Again {
        why: String,
        after: Option<Duration>,
    },
    /// Stripe refused the request; trying again cannot change that.
    Refused(Error),
}

impl Client {
    /// A client with `settings`.
    pub fn new(settings: Settings) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent(concat!("meter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        let limiter = RateLimiter::direct(Quota::per_second(settings.rate_limit));
        Ok(Client { http, settings, limiter, version: api_version() })
    }

    /// Sends `request`, trying again (same key, same bytes) after 429, 409, 5xx, a timeout or a
    /// lost connection, honouring `Retry-After` and `Stripe-Should-Retry`; reads the reply as `T`.
    pub async fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, Error> {
        self.send_on(request, None).await
    }

    /// [`Client::send`] for a request made again on purpose with the same parameters; its key
    /// also names the `occasion` ([`crate::key::occasion_key`]).
    pub async fn send_on<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
        occasion: Option<&str>,
    ) -> Result<T, Error> {
        let method = match request.method {
            StripeMethod::Get => reqwest::Method::GET,
            StripeMethod::Post => reqwest::Method::POST,
            StripeMethod::Delete => reqwest::Method::DELETE,
        };
        let query = request.query.as_deref().map(canonical_form);
        let body = request.body.as_deref().map(canonical_form);
        let key = (method == reqwest::Method::POST)
            .then(|| occasion_key(method.as_str(), &request.path, query.as_deref(), body.as_deref(), occasion));
        let what = format!("{method} /v1{}", request.path);
        let mut url = format!("{}/v1{}", self.settings.api_base.trim_end_matches('/'), request.path);
        if let Some(q) = query.as_deref().filter(|q| !q.is_empty()) {
            url.push('?');
            url.push_str(q);
        }
        let mut pauses = ExponentialBuilder::default()
            .with_min_delay(self.settings.min_backoff)
            .with_max_delay(self.settings.max_backoff)
            .with_jitter()
            .without_max_times()
            .build();
        let mut tries = 0;
        loop {
            tries += 1;
            self.limiter.until_ready().await;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.settings.api_key)
                .header("Stripe-Version", &self.version);
            if let Some(key) = &key {
                req = req.header("Idempotency-Key", key);
            }
            if let Some(body) = &body {
                req = req.header("Content-Type", "application/x-www-form-urlencoded").body(body.clone());
            }
            let outcome = classify(&what, req.send().await).await;
            metrics::counter!(crate::metric::STRIPE_REQUESTS, "outcome" => match &outcome {
                Try::Done(_) => "ok",
                Try::Again { .. } => "retried",
                Try::Refused(_) => "refused",
            })
            .increment(1);
            match outcome {
                Try::Done(bytes) => {
                    return serde_json::from_slice(&bytes).map_err(|e| Error::Protocol {
                        what: what.clone(),
                        detail: format!("its reply does not read as expected: {e}"),
                    });
                }
                Try::Refused(e) => return Err(e),
                Try::Again { why, after } => {
                    if tries >= self.settings.attempts {
                        return Err(Error::Unavailable { what, tries, last: why });
                    }
                    let pause = pauses.next().unwrap_or(self.settings.max_backoff);
                    let pause = after.map_or(pause, |a| a.max(pause));
                    tracing::warn!(%what, tries, ?pause, %why, "Stripe request failed; trying again with the same idempotency key");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Reads one try's reply.
async fn classify(what: &str, reply: Result<reqwest::Response, reqwest::Error>) -> Try {
    let reply = match reply {
        Ok(r) => r,
        // Never reached Stripe, or its reply was lost: the key makes another try safe.
        Err(e) => return Try::Again { why: format!("no reply: {e}"), after: None },
    };
    let status = reply.status();
    let header = |name: &str| reply.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let should_retry = header("Stripe-Should-Retry").map(|v| v == "true");
    let after = header("Retry-After").and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
    let json = header("Content-Type").is_some_and(|c| c.starts_with("application/json"));
    let bytes = match reply.bytes().await {
        Ok(b) => b,
        Err(e) => return Try::Again { why: format!("reply cut off: {e}"), after: None },
    };
    if status.is_success() {
        if !json {
            // Not Stripe speaking (a proxy's page, say): whether the request was applied is
            // unknown, and the key makes another try safe.
            return Try::Again {
                why: format!("{status} answered with a body that is not JSON: {}", snippet(&bytes)),
                after,
            };
        }
        return Try::Done(bytes);
    }
    let transient = status.as_u16() == 429 || status.as_u16() == 409 || status.is_server_error();
    let error: Option<StripeErrorBody> = serde_json::from_slice::<Envelope>(&bytes).ok().map(|e| e.error);
    let message = error.as_ref().and_then(|e| e.message.clone()).unwrap_or_else(|| snippet(&bytes));
    if should_retry.unwrap_or(transient) {
        return Try::Again { why: format!("{status}: {message}"), after };
    }
    let (kind, code, param) =
        error.map(|e| (e.kind, e.code, e.param)).unwrap_or_else(|| ("not_stripe_json".into(), None, None));
    if status.as_u16() == 401 {
        return Try::Refused(Error::Config(format!(
            "Stripe refused the API key ({status}: {message}); check [stripe] api_key"
        )));
    }
    Try::Refused(Error::Refused { what: what.to_owned(), status: status.as_u16(), kind, code, param, message })
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text: String = text.chars().take(120).collect();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(serde::Deserialize)]
struct Envelope {
    error: StripeErrorBody,
}

#[derive(serde::Deserialize)]
struct StripeErrorBody {
    #[serde(rename = "type", default)]
    kind: String,
    code: Option<String>,
    param: Option<String>,
    message: Option<String>,
}
