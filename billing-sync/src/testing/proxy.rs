//! A proxy in front of the Stripe stand-in that does what Stripe does and localstripe does not,
//! and injects the faults meter must survive.
//!
//! - **Idempotency keys, enforced as Stripe does.** A POST without `Idempotency-Key` is refused
//!   (400; a missing key is a bug this proxy exists to catch). A key seen before with the same
//!   request is answered with the first reply, without reaching localstripe, even when the first
//!   one's client hung up before its reply. A key seen before with other parameters is a 400
//!   `idempotency_error`.
//! - **Faults**, on a fixed schedule (every `every`-th request, taking the kinds in turn) so that a
//!   run meets each kind: 429 with `Retry-After`, 500, a 503 page in HTML, a timeout, a connection
//!   cut before the reply, and the decisive one, a request that reaches localstripe and commits
//!   while its reply is lost.
//! - **Adaptations to localstripe's gaps**: each drops or renames what localstripe lacks, never
//!   invents (see [`ADAPTATIONS`]).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

/// Every change the proxy makes to meter's requests or localstripe's replies, and why.
pub const ADAPTATIONS: &[&str] = &[
    "POST /v1/invoices: drops auto_advance, collection_method, days_until_due, automatic_tax[enabled] and \
     currency, which localstripe refuses (its invoices are always charge_automatically, in the currency of \
     their items)",
    "POST /v1/invoices/{id}/finalize: sent to localstripe as GET /v1/invoices/{id} with auto_advance dropped \
     (localstripe has no finalize; its drafts are payable as they are)",
    "POST /v1/invoices/{id}/pay: drops off_session, which localstripe refuses (it takes no parameters)",
    "POST /v1/invoices/{id}/send: sent to localstripe as GET /v1/invoices/{id} (localstripe has no send and no \
     email; the invoice stays open, as Stripe's does once sent)",
    "GET /v1/invoiceitems: drops pending=true, which localstripe refuses (it lists only pending items)",
    "GET /v1/invoices/{id}: expand=payments.data.payment.payment_intent is renamed expand=payment_intent \
     (localstripe speaks a 2017 API version: an invoice's one payment intent instead of its payments)",
    "replies carrying an invoice, or a list of them: total_excluding_tax, which localstripe lacks, is renamed \
     from its subtotal (localstripe computes no tax)",
];

/// A fault the proxy injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// 429 with `Retry-After: 1`; not forwarded.
    TooMany,
    /// 500 with Stripe's error JSON; not forwarded.
    Internal,
    /// 503 with an HTML page (a load balancer's); not forwarded.
    Unavailable,
    /// Forwarded and committed, then no reply until the client has given up.
    Timeout,
    /// The connection is cut before the request is forwarded.
    Reset,
    /// Forwarded and committed; the connection is cut before the reply.
    LostReply,
}

/// Every kind, in the order the schedule takes them.
pub const FAULTS: [Fault; 6] =
    [Fault::TooMany, Fault::Internal, Fault::Unavailable, Fault::Timeout, Fault::Reset, Fault::LostReply];

struct Stored {
    fingerprint: String,
    reply: Reply,
}

/// A reply of localstripe's: status, content type, body.
#[derive(Clone)]
struct Reply {
    status: StatusCode,
    content_type: String,
    body: Bytes,
}

/// Counts of what the proxy saw.
#[derive(Default, Debug, Clone)]
pub struct Counts {
    /// Requests received from meter.
    pub received: usize,
    /// Requests that reached localstripe.
    pub forwarded: usize,
    /// Replies replayed from a key.
    pub replayed: usize,
    /// Faults injected, by kind.
    pub faults: HashMap<String, usize>,
    /// POSTs refused for a missing key or a key reused with other parameters.
    pub key_errors: usize,
}

