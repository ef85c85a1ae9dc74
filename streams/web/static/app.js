/* refstream live dashboard: reads /api/* every 5 s and draws the charts with Chart.js.
 *
 * URL parameters: range (15m 1h 6h 24h 7d 30d 90d custom), from / to (ISO or epoch ms, with
 * range=custom), promoter, dimension, by, token (sent as "Authorization: Bearer" to the API).
 * After every refresh the page sets window.__refstreamRendered = {chart: points with a
 * non-zero value, ..., refreshes: n} (read by the browser test), or window.__refstreamError.
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
  const charts = {};
  let refreshes = 0;
  let timer = null;

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
    const calls = [api("funnel", params), api("timeseries", params), api("top", top), api("rejections", params),
      api("alerts", alertParams)];
    const results = await Promise.allSettled(calls);
    const [funnel, ts, topRows, rej, alerts] = results.map((r) => (r.status === "fulfilled" ? r.value : null));
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
