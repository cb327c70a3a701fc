//! The console's logic: one SluiceClient, a row per topic redrawn once per animation frame, a bounded frame log, the publish form.
import { SluiceClient } from "/client/sluice.js";
import "/client/sluice-status.js";

const $ = (id) => /** @type {any} */ (document.getElementById(id));
/** Frames kept in the log. A bounded log is what lets the page keep up at thousands of frames per second. */
const LOG_LINES = 200;
/** Latency samples kept for `window.sluiceConsole.latency()` (publish ts to render). */
const SAMPLES = 50000;

/** @type {SluiceClient|null} */
let client = null;
/** @type {Map<string, any>} topic -> row state */
const rows = new Map();
const log = [];
/** Every (re)subscribe's outcome, for tests: {topic, recovered, resumed, epoch, head_seq}. */
const recoveries = [];
let logDirty = false;
/** Publish timestamps of messages received since the last paint. */
let pendingTs = [];
const samples = new Float64Array(SAMPLES);
let sampleCount = 0;
/** Longest wait from "something to show" to the paint that shows it. */
let maxPaintDelay = 0;
let scheduledAt = 0;
let lastLogPaint = -Infinity;

/** Read from tests and benchmarks: what the page has shown so far. */
window.sluiceConsole = {
  rows,
  recoveries,
  get client() { return client; },
  /** Percentiles of publish-to-render latency in ms over the kept samples. */
  latency() {
    const n = Math.min(sampleCount, SAMPLES);
    const v = Array.from(samples.subarray(0, n)).sort((a, b) => a - b);
    const p = (q) => (n ? v[Math.min(n - 1, Math.floor(q * n))] : null);
    return { count: sampleCount, p50: p(0.5), p99: p(0.99), max: n ? v[n - 1] : null, max_paint_delay_ms: Math.round(maxPaintDelay) };
  },
  resetLatency() { sampleCount = 0; maxPaintDelay = 0; },
};

$("urls").value = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
$("node").textContent = "";

function addLog(text) {
  log.push(text.length > 400 ? text.slice(0, 400) + "…" : text);
  if (log.length > LOG_LINES) log.splice(0, log.length - LOG_LINES);
  logDirty = true;
  schedule();
}

$("connect").addEventListener("submit", (e) => {
  e.preventDefault();
  const urls = $("urls").value.split(",").map((s) => s.trim()).filter(Boolean);
  const token = $("token").value.trim() || undefined;
  client?.close();
  try {
    client = new SluiceClient(urls, { token, minDelayMs: 250, maxDelayMs: 10000 });
  } catch (err) {
    $("sub-msg").textContent = String(err.message ?? err);
    return;
  }
  client.on("frame", (f) => {
    // Publications are counted in their rows; logging them costs a stringify each.
    addLog(JSON.stringify(f));
  });
  client.on("connected", (p) => { $("node").textContent = `node ${p.node_id} · connection ${p.connection_id}`; });
  client.on("close", (c) => addLog(`-- closed ${c.code} ${c.reason ?? ""}`));
  client.on("state", (s) => addLog(`-- state ${s}`));
  document.querySelector("sluice-status").client = client;
  for (const r of rows.values()) attach(r);
  client.connect();
});

$("disconnect-btn").addEventListener("click", () => client?.close());

$("subscribe").addEventListener("submit", (e) => {
  e.preventDefault();
  const msg = $("sub-msg");
  msg.textContent = "";
  const batch = parseInt($("batch").value, 10);
  const opts = { batchSize: batch > 0 ? batch : undefined, compression: $("gzip").checked || undefined };
  for (const topic of $("topics").value.split(",").map((s) => s.trim()).filter(Boolean)) {
    if (rows.has(topic)) { msg.textContent = `${topic}: already shown`; continue; }
    const row = newRow(topic, opts);
    try {
      if (client) attach(row);
    } catch (err) {
      row.tr.remove();
      msg.textContent = String(err.message ?? err);
      continue;
    }
    rows.set(topic, row);
  }
  if (!client) msg.textContent = "Subscribed topics start when you connect.";
});

function newRow(topic, opts) {
  const tr = document.createElement("tr");
  tr.dataset.topic = topic;
  tr.innerHTML = `<td class="topic"></td><td class="epoch"></td><td class="num seq">0</td><td class="num count">0</td>
<td class="num gaps">0</td><td class="num rate">0</td><td class="num latency">–</td><td><pre class="payload"></pre></td>
<td><button type="button">×</button></td>`;
  tr.querySelector(".topic").textContent = topic;
  $("rows").tBodies[0].appendChild(tr);
  const cell = (c) => tr.querySelector("." + c);
  const row = {
    topic, opts, tr, sub: null, epoch: null, seq: 0, count: 0, gaps: 0, latency: null, payload: undefined, last: new Map(),
    rate: 0, winStart: performance.now(), winCount: 0, dirty: true,
    cells: { epoch: cell("epoch"), seq: cell("seq"), count: cell("count"), gaps: cell("gaps"), rate: cell("rate"), latency: cell("latency"), payload: cell("payload") },
  };
  tr.querySelector("button").addEventListener("click", () => {
    row.sub?.unsubscribe();
    rows.delete(topic);
    tr.remove();
  });
  return row;
}

