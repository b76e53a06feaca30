// The finance console: the months and their closes, recurring revenue, accounts receivable and
// subscriptions, read with the console session's cookie from the same API a script would call
// (helpers in common.js). Every figure is also a data-value attribute.
"use strict";

function row(cells, key, value) {
  const tr = document.createElement("tr");
  tr.dataset[key] = value;
  cells.forEach(([text, field, v]) => {
    const td = cell(tr, text, v);
    if (field) td.dataset.field = field;
  });
  return tr;
}

// A closed month's export (`invoices` or `report`) in `format`.
function periodExport(period, what, format) {
  const href = "/api/v1/periods/" + period + "/" + what + "?format=" + format;
  return download(href, period + "-" + what + "." + format, what + " (" + format.toUpperCase() + ")");
}

function renderPeriods(months) {
  $("periods").replaceChildren(
    ...months.map((m) => {
      const tr = row(
        [
          [m.period],
          [m.state, "state"],
          [m.invoices ?? "—", "invoices", m.invoices ?? ""],
          [m.synced ?? "—", "synced", m.synced ?? ""],
          [m.pending ?? "—", "pending", m.pending ?? ""],
          [m.dead ?? "—", "dead", m.dead ?? ""],
        ],
        "period",
        m.period,
      );
      const td = document.createElement("td");
      if (m.state === "closable") {
        const b = document.createElement("button");
        b.type = "button";
        b.dataset.close = m.period;
        b.textContent = "Close " + m.period;
        b.addEventListener("click", () => closeMonth(m.period));
        td.append(b);
      }
      if (m.invoices !== null && m.invoices !== undefined) {
        for (const what of ["invoices", "report"]) td.append(periodExport(m.period, what, "csv"), " ");
      }
      tr.append(td);
      return tr;
    }),
  );
  const options = (list) =>
    list.map((m) => {
      const o = document.createElement("option");
      o.value = m.period;
      o.textContent = m.period;
      return o;
    });
  const closed = months.filter((m) => m.invoices !== null && m.invoices !== undefined);
  const chosen = $("revenue-month").value;
  $("revenue-month").replaceChildren(...options(months));
  // The latest closed month first: the one whose billing and recognition are booked.
  if (chosen) $("revenue-month").value = chosen;
  else if (closed.length) $("revenue-month").value = closed[0].period;
  $("closed-month").replaceChildren(...options(closed));
}

// What a close says while it works, in words and on a bar.
function closeProgress(p) {
  const status = $("close-status");
  const bar = $("close-progress");
  status.dataset.stage = p.stage;
  // Every step seen, for a test to read however fast they went by.
  status.dataset.seen = (status.dataset.seen || "") + p.stage + " ";
  if (p.stage === "census") {
    show(status, "Counting the log: " + p.read + " records read", p.read);
    bar.removeAttribute("value");
  } else if (p.stage === "totals") {
    show(status, "Reading the stores' totals", "");
    bar.removeAttribute("value");
  } else if (p.stage === "rating") {
    show(status, "Rating subscriptions: " + p.done + (p.of ? " of " + p.of : ""), p.done);
    if (p.of) {
      bar.max = p.of;
      bar.value = p.done;
    }
  } else if (p.stage === "adjusting") {
    show(status, "Rating " + p.period + " again for late events", p.period);
  }
}

// Closes a month, its progress streamed (one JSON line per step, then the close).
async function closeMonth(period) {
  $("closing").hidden = false;
  for (const b of document.querySelectorAll("[data-close]")) b.disabled = true;
  show($("close-status"), "Closing " + period, "");
  let last = null;
  try {
    last = await streamClose(period);
  } catch (e) {
    last = { error: { detail: "the answer was cut off (" + e.message + "); the months below say where the close stands" } };
  }
  const status = $("close-status");
  if (last && last.close) {
    status.dataset.stage = "done";
    const c = last.close;
    show(status, "Closed " + c.period + ": " + c.invoices + " invoices, " + c.differences + " differences", c.period);
    $("close-progress").max = 1;
    $("close-progress").value = 1;
  } else {
    status.dataset.stage = "failed";
    show(status, "The close failed: " + (last && last.error ? last.error.detail : "no answer"), "");
  }
  try {
    renderPeriods(await api("/api/v1/periods"));
    if (last && last.close) $("closed-month").value = last.close.period;
    await renderClosed();
  } catch (e) {
    fail("The months cannot be read again: " + e.message);
  }
  for (const b of document.querySelectorAll("[data-close]")) b.disabled = false;
  document.body.dataset.closed = last && last.close ? last.close.period : "";
}