struct Inner {
    upstream: String,
    http: reqwest::Client,
    every: usize,
    timeout: Duration,
    n: AtomicUsize,
    keys: Mutex<HashMap<String, Arc<Mutex<Option<Stored>>>>>,
    counts: std::sync::Mutex<Counts>,
    html: AtomicBool,
    /// Each reply waits this long (ms) before it is sent: a slow Stripe.
    slow_ms: AtomicUsize,
    /// Requests to a path starting with one of these are never answered (a Stripe that hangs
    /// on one endpoint), and how many are held so.
    hung: std::sync::Mutex<Vec<String>>,
    holding: AtomicUsize,
    /// Each request forwarded to localstripe: method, path and body as meter sent them.
    forwarded: std::sync::Mutex<Vec<(String, String, String)>>,
}

/// A running proxy.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Proxy {
    /// Starts a proxy to `upstream` that faults every `every`-th request (0: never); a timeout
    /// holds the reply for `timeout` (longer than the client waits).
    pub async fn start(upstream: &str, every: usize, timeout: Duration) -> Self {
        let inner = Arc::new(Inner {
            upstream: upstream.to_string(),
            http: reqwest::Client::new(),
            every,
            timeout,
            n: AtomicUsize::new(0),
            keys: Mutex::new(HashMap::new()),
            counts: Default::default(),
            html: AtomicBool::new(false),
            slow_ms: AtomicUsize::new(0),
            hung: Default::default(),
            holding: AtomicUsize::new(0),
            forwarded: Default::default(),
        });
        let app = axum::Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Proxy { inner, url }
    }

    /// What it saw so far.
    pub fn counts(&self) -> Counts {
        self.inner.counts.lock().unwrap().clone()
    }

    /// The bodies meter sent with `method path`, oldest first, as forwarded (before any
    /// adaptation): what a test checks where localstripe keeps less than Stripe (it ignores a
    /// subscription's metadata on update).
    pub fn sent(&self, method: &str, path: &str) -> Vec<String> {
        let forwarded = self.inner.forwarded.lock().unwrap();
        forwarded.iter().filter(|(m, p, _)| m == method && p == path).map(|(_, _, b)| b.clone()).collect()
    }

    /// From now on every reply waits `by` before it is sent (a slow Stripe).
    pub fn slow(&self, by: Duration) {
        self.inner.slow_ms.store(by.as_millis() as usize, Ordering::SeqCst);
    }

    /// From now on a request whose path starts with `prefix` is never answered (the client's own
    /// timeout ends it).
    pub fn hang(&self, prefix: &str) {
        self.inner.hung.lock().unwrap().push(prefix.to_string());
    }

    /// How many requests are held unanswered by [`Proxy::hang`] now.
    pub fn holding(&self) -> usize {
        self.inner.holding.load(Ordering::SeqCst)
    }

    /// From now on every reply is a 200 HTML page (Stripe's address answered by something else).
    pub fn answer_html(&self, on: bool) {
        self.inner.html.store(on, Ordering::SeqCst);
    }
}

fn stripe_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"type": kind, "message": message}});
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

fn cut() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut by the proxy"))
    });
    Response::builder().status(200).header("content-type", "application/json").body(Body::from_stream(stream)).unwrap()
}

