// One closed invoice, printable: its lines and where each comes from, read with the session's
// cookie from GET /api/v1/invoices/{id} (helpers in common.js).
"use strict";

async function start() {
  const id = new URLSearchParams(location.search).get("id");
  if (!id) return fail("No invoice named: open it from the invoice history.");
  let found;
  try {
    found = (await api("/api/v1/invoices/" + encodeURIComponent(id)))[0];
  } catch (e) {
    return fail(e.status === 401 ? "This session has ended. Ask for a new link." : "This invoice cannot be read: " + e.message);
  }
  show($("invoice-id"), found.id);
  const head = $("invoice-head");
  dd(head, "Customer", "tenant", found.tenant);
  dd(head, "Period", "period", String(found.period));
  dd(head, "Plan", "plan", found.plan ?? "—");
  dd(head, "Currency", "currency", found.currency);
  dd(head, "Payment", "payment", found.payment ? found.payment.status : "in meter (not sent to a payment provider)");
  const links = providerLinks(found.payment);
  if (links.length) {
    const dt = document.createElement("dt");
    dt.textContent = "At the payment provider";
    const dd = document.createElement("dd");
    for (const a of links) dd.append(a, " ");
    head.append(dt, dd);
  }
  $("lines").replaceChildren(
    ...found.lines.map((l) => {
      const tr = document.createElement("tr");
      tr.dataset.line = l.id;
      rowHeader(tr, l.description);
      cell(tr, l.meter ?? "—", l.meter ?? "");
      cell(tr, l.quantity ?? "—", l.quantity ?? "");
      cell(tr, l.amount).dataset.field = "amount";
      return tr;
    }),
  );
  show($("invoice-total"), found.total + " " + found.currency, found.total);
  $("lineage").replaceChildren(
    ...found.lines.map((l) => {
      const tr = document.createElement("tr");
      cell(tr, l.id);
      cell(tr, Object.entries(l.lineage.meters || {}).map(([m, v]) => m + " " + v).join(", ") || "—");
      cell(tr, l.lineage.watermark_us ? new Date(l.lineage.watermark_us / 1000).toISOString() : "—");
      cell(tr, l.lineage.price_version);
      cell(tr, l.lineage.inputs_hash).dataset.field = "inputs_hash";
      return tr;
    }),
  );
  $("print").addEventListener("click", () => window.print());
  document.body.dataset.ready = "true";
}

start();
