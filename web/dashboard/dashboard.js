//! The dashboard's logic: poll /health, /cluster, /topics and /metrics, keep ten minutes of rates, draw them on canvas.
import { parseMetrics, quantile } from "/web/metrics.js";

const $ = (id) => /** @type {any} */ (document.getElementById(id));
const PERIOD_MS = 2000;
const KEEP = 300; // 10 minutes of 2 s scrapes
const KEY = "sluice.admin";

/** The charts: title, unit, and how to compute a point from two scrapes. */
const CHARTS = [
  { id: "sent", title: "messages sent / s", series: [["sent", "#0969da"]] },
  { id: "conns", title: "connections", series: [["conns", "#1a7f37"]] },
  { id: "slow", title: "slow-consumer disconnects / s", series: [["slow", "#bc4c00"]] },
  { id: "limited", title: "rate-limited frames / s", series: [["limited", "#8250df"]] },
  { id: "latency", title: "delivery latency ms (p50 blue, p99 red)", series: [["p50", "#0969da"], ["p99", "#cf222e"]] },
];

/** @type {{t: number, v: Record<string, number|null>}[]} */
const points = [];
let prev = null;

function sum(samples, name) {
  return samples.filter((s) => s.name === name).reduce((a, s) => a + s.value, 0);
}

function buckets(samples) {
  const b = new Map();
  for (const s of samples) {
    if (s.name !== "sluice_delivery_latency_seconds_bucket") continue;
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    b.set(le, (b.get(le) ?? 0) + s.value);
  }
  return [...b.entries()].sort((x, y) => x[0] - y[0]);
}

function onScrape(text, t) {
  const s = parseMetrics(text);
  const cur = {
    t, sent: sum(s, "sluice_messages_sent_total"), conns: sum(s, "sluice_connections_active"),
    slow: sum(s, "sluice_slow_consumer_disconnects_total"), limited: sum(s, "sluice_rate_limited_total"), b: buckets(s),
  };
  if (prev) {
    const dt = (t - prev.t) / 1000;
    const rate = (k) => Math.max(0, (cur[k] - prev[k]) / dt); // a restart resets counters
    const delta = cur.b.map(([le, c], i) => [le, Math.max(0, c - (prev.b[i]?.[1] ?? 0))]);
    const ms = (q) => { const v = quantile(delta, q); return v === null ? null : v * 1000; };
    points.push({ t, v: { sent: rate("sent"), conns: cur.conns, slow: rate("slow"), limited: rate("limited"), p50: ms(0.5), p99: ms(0.99) } });
    if (points.length > KEEP) points.shift();
  }
  prev = cur;
  drawAll();
}

function setupCharts() {
  const host = $("charts");
  for (const c of CHARTS) {
    const div = document.createElement("div");
    div.className = "chart";
    div.innerHTML = `<h3></h3><canvas data-chart="${c.id}"></canvas>`;
    div.querySelector("h3").textContent = c.title;
    host.appendChild(div);
    c.canvas = div.querySelector("canvas");
  }
}

function fmt(v) {
  return v >= 1000 ? `${(v / 1000).toFixed(1)}k` : v >= 10 ? v.toFixed(0) : v.toFixed(2);
}

