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
      if (m.invoices !== null && m.invoices !== undefined) {
        for (const [what, path] of [["invoices", "invoices"], ["report", "report"]]) {
          const a = document.createElement("a");
          a.href = "/api/v1/periods/" + m.period + "/" + path + "?format=csv";
          a.download = m.period + "-" + what + ".csv";
          a.textContent = what + " (CSV)";
          td.append(a, " ");
        }
      }
      tr.append(td);
      return tr;
    }),
  );
  const select = $("revenue-month");
  select.replaceChildren(
    ...months.map((m) => {
      const o = document.createElement("option");
      o.value = m.period;
      o.textContent = m.period;
      return o;
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
  const add = (label, field, value) => {
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.dataset.field = field;
    show(dd, String(value));
    dl.append(dt, dd);
  };
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
