/* refstream live dashboard: reads /api/* every 5 s and draws the charts with Chart.js.
 *
 * URL parameters: range (15m 1h 6h 24h 7d 30d 90d custom), from / to (ISO or epoch ms, with
 * range=custom), promoter, dimension, by, token (sent as "Authorization: Bearer" to the API).
 * After every refresh the page sets window.__refstreamRendered = {chart: points with a
 * non-zero value, ..., reviews: queue rows, payouts: currencies, refreshes: n} (read by the
 * browser tests), or window.__refstreamError.
 *
 * Review queue: Approve / Reject POST /api/reviews with a request_id made once per order and
 * decision (crypto.randomUUID), so a retry after a failure publishes the same event; the row
 * shows "approved — pending" until a refresh shows the decision applied (or the row gone).
 * The actor's name is remembered in localStorage.
 */
(function () {
  "use strict";

  const REFRESH_MS = 5000;
  const MIN = 60000, HOUR = 60 * MIN, DAY = 24 * HOUR;
  const RANGES = { "15m": 15 * MIN, "1h": HOUR, "6h": 6 * HOUR, "24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY, "90d": 90 * DAY };
  const STAGES = { clicks: "Clicks", signups: "Signups", first_orders: "First orders", repeat_orders: "Repeat orders" };
  const STATUS_COLORS = { rejected: "#d1495b", held: "#edae49", reversed: "#8d6a9f" };
  const COLORS = { gmv: "#00798c", commission: "#edae49", clicks: "#30638e", signups: "#66a182", orders: "#d1495b", bars: "#00798c" };

  const url = new URLSearchParams(location.search);
  const token = url.get("token");
  const state = {
    range: (RANGES[url.get("range")] || url.get("range") === "custom") ? url.get("range") : "24h",
    from: url.get("from") || "",
    to: url.get("to") || "",
    promoter: url.get("promoter") || "",
    dimension: url.get("dimension") || "promoter",
    by: url.get("by") || "gmv",
  };
  state.reviewReason = url.get("review_reason") || "";
  state.reviewPromoter = url.get("review_promoter") || "";
  const charts = {};
  let refreshes = 0;
  let timer = null;
  const ACTOR_KEY = "refstream.reviewActor";
  const DONE = { approve: "approved", reject: "rejected", hold: "held" };
  const decisions = new Map();  // order_id -> {decision, requestId, phase: sending|pending|failed, ts, error}
  let lastQueue = null;

  const $ = (id) => document.getElementById(id);
  const pad = (n) => String(n).padStart(2, "0");

  function fmtTime(ms, span) {
    const d = new Date(ms);
    const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    if (span <= 2 * DAY) return hm;
    const md = `${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
    return span <= 14 * DAY ? `${md} ${hm}` : md;
  }
  const fmtInt = (n) => Number(n).toLocaleString("en-US");
  const fmtMoney = (s) => (s === null || s === undefined ? "n/a"
    : Number(s).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 }));
  const fmtRate = (r) => (r === null || r === undefined ? "n/a" : `${(100 * r).toFixed(1)} %`);
  const nonZero = (values) => values.filter((v) => Number(v) !== 0 && v !== null && !Number.isNaN(Number(v))).length;

  function toInputValue(text) {  // ISO / epoch ms -> value of a datetime-local input (local time)
    if (!text) return "";
    const d = new Date(/^\d+$/.test(text) ? Number(text) : text);
    if (Number.isNaN(d.getTime())) return "";
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function windowParams() {
    const p = new URLSearchParams();
    if (state.range === "custom") {
      if (state.from) p.set("from", state.from);
      if (state.to) p.set("to", state.to);
    } else {
      const to = Date.now();
      p.set("from", String(to - RANGES[state.range]));
      p.set("to", String(to));
    }
    if (state.promoter) p.set("promoter", state.promoter);
    return p;
  }

  async function api(path, params) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch(`/api/${path}?${params}`, { headers, cache: "no-store" });
    let body = null;
    try { body = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) throw new Error(`/api/${path}: ${response.status} ${(body && body.error) || response.statusText}`);
    return body;
  }

  async function post(path, payload) {
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(`/api/${path}`, { method: "POST", headers, body: JSON.stringify(payload), cache: "no-store" });
    let body = null;
    try { body = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) throw new Error(`${response.status} ${(body && body.error) || response.statusText}`);
    return body;
  }

  function newRequestId() {
    if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));  // randomUUID needs a secure context
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }

  const cell = (text, className) => Object.assign(document.createElement("td"), { textContent: text, className: className || "" });

  function fmtDelay(ms) {
    if (ms === null || ms === undefined) return "no click";
    if (ms < MIN) return `${(ms / 1000).toFixed(1)} s`;
    if (ms < HOUR) return `${Math.round(ms / MIN)} min`;
    if (ms < DAY) return `${(ms / HOUR).toFixed(1)} h`;
    return `${(ms / DAY).toFixed(1)} d`;
  }

  function evidenceText(e) {
    const parts = [`click→signup ${fmtDelay(e.click_to_signup_ms)}`, `${e.flood_clicks} clicks/h`, `${e.farm_signups} signups/day`];
    if (e.exclusion_owner) parts.push(`owned by ${e.exclusion_owner}`);
    if (e.identity_match) parts.push(`same ${e.identity_match} as the promoter`);
    return parts.join(" · ");
  }

  function stateOf(row) {
    const d = decisions.get(row.order_id);
    if (!d) return [row.status, "state"];
    if (d.phase === "sending") return [`${DONE[d.decision]} — sending…`, "state pending"];
    if (d.phase === "failed") return [`failed: ${d.error} — click again to retry`, "state failed"];
    return [`${DONE[d.decision]} — pending`, "state pending"];
  }

  function renderReviewRow(row) {
    const tr = document.createElement("tr");
    tr.dataset.order = row.order_id;
    const reasons = document.createElement("td");
    reasons.append(...row.reasons.map((r) => Object.assign(document.createElement("span"), { className: "reason", textContent: r })));
    const review = row.last_review.decision
      ? `${row.last_review.decision} by ${row.last_review.actor}${row.last_review.reason ? ` (${row.last_review.reason})` : ""}, ${new Date(row.last_review.ts).toLocaleString()}`
      : "none";
    const [label, className] = stateOf(row);
    const actions = document.createElement("td");
    const d = decisions.get(row.order_id);
    const busy = d && d.phase !== "failed";
    for (const [decision, text] of [["approve", "Approve"], ["reject", "Reject"]]) {
      const button = Object.assign(document.createElement("button"), { type: "button", textContent: text, className: decision, disabled: !!busy });
      button.dataset.decision = decision;
      actions.append(button);
    }
    tr.append(
      cell(`${row.order_id}\n${new Date(row.order_ts).toLocaleString()}`, "stack"),
      cell(`${row.promoter_id || "(none)"} · ${row.tracking_code}`),
      cell(`${fmtMoney(row.amount)} ${row.currency}`),
      cell(`${fmtMoney(row.earning)} ${row.program_currency}`),
      reasons,
      cell(evidenceText(row.evidence), "evidence"),
      cell(review, "small"),
      cell(label, className),
      actions,
    );
    return tr;
  }

  function settleDecisions(queue) {  // drop the markers a refresh shows applied
    const rows = new Map(queue.rows.map((r) => [r.order_id, r]));
    for (const [order, d] of decisions) {
      if (d.phase !== "pending") continue;
      const row = rows.get(order);
      if (!row || (row.last_review.ts !== null && row.last_review.ts >= d.ts)) decisions.delete(order);
    }
  }

  function renderReviews(queue) {
    lastQueue = queue;
    const select = $("review-reason");
    const chosen = state.reviewReason;
    select.replaceChildren(Object.assign(document.createElement("option"), { value: "", textContent: "all reasons" }),
      ...queue.reasons.map((r) => Object.assign(document.createElement("option"), { value: r.reason, textContent: `${r.reason} (${r.conversions})` })));
    if (chosen && !queue.reasons.some((r) => r.reason === chosen)) {
      select.append(Object.assign(document.createElement("option"), { value: chosen, textContent: chosen }));
    }
    select.value = chosen;
    const body = $("reviews").querySelector("tbody");
    if (!queue.available || !queue.rows.length) {
      const row = document.createElement("tr");
      row.append(Object.assign(cell(queue.available ? "nothing to review" : "this database does not apply reviews yet", "note"), { colSpan: 9 }));
      body.replaceChildren(row);
    } else {
      body.replaceChildren(...queue.rows.map(renderReviewRow));
    }
    $("review-note").textContent = queue.available ? `${fmtInt(queue.total)} ${queue.status} conversion(s)`
      + (queue.total > queue.rows.length ? `, newest ${queue.rows.length} shown` : "") : "";
    return queue.rows.length;
  }

  async function decide(order, decision) {
    const actor = $("review-actor").value.trim();
    if (!actor) {
      $("review-note").textContent = "enter your name under \"Acting as\" first";
      $("review-actor").focus();
      return;
    }
    localStorage.setItem(ACTOR_KEY, actor);
    const previous = decisions.get(order);
    const requestId = previous && previous.decision === decision && previous.phase === "failed" ? previous.requestId : newRequestId();
    const d = { decision, requestId, phase: "sending", ts: null, error: null };
    decisions.set(order, d);
    if (lastQueue) renderReviews(lastQueue);
    try {
      const reply = await post("reviews", { order_id: order, decision, actor, reason: $("review-why").value.trim(), request_id: requestId });
      Object.assign(d, { phase: "pending", ts: reply.event.ts });
    } catch (err) {
      Object.assign(d, { phase: "failed", error: err.message || String(err) });
    }
    if (lastQueue) renderReviews(lastQueue);
  }

  function renderPayouts(summary) {
    const tiles = [];
    for (const c of summary.currencies) {
      tiles.push([`Payable ${c.currency}`, fmtMoney(c.payable), `${fmtInt(c.payable_orders)} orders`],
        [`Pending ${c.currency}`, fmtMoney(c.pending), "in the holding period"],
        [`Held ${c.currency}`, fmtMoney(c.held), `${fmtInt(c.held_conversions)} to review`],
        [`In pending batches ${c.currency}`, fmtMoney(c.in_pending_batches), "to be confirmed"],
        [`Paid ${c.currency}`, fmtMoney(c.paid), `${fmtInt(c.paid_lines)} lines`]);
    }
    if (!tiles.length) tiles.push(["Payable", "—", summary.available ? "nothing yet" : "no payouts in this database yet"]);
    $("payout-tiles").replaceChildren(...tiles.map(([label, value, note]) => {
      const div = Object.assign(document.createElement("div"), { className: "kpi" });
      div.dataset.tile = label;
      div.append(Object.assign(document.createElement("b"), { textContent: value }),
        Object.assign(document.createElement("span"), { textContent: `${label} · ${note}` }));
      return div;
    }));
    $("payouts-note").textContent = summary.as_of ? `event time ${new Date(summary.as_of).toLocaleString()}`
      + `${summary.promoter ? ` · promoter ${summary.promoter}` : ""}` : "";
    return summary.currencies.length;
  }

  function draw(name, config) {
    const existing = charts[name];
    if (existing && existing.config.type === config.type) {
      existing.data = config.data;
      existing.options = config.options;
      existing.update("none");
    } else {
      if (existing) existing.destroy();
      charts[name] = new Chart($(`chart-${name}`), config);
    }
  }

  function baseOptions(extra) {
    return Object.assign({ animation: false, responsive: true, maintainAspectRatio: false,
      plugins: { legend: { position: "bottom" } } }, extra);
  }

  const TICK_STEPS = [MIN, 5 * MIN, 15 * MIN, 30 * MIN, HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY];

  function timeAxis(ts, span) {  // ticks on round times: the smallest step giving at most 8 of them
    const step = TICK_STEPS.find((s) => span / s <= 8) || 30 * DAY;
    const ticks = [];
    for (let v = Math.ceil(ts.from / step) * step; v <= ts.to; v += step) ticks.push({ value: v });
    return { type: "linear", min: ts.from, max: ts.to, afterBuildTicks: (axis) => { axis.ticks = ticks; },
      ticks: { autoSkip: false, maxRotation: 0, callback: (v) => fmtTime(v, span) } };
  }

  function renderKpis(ts, funnel) {
    const t = ts.totals;
    const tiles = [
      ["Clicks", fmtInt(t.clicks)], ["Signups", fmtInt(t.signups)], ["Orders", fmtInt(t.orders)],
      ["GMV", fmtMoney(t.gmv)], ["Commission", fmtMoney(t.commission)],
      ["Click → signup", fmtRate(funnel.rates.click_to_signup)],
      ["Signup → first order", fmtRate(funnel.rates.signup_to_first_order)],
      ["Repeat purchase", fmtRate(funnel.rates.repeat_purchase)],
    ];
    $("kpis").replaceChildren(...tiles.map(([label, value]) => {
      const div = document.createElement("div");
      div.className = "kpi";
      const b = document.createElement("b");
      b.textContent = value;
      const span = document.createElement("span");
      span.textContent = label;
      div.append(b, span);
      return div;
    }));
  }

  function renderFunnel(funnel) {
    const counts = funnel.stages.map((s) => s.count);
    draw("funnel", {
      type: "bar",
      data: {
        labels: funnel.stages.map((s) => (s.rate === null ? STAGES[s.stage] : `${STAGES[s.stage]} (${fmtRate(s.rate)})`)),
        datasets: [{ label: "count", data: counts, backgroundColor: [COLORS.clicks, COLORS.signups, COLORS.orders, COLORS.commission] }],
      },
      options: baseOptions({ indexAxis: "y", plugins: { legend: { display: false } },
        scales: { x: { type: "logarithmic", min: 0.5, ticks: { callback: (v) => (Number.isInteger(Math.log10(v)) ? fmtInt(v) : "") } } } }),
    });
    $("funnel-rates").textContent = `${fmtInt(funnel.buyers)} buyers, ${fmtInt(funnel.repeat_buyers)} bought again (log scale)`;
    return nonZero(counts);
  }

  function renderMoney(ts, span) {
    const datasets = [{ label: "GMV", data: ts.points.map((p) => ({ x: p.t, y: Number(p.gmv) })),
      borderColor: COLORS.gmv, backgroundColor: COLORS.gmv, pointRadius: 0, borderWidth: 2 }];
    if (ts.totals.commission !== null) {
      datasets.push({ label: "commission", data: ts.points.map((p) => ({ x: p.t, y: Number(p.commission) })),
        borderColor: COLORS.commission, backgroundColor: COLORS.commission, pointRadius: 0, borderWidth: 2 });
    }
    draw("money", { type: "line", data: { datasets }, options: baseOptions({ scales: { x: timeAxis(ts, span), y: { beginAtZero: true } } }) });
    return nonZero(ts.points.map((p) => p.gmv));
  }

  function renderActivity(ts, span) {
    const line = (key, label, axis) => ({ label, yAxisID: axis, data: ts.points.map((p) => ({ x: p.t, y: p[key] })),
      borderColor: COLORS[key], backgroundColor: COLORS[key], pointRadius: 0, borderWidth: 2 });
    draw("activity", {
      type: "line",
      data: { datasets: [line("clicks", "clicks (left)", "y"), line("signups", "signups (right)", "y1"), line("orders", "orders (right)", "y1")] },
      options: baseOptions({ scales: { x: timeAxis(ts, span), y: { beginAtZero: true, position: "left" },
        y1: { beginAtZero: true, position: "right", grid: { drawOnChartArea: false } } } }),
    });
    return nonZero(ts.points.map((p) => p.clicks + p.signups + p.orders));
  }

  function renderTop(top) {
    const values = top.rows.map((r) => (top.by === "conversions" ? r.conversions : Number(r[top.by])));
    draw("top", {
      type: "bar",
      data: { labels: top.rows.map((r) => r.key || "(none)"),
        datasets: [{ label: top.by, data: values, backgroundColor: COLORS.bars }] },
      options: baseOptions({ indexAxis: "y", plugins: { legend: { display: false } },
        onClick: (event, elements) => {
          if (top.dimension === "promoter" && elements.length) {
            state.promoter = top.rows[elements[0].index].key;
            $("promoter").value = state.promoter;
            apply();
          }
        } }),
    });
    if (top.dimension === "promoter" && !state.promoter) {
      $("promoter-list").replaceChildren(...top.rows.map((r) => Object.assign(document.createElement("option"), { value: r.key })));
    }
    return nonZero(values);
  }

  function renderRejections(rej) {
    const reasons = [...new Set(rej.reasons.map((r) => r.reason))];
    const datasets = rej.statuses.map((status) => ({
      label: status, backgroundColor: STATUS_COLORS[status],
      data: reasons.map((reason) => {
        const row = rej.reasons.find((r) => r.reason === reason && r.status === status);
        return row ? row.conversions : 0;
      }),
    }));
    draw("rejections", { type: "bar", data: { labels: reasons, datasets },
      options: baseOptions({ scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } }) });
    return nonZero(datasets.flatMap((d) => d.data));
  }

  function renderAlerts(alerts) {
    const body = $("alerts").querySelector("tbody");
    if (!alerts.available || !alerts.alerts.length) {
      const row = document.createElement("tr");
      const cell = Object.assign(document.createElement("td"), { colSpan: 7, className: "note",
        textContent: alerts.available ? "no alerts in this range" : "no alerts table yet" });
      row.append(cell);
      body.replaceChildren(row);
      return 0;
    }
    body.replaceChildren(...alerts.alerts.map((a) => {
      const row = document.createElement("tr");
      const cells = [new Date(a.detected_at).toLocaleString(), a.kind, a.key, new Date(a.bucket_start).toLocaleString(),
        fmtInt(a.observed), a.baseline.toFixed(1), a.score.toFixed(2)];
      row.append(...cells.map((text) => Object.assign(document.createElement("td"), { textContent: text })));
      return row;
    }));
    return alerts.alerts.length;
  }

  async function refresh() {
    const params = windowParams();
    const top = new URLSearchParams(params);
    top.set("dimension", state.dimension);
    top.set("by", state.by);
    const alertParams = new URLSearchParams(params);
    alertParams.set("limit", "20");
    const queueParams = new URLSearchParams();
    if (state.reviewReason) queueParams.set("reason", state.reviewReason);
    if (state.reviewPromoter) queueParams.set("promoter", state.reviewPromoter);
    const summaryParams = new URLSearchParams();
    if (state.promoter) summaryParams.set("promoter", state.promoter);
    const calls = [api("funnel", params), api("timeseries", params), api("top", top), api("rejections", params),
      api("alerts", alertParams), api("reviews", queueParams), api("payouts/summary", summaryParams)];
    const results = await Promise.allSettled(calls);
    const [funnel, ts, topRows, rej, alerts, queue, summary] = results.map((r) => (r.status === "fulfilled" ? r.value : null));
    const errors = results.filter((r) => r.status === "rejected").map((r) => String(r.reason.message || r.reason));
    const rendered = {};
    try {
      const span = ts ? ts.to - ts.from : RANGES["24h"];
      if (ts && funnel) renderKpis(ts, funnel);
      if (ts) $("top-by").querySelector('option[value="commission"]').disabled = ts.totals.commission === null;
      if (funnel) rendered.funnel = renderFunnel(funnel);
      if (ts) {
        rendered.money = renderMoney(ts, span);
        rendered.activity = renderActivity(ts, span);
        rendered.bucketMs = ts.bucket_ms;
      }
      if (topRows) rendered.top = renderTop(topRows);
      if (rej) rendered.rejections = renderRejections(rej);
      if (alerts) rendered.alerts = renderAlerts(alerts);
      if (queue) {
        settleDecisions(queue);
        rendered.reviews = renderReviews(queue);
      }
      if (summary) rendered.payouts = renderPayouts(summary);
      if (ts) {
        $("status").textContent = `updated ${new Date().toLocaleTimeString()} · ${fmtTime(ts.from, span)} – ${fmtTime(ts.to, span)}`
          + ` · ${ts.bucket_ms / MIN} min buckets${state.promoter ? ` · promoter ${state.promoter}` : ""}`;
      }
    } catch (err) {
      errors.push(`drawing failed: ${err.message || err}`);
    }
    refreshes += 1;
    window.__refstreamRendered = Object.assign(rendered, { refreshes });
    window.__refstreamError = errors.length ? errors.join("; ") : null;
    if (errors.length) $("status").textContent = `error: ${window.__refstreamError}`;
    $("status").className = errors.length ? "error" : "";
  }

  function schedule() {
    clearTimeout(timer);
    refresh().finally(() => { timer = setTimeout(schedule, REFRESH_MS); });
  }

  function apply() {
    const keep = new URLSearchParams();
    if (token) keep.set("token", token);
    keep.set("range", state.range);
    if (state.range === "custom") {
      if (state.from) keep.set("from", state.from);
      if (state.to) keep.set("to", state.to);
    }
    for (const k of ["promoter", "dimension", "by"]) if (state[k]) keep.set(k, state[k]);
    if (state.reviewReason) keep.set("review_reason", state.reviewReason);
    if (state.reviewPromoter) keep.set("review_promoter", state.reviewPromoter);
    history.replaceState(null, "", `${location.pathname}?${keep}`);
    document.body.classList.toggle("custom-range", state.range === "custom");
    schedule();
  }

  function init() {
    $("range").value = state.range;
    $("from").value = toInputValue(state.from);
    $("to").value = toInputValue(state.to);
    $("promoter").value = state.promoter;
    $("top-dimension").value = state.dimension;
    $("top-by").value = state.by;
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      state.range = $("range").value;
      state.from = $("from").value ? new Date($("from").value).toISOString() : "";
      state.to = $("to").value ? new Date($("to").value).toISOString() : "";
      state.promoter = $("promoter").value.trim();
      apply();
    });
    $("range").addEventListener("change", () => document.body.classList.toggle("custom-range", $("range").value === "custom"));
    for (const [id, key] of [["top-dimension", "dimension"], ["top-by", "by"]]) {
      $(id).addEventListener("change", () => { state[key] = $(id).value; apply(); });
    }
    $("review-promoter").value = state.reviewPromoter;
    $("review-actor").value = localStorage.getItem(ACTOR_KEY) || "";
    $("review-filters").addEventListener("submit", (event) => {
      event.preventDefault();
      state.reviewReason = $("review-reason").value;
      state.reviewPromoter = $("review-promoter").value.trim();
      apply();
    });
    $("review-reason").addEventListener("change", () => { state.reviewReason = $("review-reason").value; apply(); });
    $("review-actor").addEventListener("change", () => localStorage.setItem(ACTOR_KEY, $("review-actor").value.trim()));
    $("reviews").querySelector("tbody").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-decision]");
      const row = button && button.closest("tr[data-order]");
      if (row && !button.disabled) decide(row.dataset.order, button.dataset.decision);
    });
    if (typeof Chart === "undefined") {
      window.__refstreamError = "Chart.js did not load";
      $("status").textContent = window.__refstreamError;
      return;
    }
    apply();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
