//! Browser sessions end to end on the embedded default: a portal session for tenant A (opened
//! by an admin key, or by A's read key) reads A and is refused B, can manage A's webhooks, and
//! cannot open another session nor reach the console's routes; a link works once; an expired,
//! revoked or forged session is refused; a console session reads every tenant.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// Exchanges the token in `url` (after `#token=`) for the session cookie: (status, body, cookie).
async fn exchange(base: &str, url: &str) -> (u16, Value, Option<String>) {
    let token = url.split_once("#token=").map(|(_, t)| t).unwrap_or_default();
    let r = client()
        .post(format!("{base}/api/v1/sessions/exchange"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let cookie = r.headers().get("set-cookie").map(|c| c.to_str().unwrap().to_string());
    (status, r.json().await.unwrap_or(Value::Null), cookie)
}

/// A request carrying only the session cookie.
async fn as_session(method: Method, url: String, cookie: &str, body: Option<Value>) -> (u16, Value) {
    as_session_from(method, url, cookie, body, None).await
}

/// The same from a page of `origin` (this server's own when `None`, as a browser says it).
async fn as_session_from(
    method: Method,
    url: String,
    cookie: &str,
    body: Option<Value>,
    origin: Option<&str>,
) -> (u16, Value) {
    let pair = cookie.split(';').next().unwrap().to_string();
    let own = url.split('/').take(3).collect::<Vec<_>>().join("/");
    let mut req = client().request(method, url).header("cookie", pair).header("origin", origin.unwrap_or(&own));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_session_reads_its_own_tenant_only_and_a_console_session_reads_all() {
    let dir = tempfile::tempdir().unwrap();
    let admin = create_key(dir.path(), "admin", None);
    let reader_a = create_key(dir.path(), "read", Some("acme"));
    let ingest = create_key(dir.path(), "ingest", Some("acme"));
    let meter = Meter::start(dir.path(), &[]);
    let url = meter.url.clone();

    // Opened by an admin key for acme: a link to this server's portal, its token after '#'.
    let (s, opened) = call(
        Method::POST,
        format!("{url}/api/v1/portal/sessions"),
        &admin,
        Some(json!({"tenant": "acme", "ttl": "30m"})),
    )
    .await;
    assert_eq!(s, 201, "{opened}");
    let link = opened["url"].as_str().unwrap().to_string();
    assert!(link.starts_with(&format!("{url}/portal#token=mtl_")), "{link}");
    assert_eq!(opened["tenant"], "acme");

    // Exchanged once, for an HttpOnly, SameSite=Strict cookie; the link is then spent.
    let (s, session, cookie) = exchange(&url, &link).await;
    assert_eq!(s, 200, "{session}");
    let cookie = cookie.expect("a cookie is set");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Max-Age="),
        "{cookie}"
    );
    assert_eq!((session["kind"].as_str(), session["tenant"].as_str()), (Some("portal"), Some("acme")));
    let (s, _, again) = exchange(&url, &link).await;
    assert_eq!((s, again), (401, None), "a link works once");

    // The session reads acme; acme's data by default; never beta's.
    let (s, u) = as_session(Method::GET, format!("{url}/api/v1/usage?tenant=acme"), &cookie, None).await;
    assert_eq!(s, 200, "{u}");
    let (s, u) = as_session(Method::GET, format!("{url}/api/v1/usage"), &cookie, None).await;
    assert_eq!((s, u["tenant"].as_str()), (200, Some("acme")), "{u}");
    let (s, e) = as_session(Method::GET, format!("{url}/api/v1/usage?tenant=beta"), &cookie, None).await;
    assert_eq!(s, 403, "{e}");
    let (s, _) = as_session(Method::GET, format!("{url}/api/v1/alerts?tenant=beta"), &cookie, None).await;
    assert_eq!(s, 403);
    // It manages acme's webhook endpoints, and only those.
    let hook = json!({"url": "https://hooks.acme.example/meter"});
    let (s, e) = as_session(Method::POST, format!("{url}/api/v1/webhooks"), &cookie, Some(hook)).await;
    assert_eq!(s, 201, "{e}");
    let other = json!({"url": "https://hooks.beta.example/meter", "tenant": "beta"});
    let (s, _) = as_session(Method::POST, format!("{url}/api/v1/webhooks"), &cookie, Some(other)).await;
    assert!(s == 403 || s == 422, "another tenant's webhooks: {s}");
    // A write carried by the cookie from another site's page (or with no origin said) is refused.
    let other = json!({"url": "https://hooks.acme.example/other"});
    let (s, e) = as_session_from(
        Method::POST,
        format!("{url}/api/v1/webhooks"),
        &cookie,
        Some(other),
        Some("https://evil.example"),
    )
    .await;
    assert_eq!(s, 403, "{e}");
    assert_eq!(e["extensions"]["validationErrors"][0]["path"], "origin", "{e}");
    // Nor may it list or revoke sessions, read another tenant's invoice, or retry anything.
    let (s, _) = as_session(Method::GET, format!("{url}/api/v1/sessions"), &cookie, None).await;
    assert_eq!(s, 401);
    let (s, _) =
        as_session(Method::DELETE, format!("{url}/api/v1/sessions/{}", opened["id"].as_str().unwrap()), &cookie, None)
            .await;
    assert_eq!(s, 401);
    let (s, _) = as_session(Method::GET, format!("{url}/api/v1/invoices/inv_beta_2026-10"), &cookie, None).await;
    assert_eq!(s, 404);
    let (s, _) = as_session(Method::POST, format!("{url}/api/v1/sync/operations/1/retry"), &cookie, None).await;
    assert_eq!(s, 403);

    // Not the console's routes, and no session of its own making.
    let (s, _) = as_session(Method::POST, format!("{url}/api/v1/periods/2026-10/close"), &cookie, None).await;
    assert_eq!(s, 403);
    let (s, _) = as_session(Method::GET, format!("{url}/api/v1/subscriptions/stats"), &cookie, None).await;
    assert_eq!(s, 403);
    let (s, _) =
        as_session(Method::POST, format!("{url}/api/v1/portal/sessions"), &cookie, Some(json!({"tenant": "acme"})))
            .await;
    assert_eq!(s, 401, "a session opens no session");
    let (s, _) = as_session(Method::POST, format!("{url}/api/v1/console/sessions"), &cookie, Some(json!({}))).await;
    assert_eq!(s, 401);

    // A forged cookie, and a revoked session, are refused.
    let (s, _) = as_session(Method::GET, format!("{url}/api/v1/usage"), "meter_session=mts_forged", None).await;
    assert_eq!(s, 401);
    let id = opened["id"].as_str().unwrap();
    let (s, listed) = call(Method::GET, format!("{url}/api/v1/sessions?tenant=acme"), &reader_a, None).await;
    assert_eq!(s, 200, "{listed}");
    assert_eq!(listed[0]["id"].as_str(), Some(id));
    assert!(!listed.to_string().contains("mtl_") && !listed.to_string().contains("mts_"), "no secret listed");
    let (s, _) = call(Method::DELETE, format!("{url}/api/v1/sessions/{id}"), &reader_a, None).await;
    assert_eq!(s, 204);
    let (s, _) = as_session(Method::GET, format!("{url}/api/v1/usage"), &cookie, None).await;
    assert_eq!(s, 401, "revoked");

    // acme's read key opens sessions for acme only; an ingest key none.
    let (s, own) =
        call(Method::POST, format!("{url}/api/v1/portal/sessions"), &reader_a, Some(json!({"tenant": "acme"}))).await;
    assert_eq!(s, 201, "{own}");
    let (s, e) =
        call(Method::POST, format!("{url}/api/v1/portal/sessions"), &reader_a, Some(json!({"tenant": "beta"}))).await;
    assert_eq!(s, 403, "{e}");
    let (s, _) =
        call(Method::POST, format!("{url}/api/v1/portal/sessions"), &ingest, Some(json!({"tenant": "acme"}))).await;
    assert_eq!(s, 403);
    let (s, e) = call(Method::POST, format!("{url}/api/v1/console/sessions"), &reader_a, Some(json!({}))).await;
    assert_eq!(s, 403, "{e}");
    // Bad input: named fields, nothing opened.
    for (body, field) in [
        (json!({"tenant": "acme", "ttl": "2d"}), "ttl"),
        (json!({"tenant": "acme", "ttl": "soon"}), "ttl"),
        (json!({"tenant": "acme", "ttl": "10s"}), "ttl"),
        (json!({"tenant": "bad tenant"}), "tenant"),
        (json!({"tenant": "acme", "colour": "red"}), "body"),
    ] {
        let (s, e) = call(Method::POST, format!("{url}/api/v1/portal/sessions"), &admin, Some(body.clone())).await;
        assert_eq!(s, 422, "{body}: {e}");
        assert_eq!(e["extensions"]["validationErrors"][0]["path"].as_str(), Some(field), "{body}: {e}");
    }
    let (_, all) = call(Method::GET, format!("{url}/api/v1/sessions"), &admin, None).await;
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");

    // A console session: what an admin key reads, every tenant.
    let (s, console) =
        call(Method::POST, format!("{url}/api/v1/console/sessions"), &admin, Some(json!({"ttl": "1h"}))).await;
    assert_eq!(s, 201, "{console}");
    assert!(console["url"].as_str().unwrap().contains("/console#token="));
    let (_, _, c) = exchange(&url, console["url"].as_str().unwrap()).await;
    let c = c.unwrap();
    for tenant in ["acme", "beta"] {
        let (s, u) = as_session(Method::GET, format!("{url}/api/v1/usage?tenant={tenant}"), &c, None).await;
        assert_eq!(s, 200, "{u}");
    }
    let (s, _) = as_session(Method::GET, format!("{url}/api/v1/subscriptions/stats"), &c, None).await;
    assert_eq!(s, 200);
}