/** A line chart with a zero baseline, the max on the axis and the latest value. */
function draw(c) {
  const cv = c.canvas, dpr = window.devicePixelRatio || 1;
  const w = cv.clientWidth || 360, h = cv.clientHeight || 140;
  cv.width = w * dpr;
  cv.height = h * dpr;
  const g = cv.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const pad = { l: 42, r: 8, t: 8, b: 16 };
  const vals = points.flatMap((p) => c.series.map(([k]) => p.v[k]).filter((v) => v !== null));
  // A floor of 1 keeps an idle chart's axis readable (0, 0.5, 1) instead of 0.00s.
  const max = Math.max(1, ...vals) * 1.1;
  g.strokeStyle = "#d0d7de";
  g.fillStyle = "#57606a";
  g.font = "10px system-ui, sans-serif";
  for (const f of [0, 0.5, 1]) {
    const y = pad.t + (h - pad.t - pad.b) * (1 - f);
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(w - pad.r, y); g.stroke();
    g.fillText(fmt(max * f), 2, y + 3);
  }
  // Until ten minutes are collected, the points stretch over the whole width.
  const span = Math.max(2, points.length);
  g.fillText(`${Math.round(((span - 1) * PERIOD_MS) / 1000)} s`, pad.l, h - 3);
  const x = (i) => pad.l + ((w - pad.l - pad.r) * i) / (span - 1);
  const off = 0;
  for (const [k, color] of c.series) {
    g.strokeStyle = color;
    g.lineWidth = 1.5;
    g.beginPath();
    let started = false;
    points.forEach((p, i) => {
      const v = p.v[k];
      if (v === null) { started = false; return; }
      const y = pad.t + (h - pad.t - pad.b) * (1 - v / max);
      if (started) g.lineTo(x(off + i), y); else g.moveTo(x(off + i), y);
      started = true;
    });
    g.stroke();
  }
  const last = points.at(-1);
  cv.dataset.points = String(points.length);
  if (last) {
    g.fillStyle = "#1f2328";
    g.fillText(c.series.map(([k]) => (last.v[k] === null ? "–" : fmt(last.v[k]))).join(" / "), w - pad.r - 80, pad.t + 10);
  }
}

function drawAll() { for (const c of CHARTS) draw(c); }

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
}

async function getJson(path, token) {
  const r = await fetch(path, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status} ${j.code ?? ""} ${j.error ?? ""}`);
  return j;
}

async function tick() {
  const token = sessionStorage.getItem(KEY);
  const t = Date.now();
  try {
    const [health, metrics] = await Promise.all([getJson("/health"), fetch("/metrics").then((r) => r.text())]);
    $("health").textContent = `${health.node_id} · ${health.status} · ${health.active_connections} connections · up ${health.uptime_seconds} s`;
    onScrape(metrics, t);
  } catch (e) {
    $("health").textContent = String(e.message ?? e);
  }
  if (!token) { $("auth-msg").textContent = "Type the admin token to see the cluster and topics."; return; }
  try {
    const [cluster, topics] = await Promise.all([getJson("/cluster", token), getJson("/topics", token)]);
    $("auth-msg").textContent = `${cluster.count} node(s), ${cluster.connections} connection(s), ${topics.topic_count} topic(s) here`;
    const nb = $("nodes").tBodies[0];
    nb.replaceChildren();
    for (const n of cluster.nodes ?? []) {
      const tr = document.createElement("tr");
      tr.dataset.node = n.node_id;
      cell(tr, n.node_id); cell(tr, n.address ?? ""); cell(tr, String(n.connections ?? 0), "num");
      cell(tr, String(n.subscriptions ?? 0), "num"); cell(tr, n.draining ? "draining" : "serving");
      cell(tr, n.redis_connected ? "up" : "down"); cell(tr, n.started_at ?? "");
      nb.appendChild(tr);
    }
    const tb = $("topics").tBodies[0];
    tb.replaceChildren();
    const busiest = Object.entries(topics.topics ?? {}).sort((a, b) => b[1].subscriber_count - a[1].subscriber_count).slice(0, 15);
    for (const [name, v] of busiest) {
      const tr = document.createElement("tr");
      cell(tr, name); cell(tr, String(v.subscriber_count), "num"); cell(tr, String(v.head_seq ?? "–"), "num");
      tb.appendChild(tr);
    }
  } catch (e) {
    $("auth-msg").textContent = String(e.message ?? e);
  }
}

$("admin").value = sessionStorage.getItem(KEY) ?? "";
$("auth").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(KEY, $("admin").value);
  tick();
});
$("forget-btn").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  $("admin").value = "";
  $("nodes").tBodies[0].replaceChildren();
  $("topics").tBodies[0].replaceChildren();
});
setupCharts();
drawAll();
tick();
setInterval(tick, PERIOD_MS);