async fn handle(State(p): State<Arc<Inner>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let n = p.n.fetch_add(1, Ordering::SeqCst) + 1;
    p.counts.lock().unwrap().received += 1;
    let slow = p.slow_ms.load(Ordering::SeqCst);
    if slow > 0 {
        tokio::time::sleep(Duration::from_millis(slow as u64)).await;
    }
    if p.hung.lock().unwrap().iter().any(|prefix| uri.path().starts_with(prefix.as_str())) {
        // Counted while held: the count falls when the client gives up and the future is dropped.
        struct Held<'a>(&'a AtomicUsize);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        p.holding.fetch_add(1, Ordering::SeqCst);
        let _held = Held(&p.holding);
        std::future::pending::<()>().await;
    }
    if p.html.load(Ordering::SeqCst) {
        return (StatusCode::OK, [("content-type", "text/html")], "<html><body>Sign in to the Wi-Fi</body></html>")
            .into_response();
    }
    let fault = (p.every > 0 && n % p.every == 0).then(|| FAULTS[(n / p.every) % FAULTS.len()]);
    if let Some(f) = fault {
        *p.counts.lock().unwrap().faults.entry(format!("{f:?}")).or_default() += 1;
        match f {
            Fault::TooMany => {
                let mut r = stripe_error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "Too many requests");
                r.headers_mut().insert("retry-after", "1".parse().unwrap());
                return r;
            }
            Fault::Internal => {
                return stripe_error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "Something went wrong");
            }
            Fault::Unavailable => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("content-type", "text/html")],
                    "<html>503 Service Unavailable</html>",
                )
                    .into_response();
            }
            Fault::Reset => return cut(),
            Fault::Timeout | Fault::LostReply => {}
        }
    }
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let reply = if method == Method::POST {
        let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned) else {
            p.counts.lock().unwrap().key_errors += 1;
            return stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "the test proxy requires an Idempotency-Key on every POST",
            );
        };
        let fingerprint = format!("{} {}\n{}", method, uri.path(), canonical(&body));
        // Stripe keeps keys per account: the caller's API key scopes them.
        let slot = p.keys.lock().await.entry(format!("{}\n{key}", auth.unwrap_or(""))).or_default().clone();
        // As at Stripe, a request that arrived is carried through and kept under its key even if
        // its client stops waiting (a timeout, a killed process): axum drops a handler whose
        // client hung up, so the keyed part runs as its own task.
        let (p, auth) = (p.clone(), auth.map(str::to_owned));
        let keyed = tokio::spawn(async move {
            // One request per key at a time, as Stripe does (a second waits here for the first).
            let mut slot = slot.lock().await;
            match &*slot {
                Some(s) if s.fingerprint != fingerprint => {
                    p.counts.lock().unwrap().key_errors += 1;
                    Err(stripe_error(
                        StatusCode::BAD_REQUEST,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters they were first used \
                         with",
                    ))
                }
                Some(s) => {
                    p.counts.lock().unwrap().replayed += 1;
                    Ok(s.reply.clone())
                }
                None => {
                    let reply = forward(&p, &method, &uri, auth.as_deref(), &body).await;
                    *slot = Some(Stored { fingerprint, reply: reply.clone() });
                    Ok(reply)
                }
            }
        });
        match keyed.await.expect("the keyed request's task ends") {
            Ok(reply) => reply,
            Err(refusal) => return refusal,
        }
    } else {
        forward(&p, &method, &uri, auth, &body).await
    };
    match fault {
        Some(Fault::Timeout) => {
            tokio::time::sleep(p.timeout).await;
            cut()
        }
        Some(Fault::LostReply) => cut(),
        _ => (reply.status, [("content-type", reply.content_type)], reply.body).into_response(),
    }
}

fn canonical(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut pairs: Vec<&str> = text.split('&').filter(|s| !s.is_empty()).collect();
    pairs.sort_unstable();
    pairs.join("&")
}