// The close's answer: each progress line shown as it comes, then the close (or its error).
async function streamClose(period) {
  const r = await fetch("/api/v1/periods/" + period + "/close", {
    method: "POST",
    headers: { accept: "application/x-ndjson" },
  });
  let last = null;
  if (r.ok && r.body) {
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += value;
      const lines = buffered.split("\n");
      buffered = lines.pop();
      for (const line of lines.filter((l) => l.trim())) {
        const msg = JSON.parse(line);
        if (msg.progress) closeProgress(msg.progress);
        else last = msg;
      }
    }
  } else {
    last = { error: { detail: (await r.json().catch(() => ({}))).detail || r.statusText } };
  }
  return last;
}

// The reconciliation report of a closed month, every difference first and said in words; each
// tenant a link that finds its invoices.
async function renderClosed() {
  const month = $("closed-month").value;
  if (!month) return;
  const report = await api("/api/v1/periods/" + month + "/report");
  const rows = report.slice().sort((a, b) => (a.status === "ok") - (b.status === "ok"));
  $("report").dataset.period = month;
  $("report").replaceChildren(
    ...rows.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.tenant = r.tenant;
      tr.dataset.meter = r.meter;
      const th = rowHeader(tr, "");
      const a = document.createElement("a");
      a.href = "#search";
      a.textContent = r.tenant;
      a.addEventListener("click", (e) => {
        e.preventDefault();
        $("search").value = "";
        search(r.tenant);
      });
      th.append(a);
      cell(tr, r.meter);
      for (const f of ["accepted", "counted", "stored", "rated"]) {
        cell(tr, r[f] ?? "—", r[f] ?? "").dataset.field = f;
      }
      const s = cell(tr, r.status === "ok" ? "ok" : "differs: " + r.status, r.status);
      s.dataset.field = "status";
      if (r.status !== "ok") tr.className = "flagged";
      return tr;
    }),
  );
  const flagged = report.filter((r) => r.status !== "ok").length;
  show($("report-summary"), flagged + " of " + report.length + " rows differ", flagged);
  const exports = $("closed-exports");
  exports.replaceChildren();
  for (const [what, format] of [["invoices", "csv"], ["invoices", "json"], ["report", "csv"]]) {
    exports.append(periodExport(month, what, format), " ");
  }
  await search();
}

// The closed month's invoices whose tenant or id holds the search text (or exactly `tenant`'s):
// how many, their totals per currency, and the first 50.
async function search(tenant) {
  const month = $("closed-month").value;
  const q = $("search").value.trim();
  const which = tenant ? "tenant=" + encodeURIComponent(tenant) : "q=" + encodeURIComponent(q);
  const found = await api("/api/v1/periods/" + month + "/invoices/search?limit=50&" + which);
  const body = $("found");
  body.dataset.query = tenant ? "tenant:" + tenant : q;
  body.replaceChildren(
    ...found.invoices.map((i) => {
      const tr = document.createElement("tr");
      tr.dataset.invoice = i.id;
      rowHeader(tr, i.tenant);
      const td = document.createElement("td");
      const a = document.createElement("a");
      a.href = "/invoice?id=" + encodeURIComponent(i.id);
      a.textContent = i.id;
      td.append(a);
      tr.append(td);
      cell(tr, String(i.lines));
      cell(tr, i.total + " " + i.currency, i.total).dataset.field = "total";
      return tr;
    }),
  );
  const shown = found.invoices.length < found.matched ? " (the first " + found.invoices.length + " shown)" : "";
  const what = tenant ? " of tenant " + tenant : "";
  show($("search-summary"), found.matched + " invoices of " + month + what + " match" + shown, found.matched);
  $("found-totals").replaceChildren(
    ...Object.entries(found.totals).map(([currency, total]) => {
      const tr = document.createElement("tr");
      tr.dataset.currency = currency;
      rowHeader(tr, "Total " + currency);
      cell(tr, "");
      cell(tr, "");
      cell(tr, total, total).dataset.field = "total";
      return tr;
    }),
  );
}

