// h3gate's usage page: reads /admin/usage and /admin/budgets with the admin
// token (typed into the page, kept in memory, sent in a header) and draws
// the spend per day, the top keys, teams and models, and the budgets.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";

  function today() {
    return new Date().toISOString().slice(0, 10);
  }
  function monthStart() {
    return today().slice(0, 8) + "01";
  }
  function nextDay(day) {
    const d = new Date(day + "T00:00:00Z");
    d.setUTCDate(d.getUTCDate() + 1);
    return d.toISOString().slice(0, 10);
  }
  function usd(n) {
    return Number(n).toFixed(6);
  }

  function status(text, error) {
    const s = $("status");
    s.textContent = text;
    s.className = error ? "error" : "";
  }

  async function get(path, params, token) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v) q.set(k, v);
    }
    const url = q.toString() ? `${path}?${q}` : path;
    const r = await fetch(url, {
      headers: { authorization: `Bearer ${token}` },
      cache: "no-store",
      credentials: "omit",
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      const msg = (body.error && body.error.message) || `HTTP ${r.status}`;
      throw new Error(`${path}: ${msg}`);
    }
    return body;
  }

  function cell(tr, text) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  function fill(tableId, rows, label) {
    const body = $(tableId).tBodies[0];
    body.replaceChildren();
    for (const r of rows) {
      const tr = document.createElement("tr");
      tr.dataset.group = r.group;
      tr.dataset.cost = String(r.cost_usd);
      cell(tr, r.group || label);
      cell(tr, String(r.requests));
      cell(tr, String(r.input_tokens));
      cell(tr, String(r.output_tokens));
      cell(tr, String(r.cached_input_tokens));
      cell(tr, usd(r.cost_usd));
      body.appendChild(tr);
    }
  }

  function svg(name, attrs, text) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // One bar per day of the range (days without spend drawn empty).
  function chart(rows, from, to) {
    const chart = $("chart");
    chart.replaceChildren();
    const byDay = new Map(rows.map((r) => [r.group, r]));
    const days = [];
    for (let d = from; d < to && days.length < 400; d = nextDay(d)) days.push(d);
    const W = 900, H = 260, left = 60, bottom = 30, top = 10;
    const max = Math.max(1e-9, ...rows.map((r) => r.cost_usd));
    const step = (W - left - 10) / Math.max(1, days.length);
    chart.appendChild(svg("text", { x: 4, y: top + 10, class: "axis" }, `$${usd(max)}`));
    chart.appendChild(svg("text", { x: 4, y: H - bottom, class: "axis" }, "$0"));
    days.forEach((day, i) => {
      const r = byDay.get(day);
      const cost = r ? r.cost_usd : 0;
      const h = ((H - bottom - top) * cost) / max;
      const bar = svg("rect", {
        x: left + i * step + 1,
        y: H - bottom - h,
        width: Math.max(1, step - 2),
        height: h,
        class: "bar",
        "data-day": day,
        "data-cost": String(cost),
      });
      bar.appendChild(svg("title", {}, `${day}: $${usd(cost)} (${r ? r.requests : 0} requests)`));
      chart.appendChild(bar);
      if (days.length <= 31 || i % Math.ceil(days.length / 15) === 0) {
        chart.appendChild(svg("text", { x: left + i * step, y: H - 10, class: "axis" }, day.slice(5)));
      }
    });
  }

  function budgets(list) {
    const body = $("budgets").tBodies[0];
    body.replaceChildren();
    for (const b of list) {
      const tr = document.createElement("tr");
      tr.dataset.name = `${b.scope}:${b.name}:${b.unit}`;
      tr.dataset.spent = String(b.spent);
      tr.dataset.budget = String(b.budget);
      const money = b.unit === "usd";
      const show = (n) => (money ? `$${usd(n)}` : String(n));
      cell(tr, b.scope);
      cell(tr, b.name);
      cell(tr, b.unit);
      cell(tr, b.period);
      cell(tr, show(b.budget));
      cell(tr, show(b.spent));
      cell(tr, show(b.remaining));
      const meter = document.createElement("meter");
      meter.min = 0;
      meter.max = b.budget;
      meter.value = Math.min(b.spent, b.budget);
      meter.high = b.budget * 0.8;
      meter.optimum = 0;
      const full = b.budget > 0 ? Math.round((100 * b.spent) / b.budget) : 0;
      meter.title = `${full}%`;
      cell(tr, "").appendChild(meter);
      cell(tr, b.resets_at || "");
      body.appendChild(tr);
    }
  }

  async function load(event) {
    if (event) event.preventDefault();
    const token = $("token").value;
    if (!token) return status("Type the admin token first.", true);
    const from = $("from").value || monthStart();
    const toDay = $("to").value || today();
    // The range includes its last day.
    const to = nextDay(toDay);
    const scope = { from, to, key: $("key").value.trim(), team: $("team").value.trim() };
    status("Loading…", false);
    try {
      const [days, keys, teams, models, budgetList] = await Promise.all([
        get("/admin/usage", { ...scope, group_by: "day" }, token),
        get("/admin/usage", { ...scope, group_by: "key" }, token),
        get("/admin/usage", { ...scope, group_by: "team" }, token),
        get("/admin/usage", { ...scope, group_by: "model" }, token),
        get("/admin/budgets", {}, token),
      ]);
      chart(days.rows, from, to);
      const total = days.total || { cost_usd: days.rows.reduce((s, r) => s + r.cost_usd, 0), requests: 0 };
      $("total").textContent = `Total: $${usd(total.cost_usd)} over ${total.requests} requests, ${from} to ${toDay}`;
      $("total").dataset.cost = String(total.cost_usd);
      fill("by-key", keys.rows, "(no key)");
      fill("by-team", teams.rows, "(no team)");
      fill("by-model", models.rows, "(none)");
      budgets(budgetList.budgets || []);
      status(`Loaded at ${new Date().toISOString()}`, false);
      document.body.dataset.loaded = "true";
    } catch (e) {
      status(String(e.message || e), true);
      document.body.dataset.loaded = "error";
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("from").value = monthStart();
    $("to").value = today();
    $("query").addEventListener("submit", load);
  });
})();
