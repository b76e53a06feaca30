// What the portal and the console share: the session's exchange and the API, read with the
// session's cookie. Every figure shown is also a data-value attribute.
"use strict";

// What the Content-Security-Policy blocked on this page, kept where a test reads it.
document.addEventListener("securitypolicyviolation", (e) => {
  const seen = document.documentElement.dataset.cspViolations || "";
  document.documentElement.dataset.cspViolations = seen + e.violatedDirective + " " + e.blockedURI + "; ";
});

const $ = (id) => document.getElementById(id);

function show(el, text, value) {
  el.textContent = text;
  el.dataset.value = value === undefined ? text : value;
}

function fail(text) {
  const m = $("message");
  m.textContent = text;
  m.hidden = false;
}

async function api(path) {
  const r = await fetch(path, { headers: { accept: "application/json" } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = new Error(body.detail || r.statusText);
    e.status = r.status;
    throw e;
  }
  return body;
}

// The link's one-time token, exchanged for the session's cookie, then dropped from the
// address bar (and so from history and bookmarks).
async function exchange() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (!token) return true;
  history.replaceState(null, "", location.pathname);
  const r = await fetch("/api/v1/sessions/exchange", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token }),
  });
  if (!r.ok) {
    fail("This link was already used, has expired or was revoked. Ask for a new one.");
    return false;
  }
  return true;
}

// The payment provider's pages of an invoice it sent (Stripe's hosted invoice and its PDF), as
// links; none when it has none.
function providerLinks(payment) {
  const links = [];
  for (const [url, text, field] of [
    [payment && payment.hosted_url, "View and pay at the payment provider", "hosted"],
    [payment && payment.pdf_url, "PDF", "pdf"],
  ]) {
    if (!url || !/^https:\/\//.test(url)) continue;
    const a = document.createElement("a");
    a.href = url;
    a.rel = "noopener noreferrer";
    a.textContent = text;
    a.dataset.field = field;
    links.push(a);
  }
  return links;
}

// A term and its figure in a description list.
function dd(dl, label, field, text, value) {
  const dt = document.createElement("dt");
  dt.textContent = label;
  const d = document.createElement("dd");
  d.dataset.field = field;
  show(d, text, value);
  dl.append(dt, d);
}

// A link that downloads `href` as `file`.
function download(href, file, text) {
  const a = document.createElement("a");
  a.href = href;
  a.download = file;
  a.textContent = text;
  return a;
}

// A row's header cell: what the row is about, for screen readers too.
function rowHeader(row, text) {
  const th = document.createElement("th");
  th.scope = "row";
  th.textContent = text;
  row.append(th);
  return th;
}

function cell(row, text, value) {
  const td = document.createElement("td");
  show(td, text, value);
  row.append(td);
  return td;
}
