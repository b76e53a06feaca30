//! meter's screens: pages and assets embedded in the binary (nothing fetched at run time, no
//! CDN), served with a `default-src 'self'` Content-Security-Policy. Every number a page shows
//! comes from the same API a script would call, with the session the page was opened with; each
//! is also in the DOM as a `data-value` attribute, for tests and screen readers.
//!
//! - `/console#token=…`: the finance console, opened by a console session's link
//!   (`POST /api/v1/console/sessions`): the months and their closes with their exports,
//!   recurring revenue, accounts receivable, subscriptions by state.
//! - `/invoice?id=…`: one closed invoice, printable, with where each line comes from (the
//!   portal's invoice history links to it).
//! - `/portal#token=…`: a tenant's dashboard, opened by a portal session's link
//!   (`POST /api/v1/portal/sessions`): the page exchanges the one-time token for the session's
//!   cookie, drops it from the address bar, and reads the tenant's usage and entitlements.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// The policy every page and asset is served with: only this server's scripts, styles, images
/// and API; no frames, no forms elsewhere, no inline script.
pub const CSP: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'";

struct Asset {
    body: &'static str,
    content_type: &'static str,
}

const PORTAL_HTML: Asset =
    Asset { body: include_str!("../assets/portal.html"), content_type: "text/html; charset=utf-8" };
const PORTAL_JS: Asset =
    Asset { body: include_str!("../assets/portal.js"), content_type: "text/javascript; charset=utf-8" };
const CONSOLE_HTML: Asset =
    Asset { body: include_str!("../assets/console.html"), content_type: "text/html; charset=utf-8" };
const CONSOLE_JS: Asset =
    Asset { body: include_str!("../assets/console.js"), content_type: "text/javascript; charset=utf-8" };
const COMMON_JS: Asset =
    Asset { body: include_str!("../assets/common.js"), content_type: "text/javascript; charset=utf-8" };
const INVOICE_HTML: Asset =
    Asset { body: include_str!("../assets/invoice.html"), content_type: "text/html; charset=utf-8" };
const INVOICE_JS: Asset =
    Asset { body: include_str!("../assets/invoice.js"), content_type: "text/javascript; charset=utf-8" };
const STYLE_CSS: Asset = Asset { body: include_str!("../assets/style.css"), content_type: "text/css; charset=utf-8" };
/// uPlot 1.6.32 (MIT, `assets/vendor/uplot/LICENSE`), vendored from the npm registry unchanged.
const UPLOT_JS: Asset = Asset {
    body: include_str!("../assets/vendor/uplot/uPlot.iife.min.js"),
    content_type: "text/javascript; charset=utf-8",
};
const UPLOT_CSS: Asset =
    Asset { body: include_str!("../assets/vendor/uplot/uPlot.min.css"), content_type: "text/css; charset=utf-8" };
const UPLOT_LICENSE: Asset =
    Asset { body: include_str!("../assets/vendor/uplot/LICENSE"), content_type: "text/plain; charset=utf-8" };

fn serve(asset: &'static Asset) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY")),
        // Assets change with the binary: revalidated, never stale after an upgrade.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, asset.body).into_response()
}

/// The pages and their assets, gzip-compressed for clients that take it.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/portal") }))
        .route("/portal", get(|| async { serve(&PORTAL_HTML) }))
        .route("/assets/portal.js", get(|| async { serve(&PORTAL_JS) }))
        .route("/console", get(|| async { serve(&CONSOLE_HTML) }))
        .route("/invoice", get(|| async { serve(&INVOICE_HTML) }))
        .route("/assets/invoice.js", get(|| async { serve(&INVOICE_JS) }))
        .route("/assets/console.js", get(|| async { serve(&CONSOLE_JS) }))
        .route("/assets/common.js", get(|| async { serve(&COMMON_JS) }))
        .route("/assets/style.css", get(|| async { serve(&STYLE_CSS) }))
        .route("/assets/vendor/uplot/uPlot.iife.min.js", get(|| async { serve(&UPLOT_JS) }))
        .route("/assets/vendor/uplot/uPlot.min.css", get(|| async { serve(&UPLOT_CSS) }))
        .route("/assets/vendor/uplot/LICENSE", get(|| async { serve(&UPLOT_LICENSE) }))
        .layer(tower_http::compression::CompressionLayer::new().gzip(true).no_br().no_deflate().no_zstd())
}
