// The customer portal: one tenant's usage against its plan, read with the portal session's
// cookie from the same API a script would call (helpers in common.js). Every figure is also a
// data-value attribute.
"use strict";

// A bar with the 80, 90 and 100% marks; the level is also said in words.
function bar(card, used, limit) {
  const share = limit > 0 ? used / limit : 0;
  const b = document.createElement("div");
  b.className = "bar";
  b.setAttribute("role", "meter");
  b.setAttribute("aria-valuemin", "0");
  b.setAttribute("aria-valuemax", String(limit));
  b.setAttribute("aria-valuenow", String(used));
  const fill = document.createElement("div");
  fill.className = "fill";
  fill.style.width = Math.min(share, 1) * 100 + "%";
  b.append(fill);
  for (const mark of [0.8, 0.9, 1]) {
    const m = document.createElement("div");
    m.className = "mark";
    m.style.left = "calc(" + mark * 100 + "% - 1px)";
    b.append(m);
  }
  const level = document.createElement("p");
  level.className = "level";
  level.dataset.field = "percent";
  const pct = Math.floor(share * 100);
  const passed = [100, 90, 80].find((p) => pct >= p);
  show(level, pct + "% of the included quantity" + (passed ? " (past " + passed + "%)" : ""), String(pct));
  card.append(b, level);
}

function card(meter, ent, overage) {
  const c = document.createElement("article");
  c.className = "card";
  c.dataset.meter = meter.name;
  const h = document.createElement("h3");
  h.textContent = meter.name;
  c.append(h);
  const dl = document.createElement("dl");
  const used = meter.value === null ? "—" : meter.value;
  dd(dl, "Used", "used", used, meter.value === null ? "" : meter.value);
  if (ent && ent.limit !== null) {
    dd(dl, "Included", "included", ent.limit);
    if (ent.remaining !== null) dd(dl, "Remaining", "remaining", ent.remaining);
  }
  c.append(dl);
  if (ent && ent.limit !== null && ent.limit !== "unlimited" && meter.value !== null) {
    bar(c, Number(meter.value), Number(ent.limit));
  }
  if (overage) {
    const p = document.createElement("p");
    p.dataset.field = "overage";
    show(p, "Overage so far: " + overage.amount + " " + overage.currency, overage.amount);
    c.append(p);
  }
  if (ent && ent.hard_limit) {
    const p = document.createElement("p");
    p.className = "hard";
    p.dataset.field = "hard_limit";
    show(p, "Hard limit: events beyond it are refused", "true");
    c.append(p);
  }
  return c;
}

async function start() {
  if (!(await exchange())) return;
  // What the cards need, asked for at once; a missing plan (404) is no failure, and an ended
  // session (401) is said once, by the usage.
  const optional = (path, what) =>
    api(path).catch((e) => {
      if (e.status !== 404 && e.status !== 401) fail(what + " cannot be read: " + e.message);
      return null;
    });
  const [usage, ent, upcoming, portal, subs] = await Promise.all([
    api("/api/v1/usage").catch((e) => {
      fail(e.status === 401 ? "This session has ended. Ask for a new link." : "Usage cannot be read: " + e.message);
      return null;
    }),
    optional("/api/v1/entitlements", "The plan"),
    optional("/api/v1/invoices/upcoming", "The upcoming invoice"),
    api("/api/v1/billing-portal").catch(() => ({ available: false })),
    optional("/api/v1/subscriptions", "The subscription"),
  ]);
  if (!usage) return;
  let entitled = new Map();
  if (ent) {
    $("plan").hidden = false;
    show($("plan-code"), ent.plan);
    entitled = new Map(ent.entitlements.filter((x) => x.kind === "meter").map((x) => [x.name, x]));
    renderFeatures(ent.entitlements.filter((x) => x.kind === "feature"));
  }
  paymentMethodButton(portal);
  if (subs && subs.length) renderSubscription(subs[subs.length - 1]);
  show($("tenant"), usage.tenant);
  show($("period"), "Period " + usage.period + " (" + usage.from.slice(0, 10) + " to " + usage.to.slice(0, 10) + ")", usage.period);
  const w = $("watermark");
  if (usage.watermark) show(w, "Complete up to " + usage.watermark, usage.watermark);
  else show(w, "Not counted yet", "");
  const overage = new Map();
  if (upcoming) {
    for (const l of upcoming.so_far.lines) {
      if (l.meter && l.kind === "overage") overage.set(l.meter, { amount: l.amount, currency: upcoming.so_far.currency });
    }
    renderUpcoming(upcoming);
  }
  const cards = $("meters");
  cards.replaceChildren(...usage.meters.map((m) => card(m, entitled.get(m.name), overage.get(m.name))));
  // When the cards are in the DOM, for the Performance API (the dashboard's benchmark reads it).
  performance.mark("cards");
  daily.meters = usage.meters;
  daily.included = new Map([...entitled].map(([name, e]) => [name, e.limit === null || e.limit === "unlimited" ? null : Number(e.limit)]));
  setUpChart();
  let rest;
  try {
    rest = await Promise.all([
      drawChart(),
      api("/api/v1/usage/breakdown?period=" + usage.period),
      api("/api/v1/alerts"),
      api("/api/v1/invoices"),
    ]);
  } catch (e) {
    fail("Part of the page cannot be read: " + e.message);
    return;
  }
  const [, breakdown, alerts, invoices] = rest;
  renderBreakdown(breakdown);
  renderAlerts(alerts.alerts, usage.period);
  renderInvoices(invoices);
  document.body.dataset.ready = "true";
}