/// Sends meter's request to localstripe, adapted ([`ADAPTATIONS`]).
async fn forward(p: &Inner, method: &Method, uri: &Uri, auth: Option<&str>, body: &Bytes) -> Reply {
    p.counts.lock().unwrap().forwarded += 1;
    p.forwarded.lock().unwrap().push((
        method.to_string(),
        uri.path().to_string(),
        String::from_utf8_lossy(body).replace("%5B", "[").replace("%5D", "]"),
    ));
    let path = uri.path();
    let mut method = method.clone();
    let mut path = path.to_string();
    let mut body = String::from_utf8_lossy(body).into_owned();
    let drop_params = |body: &str, names: &[&str]| -> String {
        body.split('&')
            .filter(|pair| {
                let name = pair.split('=').next().unwrap_or("");
                let name = name.replace("%5B", "[").replace("%5D", "]");
                !names.iter().any(|n| name == *n || name.starts_with(&format!("{n}[")))
            })
            .collect::<Vec<_>>()
            .join("&")
    };
    if method == Method::POST && path == "/v1/invoices" {
        body =
            drop_params(&body, &["auto_advance", "collection_method", "days_until_due", "automatic_tax", "currency"]);
    }
    if method == Method::POST && path.starts_with("/v1/invoices/") && path.ends_with("/finalize") {
        method = Method::GET;
        path = path.trim_end_matches("/finalize").to_string();
        body.clear();
    }
    if method == Method::POST && path.starts_with("/v1/invoices/") && path.ends_with("/pay") {
        body = drop_params(&body, &["off_session"]);
    }
    if method == Method::POST && path.starts_with("/v1/invoices/") && path.ends_with("/send") {
        method = Method::GET;
        path = path.trim_end_matches("/send").to_string();
        body.clear();
    }
    let mut url = format!("{}{}", p.upstream, path);
    if let Some(q) = uri.query() {
        let q = if path == "/v1/invoiceitems" {
            drop_params(q, &["pending"])
        } else if path.starts_with("/v1/invoices/") {
            // Only an invoice's own reads (a send is one here) expand its payment.
            q.replace("payments.data.payment.payment_intent", "payment_intent")
        } else {
            q.to_string()
        };
        url = format!("{url}?{q}");
    }
    let sent = body.clone();
    let mut req = p.http.request(method, url);
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/x-www-form-urlencoded").body(body);
    }
    let reply = req.send().await.expect("localstripe answers");
    let status = StatusCode::from_u16(reply.status().as_u16()).unwrap();
    let content_type =
        reply.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("text/plain").to_string();
    let bytes = reply.bytes().await.unwrap();
    if !status.is_success() {
        eprintln!("proxy: localstripe answered {status} to {path} {sent:?}: {}", String::from_utf8_lossy(&bytes));
    }
    let with_total = |v: &mut serde_json::Value| {
        if v["object"] == "invoice" && v.get("total_excluding_tax").is_none() {
            v["total_excluding_tax"] = v["subtotal"].clone();
        }
    };
    let bytes = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(mut v) if v["object"] == "invoice" => {
            with_total(&mut v);
            Bytes::from(v.to_string())
        }
        Ok(mut v)
            if v["object"] == "list"
                && v["data"].as_array().is_some_and(|d| d.iter().any(|i| i["object"] == "invoice")) =>
        {
            v["data"].as_array_mut().into_iter().flatten().for_each(with_total);
            Bytes::from(v.to_string())
        }
        _ => bytes,
    };
    Reply { status, content_type, body: bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that commits each request at once (counting it) and answers it `delay` later.
    async fn slow_upstream(delay: Duration) -> (String, Arc<AtomicUsize>) {
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let app = axum::Router::new().fallback(move || {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(delay).await;
                ([("content-type", "application/json")], format!("{{\"id\":\"ii_{n}\"}}"))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    /// As at Stripe, a request that reached the upstream is kept under its key even when the
    /// client gave up waiting (or died) before the reply: its retry is answered with that reply
    /// and makes nothing a second time.
    #[tokio::test]
    async fn a_request_abandoned_by_its_client_still_answers_its_key() {
        let (upstream, seen) = slow_upstream(Duration::from_millis(400)).await;
        let proxy = Proxy::start(&upstream, 0, Duration::from_secs(5)).await;
        let post = |client: &reqwest::Client| {
            client
                .post(format!("{}/v1/invoiceitems", proxy.url))
                .header("idempotency-key", "k1")
                .header("content-type", "application/x-www-form-urlencoded")
                .body("amount=100&customer=cus_1")
                .send()
        };
        let impatient = reqwest::Client::builder().timeout(Duration::from_millis(100)).build().unwrap();
        assert!(post(&impatient).await.is_err(), "the first try gives up before the reply");
        tokio::time::sleep(Duration::from_millis(700)).await;
        let reply = post(&reqwest::Client::new()).await.unwrap();
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.text().await.unwrap(), "{\"id\":\"ii_1\"}");
        assert_eq!(seen.load(Ordering::SeqCst), 1, "the retry reached the upstream again");
        assert_eq!(proxy.counts().replayed, 1);
    }
}