async function renderRevenue() {
  const month = $("revenue-month").value;
  const r = await api("/api/v1/revenue?period=" + month);
  $("revenue").dataset.period = month;
  $("revenue").replaceChildren(
    ...Object.entries(r.currencies).map(([currency, c]) =>
      row(
        [
          [currency],
          [c.mrr_start, "mrr_start"],
          [c.movements.new, "new"],
          [c.movements.expansion, "expansion"],
          [c.movements.reactivation, "reactivation"],
          [c.movements.contraction, "contraction"],
          [c.movements.churn, "churn"],
          [c.movements.net_new, "net_new"],
          [c.mrr_end, "mrr_end"],
          [c.arr_end, "arr_end"],
        ],
        "currency",
        currency,
      ),
    ),
  );
  $("recognition").replaceChildren(
    ...Object.entries(r.currencies).map(([currency, c]) => {
      const g = c.recognition;
      return row(
        [
          [currency],
          [g.billed, "billed"],
          [g.billed_fees, "billed_fees"],
          [g.billed_usage, "billed_usage"],
          g.collected === null ? ["no payment sync", "collected", ""] : [g.collected, "collected"],
          [g.recognised, "recognised"],
          [g.recognised_fees, "recognised_fees"],
          [g.recognised_usage, "recognised_usage"],
          [g.deferred_start, "deferred_start"],
          [g.deferred_end, "deferred_end"],
        ],
        "currency",
        currency,
      );
    }),
  );
}

function renderReceivables(ar) {
  $("aging").replaceChildren(
    ...Object.entries(ar.currencies).map(([currency, c]) =>
      row(
        [
          [currency],
          [c.outstanding, "outstanding"],
          [c.aging.current, "current"],
          [c.aging["1-30"], "1-30"],
          [c.aging["31-60"], "31-60"],
          [c.aging["61-90"], "61-90"],
          [c.aging.over_90, "over_90"],
          [c.collection_rate === null ? "—" : (Number(c.collection_rate) * 100).toFixed(2) + "%", "collection_rate", c.collection_rate ?? ""],
          [c.dso_days ?? "—", "dso_days", c.dso_days ?? ""],
        ],
        "currency",
        currency,
      ),
    ),
  );
  $("outstanding").replaceChildren(
    ...ar.outstanding.map((o) =>
      row(
        [
          [o.invoice],
          [o.tenant],
          [o.amount + " " + o.currency, "amount", o.amount],
          [String(o.days_past_due), "days_past_due"],
        ],
        "invoice",
        o.invoice,
      ),
    ),
  );
}

function renderSubscriptions(stats) {
  const dl = $("subscriptions");
  const add = (label, field, value) => dd(dl, label, field, String(value));
  dl.replaceChildren();
  for (const [state, n] of Object.entries(stats.by_state)) add(state, "state-" + state, n);
  add("trial conversion", "conversion_rate", stats.conversion_rate ?? "—");
}

async function start() {
  if (!(await exchange())) return;
  try {
    const months = await api("/api/v1/periods");
    renderPeriods(months);
    const [ar, stats] = await Promise.all([api("/api/v1/receivables"), api("/api/v1/subscriptions/stats")]);
    renderReceivables(ar);
    renderSubscriptions(stats);
    await renderRevenue();
    $("revenue-controls").addEventListener("change", () => renderRevenue());
    await renderClosed();
    $("closed-controls").addEventListener("change", () => renderClosed());
    $("search-controls").addEventListener("submit", (e) => {
      e.preventDefault();
      search().catch((err) => fail("The search failed: " + err.message));
    });
  } catch (e) {
    fail(
      e.status === 401
        ? "This session has ended. Ask for a new link."
        : e.status === 403
          ? "This session may not open the finance console."
          : "The console cannot be read: " + e.message,
    );
    return;
  }
  document.body.dataset.ready = "true";
}

start();