// The tenant's latest subscription: its cycle, its state and the running cycle's dates.
function renderSubscription(s) {
  const dl = $("subscription");
  dl.dataset.subscription = s.id;
  const add = (label, field, text, value) => dd(dl, label, field, text, value);
  dl.replaceChildren();
  add("Billing cycle", "cycle", s.cycle);
  add("State", "state", s.state.replace("_", " "), s.state);
  if (s.cycle_start && s.cycle_end) {
    add("This cycle", "cycle_dates", s.cycle_start.slice(0, 10) + " to " + s.cycle_end.slice(0, 10), s.cycle_start + "/" + s.cycle_end);
  }
  if (s.trial_ends) add("Trial ends", "trial_ends", s.trial_ends.slice(0, 10), s.trial_ends);
  if (s.ends) add("Ends", "ends", s.ends.slice(0, 10), s.ends);
}

// The period's invoice so far and projected, line by line (lines matched by id).
function renderUpcoming(up) {
  $("upcoming").hidden = false;
  const projected = new Map(up.projected.lines.map((l) => [l.id, l]));
  const rows = up.so_far.lines.map((l) => {
    const tr = document.createElement("tr");
    tr.dataset.line = l.id;
    rowHeader(tr, l.description);
    cell(tr, l.amount).dataset.field = "so_far";
    const p = projected.get(l.id);
    cell(tr, p ? p.amount : "—", p ? p.amount : "").dataset.field = "projected";
    return tr;
  });
  $("upcoming-lines").replaceChildren(...rows);
  show($("so-far-total"), up.so_far.total + " " + up.so_far.currency, up.so_far.total);
  show($("projected-total"), up.projected.total + " " + up.projected.currency, up.projected.total);
}

// Alerts raised, newest first; the period's latest upgrade suggestion, with its saving.
function renderAlerts(alerts, period) {
  const items = alerts
    .slice()
    .reverse()
    .map((a) => {
      const li = document.createElement("li");
      li.dataset.alert = a.id;
      li.textContent =
        a.kind === "usage_threshold"
          ? a.raised_at + ": " + a.meter + " passed " + a.percent + "% of " + a.included + " (at " + a.value + ")"
          : a.raised_at + ": " + a.suggested_plan + " would cost " + a.saving + " less this period";
      return li;
    });
  $("alerts").replaceChildren(...items);
  const suggestion = alerts.filter((a) => a.kind === "upgrade_suggested" && a.period === period).pop();
  if (suggestion) {
    const s = $("suggestion");
    s.hidden = false;
    show(s, "Upgrade to " + suggestion.suggested_plan + " and save " + suggestion.saving + " this period", suggestion.saving);
  }
}