/** Bind a row to the current client. */
function attach(row) {
  row.sub = client.subscribe(row.topic, (m) => onMessage(row, m), row.opts);
  row.sub.on("recovered", (r) => recoveries.push({ topic: row.topic, ...r }));
  row.sub.on("recovered", (r) => addLog(`-- ${row.topic}: ${r.resumed ? "resumed" : "subscribed"}, recovered ${r.recovered}, head ${r.head_seq}`));
  row.sub.on("error", (f) => addLog(`-- ${row.topic}: ${f.code} ${f.error ?? ""}`));
}

function onMessage(row, m) {
  // The client already dropped duplicates; a jump here is a loss the user must see.
  // A wildcard row carries many topics, each with its own seqs.
  const last = row.last.get(m.topic);
  if (last && m.epoch === last.epoch && m.type !== "snapshot" && m.seq !== last.seq + 1) row.gaps++;
  row.last.set(m.topic, { seq: m.seq, epoch: m.epoch });
  row.epoch = m.epoch;
  row.seq = m.seq;
  row.count++;
  row.winCount++;
  row.payload = m.topic === row.topic ? m.payload : { topic: m.topic, payload: m.payload };
  const ts = Date.parse(m.ts);
  if (!Number.isNaN(ts)) {
    row.latency = Date.now() - ts;
    if (m.type !== "snapshot") pendingTs.push(ts);
  }
  row.dirty = true;
  schedule();
}

let scheduled = false;
function schedule() {
  if (scheduled) return;
  scheduled = true;
  scheduledAt = performance.now();
  requestAnimationFrame(paint);
}

/** One DOM update per animation frame, whatever the message rate. */
function paint(t) {
  scheduled = false;
  maxPaintDelay = Math.max(maxPaintDelay, performance.now() - scheduledAt);
  const now = Date.now();
  for (const ts of pendingTs) samples[sampleCount++ % SAMPLES] = now - ts;
  pendingTs = [];
  const pnow = performance.now();
  for (const r of rows.values()) {
    if (pnow - r.winStart >= 1000) {
      r.rate = Math.round((r.winCount * 1000) / (pnow - r.winStart));
      r.winStart = pnow;
      r.winCount = 0;
      r.dirty = true;
    }
    if (!r.dirty) continue;
    r.dirty = false;
    const c = r.cells;
    c.epoch.textContent = r.epoch ?? "";
    c.seq.textContent = String(r.seq);
    c.count.textContent = String(r.count);
    c.gaps.textContent = String(r.gaps);
    c.gaps.className = r.gaps ? "num gaps bad" : "num gaps";
    c.rate.textContent = String(r.rate);
    c.latency.textContent = r.latency === null ? "–" : `${r.latency} ms`;
    c.payload.textContent = r.payload === undefined ? "" : JSON.stringify(r.payload, null, 2);
  }
  // The log is text for humans: five repaints a second are plenty, and rebuilding
  // 200 lines on every frame at 2000 msg/s was the page's biggest cost.
  if (logDirty && t - lastLogPaint >= 200) {
    lastLogPaint = t;
    logDirty = false;
    const el = $("log");
    el.textContent = log.join("\n");
    el.scrollTop = el.scrollHeight;
  }
  // Keep the msg/s column moving while messages flow.
  if (logDirty || [...rows.values()].some((r) => r.winCount > 0)) setTimeout(schedule, 250);
}

$("publish").addEventListener("submit", async (e) => {
  e.preventDefault();
  const out = $("pub-msg");
  let payload;
  try {
    payload = JSON.parse($("pub-payload").value);
  } catch (err) {
    out.textContent = `payload is not JSON: ${err.message}`;
    out.className = "msg bad";
    return;
  }
  const body = { topic: $("pub-topic").value.trim(), payload, type: $("pub-type").value };
  if ($("pub-snapshot").checked) body.snapshot = payload;
  try {
    const r = await fetch("/publish", {
      method: "POST",
      headers: { authorization: `Bearer ${$("admin").value}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const j = await r.json().catch(() => ({}));
    out.className = r.ok ? "msg" : "msg bad";
    out.textContent = r.ok ? `published ${j.topic} seq ${j.seq} epoch ${j.epoch}` : `HTTP ${r.status}: ${j.code ?? ""} ${j.error ?? ""}`;
  } catch (err) {
    out.className = "msg bad";
    out.textContent = `publish failed: ${err.message ?? err}`;
  }
});