// Each broken-down meter by each of its properties: the largest values, the others together,
// and the total; each amount with its share of the total in words, not only in a bar.
function renderBreakdown(b) {
  $("breakdown-none").hidden = b.dimensions.length > 0;
  const tables = b.dimensions.map((d) => {
    const table = document.createElement("table");
    table.dataset.meter = d.meter;
    table.dataset.property = d.property;
    const caption = document.createElement("caption");
    caption.textContent = d.meter + " by " + d.property;
    const head = document.createElement("thead");
    head.innerHTML = '<tr><th scope="col">Value</th><th scope="col">Amount</th><th scope="col">Share</th></tr>';
    const share = (amount) => {
      const total = Number(d.total);
      return total > 0 ? ((Number(amount) / total) * 100).toFixed(1) + "%" : "—";
    };
    const row = (label, amount, field) => {
      const tr = document.createElement("tr");
      tr.dataset.field = field;
      rowHeader(tr, label);
      cell(tr, amount).dataset.field = "amount";
      cell(tr, share(amount), share(amount)).dataset.field = "share";
      return tr;
    };
    const body = document.createElement("tbody");
    for (const s of d.top) {
      const tr = row(s.value === null ? "(not set)" : s.value, s.amount, "top");
      tr.dataset.value = s.value === null ? "" : s.value;
      body.append(tr);
    }
    if (d.rest.values > 0) body.append(row(d.rest.values + " other values", d.rest.amount, "rest"));
    const foot = document.createElement("tfoot");
    foot.append(row("Total", d.total, "total"));
    table.append(caption, head, body, foot);
    return table;
  });
  $("breakdown").replaceChildren(...tables);
}

// Closed invoices, newest first, with where their payment stands and their downloads.
function renderInvoices(invoices) {
  const rows = invoices.map((inv) => {
    const tr = document.createElement("tr");
    tr.dataset.invoice = inv.id;
    cell(tr, inv.period);
    cell(tr, inv.total + " " + inv.currency, inv.total).dataset.field = "total";
    const pay = inv.payment;
    const status = pay ? pay.status + (pay.overdue ? " (overdue)" : "") : "in meter (not sent to a payment provider)";
    cell(tr, status, pay ? pay.status : "").dataset.field = "payment";
    const td = document.createElement("td");
    const page = document.createElement("a");
    page.href = "/invoice?id=" + encodeURIComponent(inv.id);
    page.textContent = "View";
    page.dataset.field = "view";
    td.append(page, " ");
    for (const format of ["csv", "json"]) {
      const href = "/api/v1/invoices/" + encodeURIComponent(inv.id) + "?format=" + format;
      td.append(download(href, inv.id + "." + format, format.toUpperCase()), " ");
    }
    for (const a of providerLinks(pay)) td.append(a, " ");
    tr.append(td);
    return tr;
  });
  $("invoices").replaceChildren(...rows);
}

start();

// The daily chart: for count and sum meters, usage accumulated within each period (restarting at
// each period's first day) against the included quantity, the current period projected to its
// end (dashed), and the previous period at the same day of its month (faint); for unique counts,
// maxima and latest values, each day's value. The table under it holds what is plotted.
const daily = { meters: [], included: new Map(), chart: null };

function setUpChart() {
  const select = $("daily-meter");
  select.replaceChildren(
    ...daily.meters.map((m) => {
      const o = document.createElement("option");
      o.value = m.name;
      o.textContent = m.name;
      return o;
    }),
  );
  $("daily-controls").addEventListener("change", () => drawChart());
}

function cumulative(meter) {
  return meter.aggregation === "count" || meter.aggregation === "sum";
}

// Day values → what is plotted: the running total within each month for count and sum meters.
function plotted(series, accumulate) {
  let month = null;
  let total = 0;
  return series.map((d) => {
    const v = d.value === null || d.value === "" ? 0 : Number(d.value);
    if (!accumulate) return v;
    const m = d.date.slice(0, 7);
    if (m !== month) {
      month = m;
      total = 0;
    }
    total += v;
    return total;
  });
}

function daysIn(month) {
  const [y, m] = month.split("-").map(Number);
  return new Date(Date.UTC(y, m, 0)).getUTCDate();
}

async function drawChart() {
  const days = Number(new FormData($("daily-controls")).get("days"));
  const name = $("daily-meter").value;
  const data = await api("/api/v1/usage/daily?days=" + days);
  const meter = data.meters.find((m) => m.name === name);
  const accumulate = cumulative(meter);
  const values = plotted(meter.daily, accumulate);
  const included = daily.included.get(name) ?? null;
  const xs = meter.daily.map((d) => Date.parse(d.date + "T00:00:00Z") / 1000);
  const series = [xs, values];
  const opts = [{}, { label: name, stroke: "#3b6fb6", width: 2 }];
  if (accumulate) {
    series.push(xs.map(() => included));
    opts.push({ label: "included", stroke: "#1b1f23", dash: [2, 4] });
    // The current period projected to its end: the running total grown with the days left.
    const last = meter.daily[meter.daily.length - 1];
    const month = last.date.slice(0, 7);
    const day = Number(last.date.slice(8, 10));
    const end = daysIn(month);
    const now = values[values.length - 1];
    const projection = xs.map(() => null);
    projection[projection.length - 1] = now;
    for (let d = day + 1; d <= end; d++) {
      xs.push(Date.parse(month + "-" + String(d).padStart(2, "0") + "T00:00:00Z") / 1000);
      values.push(null);
      series[2].push(included);
      projection.push((now * d) / day);
    }
    series.push(projection);
    opts.push({ label: "projected", stroke: "#3b6fb6", dash: [8, 6] });
    // The previous period, day of month by day of month, drawn over the current one (from what
    // the chart holds of it: none in a 30-day chart early in a month).
    const [y, m] = month.split("-").map(Number);
    const before = new Date(Date.UTC(y, m - 2, 1)).toISOString().slice(0, 7);
    const previous = new Map();
    meter.daily.forEach((d, i) => {
      if (d.date.slice(0, 7) === before) previous.set(Number(d.date.slice(8, 10)), values[i]);
    });
    const inMonth = (x) => new Date(x * 1000).toISOString().slice(0, 7) === month;
    series.push(xs.map((x) => (inMonth(x) ? (previous.get(new Date(x * 1000).getUTCDate()) ?? null) : null)));
    opts.push({ label: "previous period", stroke: "#b8c2cc", width: 1 });
  }
  const chart = $("chart");
  chart.dataset.chartDays = String(days);
  chart.dataset.chartMeter = name;
  const width = Math.max(chart.clientWidth || 600, 280);
  if (daily.chart) daily.chart.destroy();
  daily.chart = new uPlot({ width, height: 260, series: opts, scales: { x: { time: true } } }, series, chart);
  $("daily-legend").textContent = accumulate
    ? name + ": running total in each period, the included quantity, the period projected to its end, and the previous period"
    : name + ": each day's value";
  const rows = meter.daily.map((d, i) => {
    const tr = document.createElement("tr");
    tr.dataset.date = d.date;
    rowHeader(tr, d.date);
    cell(tr, String(values[i])).dataset.field = "value";
    cell(tr, included === null || !accumulate ? "—" : String(included), included === null || !accumulate ? "" : String(included));
    return tr;
  });
  $("daily-table").tBodies[0].replaceChildren(...rows);
}

// "Manage payment method": the payment provider's customer portal, when one is configured and
// the tenant is its customer; it comes back here.
function paymentMethodButton(portal) {
  const button = $("payment-method");
  button.dataset.value = String(portal.available);
  if (!portal.available) return;
  button.hidden = false;
  button.addEventListener("click", async () => {
    const r = await fetch("/api/v1/billing-portal/sessions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ return_url: location.origin + location.pathname }),
    });
    const page = await r.json().catch(() => ({}));
    if (r.ok) location.assign(page.url);
    else fail("The payment portal cannot be opened: " + (page.detail || r.statusText));
  });
}

// The plan's features and their limits: on or off, a number, a level.
function renderFeatures(features) {
  $("features").replaceChildren(
    ...features.map((f) => {
      const tr = document.createElement("tr");
      tr.dataset.feature = f.name;
      rowHeader(tr, f.name);
      const value = typeof f.value === "boolean" ? (f.value ? "yes" : "no") : String(f.value);
      cell(tr, value, JSON.stringify(f.value)).dataset.field = "value";
      cell(tr, f.allowed ? "yes" : "no", String(f.allowed)).dataset.field = "allowed";
      return tr;
    }),
  );
}
