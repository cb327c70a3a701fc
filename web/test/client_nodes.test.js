//! The client against real `sluice` processes (and Redis for two nodes): kill and drain with no loss or duplicate, 4029, maxAttempts, the offline queue, tokens.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, test } from "node:test";
import { SluiceClient } from "../client/sluice.js";
import { ADMIN_TOKEN, freePort, hs256, nextEvent, startNode, startRedis, waitFor } from "../test-support/harness.js";

/** @type {{url: string, stop: () => void}} */
let redis;
const procs = [];
before(async () => { redis = await startRedis(); });
after(() => { for (const p of procs) p.kill(); redis?.stop(); });

async function node(env = {}, id) {
  const n = await startNode(env, id);
  procs.push(n);
  return n;
}

/** Publish seqs with a few requests in flight: Redis numbers them atomically anyway. */
async function publishMany(n, topic, count, onEach = () => {}) {
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = ++next;
      await n.publish(topic, { i });
      await onEach(i);
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
}

/** Asserts that `seqs` is exactly 1..n: nothing lost, nothing twice, in order. */
function assertExactly(seqs, n) {
  const dup = seqs.length - new Set(seqs).size;
  const lost = n - new Set(seqs).size;
  assert.equal(dup, 0, `${dup} duplicated`);
  assert.equal(lost, 0, `${lost} lost`);
  assert.deepEqual(seqs, Array.from({ length: n }, (_, i) => i + 1));
}

test("a node killed mid-stream: the client resumes on the second URL with 0 lost and 0 duplicated over 3000 messages", async () => {
  const a = await node({ REDIS_URL: redis.url }, "kill-a");
  const b = await node({ REDIS_URL: redis.url }, "kill-b");
  const c = new SluiceClient([a.ws, b.ws], { minDelayMs: 20, maxDelayMs: 200 });
  const seqs = [], rec = [];
  const sub = c.subscribe("prices.KILL", (m) => seqs.push(m.seq));
  sub.on("recovered", (r) => rec.push(r));
  const first = nextEvent(sub, "recovered");
  c.connect();
  await first;
  assert.equal(c.server.node_id, "kill-a");
  const total = 3000;
  await publishMany(b, "prices.KILL", total, (i) => { if (i === 1000) a.kill("SIGKILL"); });
  await waitFor(() => seqs.length >= total && c.state === "connected", `${total} messages`, 60000);
  await new Promise((r) => setTimeout(r, 200)); // a late duplicate would show up here
  assertExactly(seqs, total);
  assert.equal(c.server.node_id, "kill-b");
  assert.equal(c.url, b.ws);
  assert.ok(c.stats().reconnects >= 1);
  assert.equal(rec.at(-1).recovered, true);
  assert.equal(rec.at(-1).resumed, true);
  assert.equal(sub.gaps, 0);
  c.close();
});

test("1012 (drain) moves to the next URL at once and resumes with no loss", async () => {
  const a = await node({ REDIS_URL: redis.url, SLUICE_DRAIN_SECONDS: "0" }, "drain-a");
  const b = await node({ REDIS_URL: redis.url }, "drain-b");
  // A 10-minute backoff: only an immediate move can pass the time bound below.
  const c = new SluiceClient([a.ws, b.ws], { minDelayMs: 600000, maxDelayMs: 600000 });
  const seqs = [];
  const sub = c.subscribe("prices.DRAIN", (m) => seqs.push(m.seq));
  const first = nextEvent(sub, "recovered");
  c.connect();
  await first;
  await publishMany(b, "prices.DRAIN", 500);
  const closed = nextEvent(c, "close");
  const moved = nextEvent(c, "connected", (p) => p.node_id === "drain-b").then(() => Date.now());
  const closedAt = closed.then(() => Date.now());
  a.kill("SIGTERM");
  assert.equal((await closed).code, 1012);
  await publishMany(b, "prices.DRAIN", 500);
  const took = (await moved) - (await closedAt);
  assert.ok(took < 10000, `moved after ${took} ms`);
  await waitFor(() => seqs.length >= 1000, "1000 messages", 30000);
  assertExactly(seqs, 1000);
  assert.equal(c.url, b.ws);
  c.close();
});

test("repeated rate-limit breaches (4029) stop the client in state failed", async () => {
  const n = await node({ SLUICE_MESSAGE_RATE: "1", SLUICE_MESSAGE_BURST: "2", SLUICE_RATE_LIMIT_STRIKES: "3" });
  const c = new SluiceClient([n.ws], { minDelayMs: 1, maxDelayMs: 1 });
  const states = [], errors = [];
  c.on("state", (s) => states.push(s));
  c.on("error", (e) => errors.push(e.code));
  const closed = nextEvent(c, "close");
  await new Promise((r) => { c.on("connected", r); c.connect(); });
  for (let i = 0; i < 10; i++) c.send({ type: "ping", correlation_id: i });
  assert.equal((await closed).code, 4029);
  await new Promise((r) => setTimeout(r, 500));
  assert.deepEqual(states, ["connecting", "connected", "failed"]);
  assert.ok(errors.includes("RATE_LIMIT_EXCEEDED"));
  assert.equal(c.stats().reconnects, 0);
});

test("maxAttempts failed connects end in state failed; the token function is asked on each", async () => {
  const dead = `ws://127.0.0.1:${await freePort()}/ws`;
  let asked = 0;
  const c = new SluiceClient([dead, dead], { minDelayMs: 5, maxDelayMs: 20, maxAttempts: 3, token: async () => `t${++asked}` });
  const states = [];
  c.on("state", (s) => states.push(s));
  c.connect();
  await waitFor(() => c.state === "failed", "state failed");
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(asked, 3);
  assert.deepEqual(states, ["connecting", "reconnecting", "failed"]);
  assert.equal(c.stats().reconnects, 2);
});

test("frames sent while offline are queued up to queueSize, oldest dropped first", async () => {
  const n = await node();
  const c = new SluiceClient([n.ws], { queueSize: 3 });
  for (let i = 1; i <= 5; i++) c.send({ type: "ping", correlation_id: `q${i}` });
  assert.equal(c.stats().queued, 3);
  assert.equal(c.stats().dropped, 2);
  const pongs = [];
  c.on("frame", (f) => { if (f.type === "pong" && f.correlation_id !== "rtt") pongs.push(f.correlation_id); });
  c.connect();
  await waitFor(() => pongs.length === 3, "three pongs");
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(pongs, ["q3", "q4", "q5"]);
  assert.equal(c.stats().queued, 0);
  c.close();
});

test("with auth on, the token function is called on every connect and refreshes before exp", async () => {
  const secret = "web-test-jwt-secret-of-32-bytes-or-more";
  const n = await node({ SLUICE_JWT_SECRET: secret, SLUICE_JWT_LEEWAY: "0" });
  let asked = 0;
  const token = async () => { asked++; return hs256(secret, { sub: "alice", exp: Math.floor(Date.now() / 1000) + 3 }); };
  // The default 30 s margin is longer than the token's life: half-life refreshes.
  const c = new SluiceClient([n.ws], { token, minDelayMs: 10, maxDelayMs: 10 });
  const closes = [];
  c.on("close", (e) => closes.push(e.code));
  await new Promise((r) => { c.on("connected", r); c.connect(); });
  assert.equal(asked, 1);
  for (let i = 2; i <= 3; i++) {
    const again = nextEvent(c, "connected");
    c.reconnect();
    await again;
    assert.equal(asked, i);
  }
  // Each token lives 2-3 s (exp is whole seconds) and is refreshed at half its life,
  // never within 1 s: the session outlives several, without a refresh loop.
  const refreshed = [];
  c.on("refreshed", (r) => refreshed.push(r));
  await new Promise((r) => setTimeout(r, 5000));
  assert.ok(refreshed.length >= 2 && refreshed.length <= 5, `${refreshed.length} refreshes`);
  assert.equal(asked, 3 + refreshed.length);
  assert.equal(c.state, "connected");
  assert.deepEqual(closes, []);
  c.close();
});

test("a token string that expires without refresh ends with 1008 in state failed", async () => {
  const secret = "web-test-jwt-secret-of-32-bytes-or-more";
  const n = await node({ SLUICE_JWT_SECRET: secret, SLUICE_JWT_LEEWAY: "0" });
  const tok = hs256(secret, { sub: "bob", exp: Math.floor(Date.now() / 1000) + 2 });
  const c = new SluiceClient([n.ws], { token: tok, minDelayMs: 1, maxDelayMs: 1 });
  const errors = [];
  c.on("error", (e) => errors.push(e.code));
  const closed = nextEvent(c, "close");
  c.connect();
  assert.equal((await closed).code, 1008);
  await waitFor(() => c.state === "failed", "failed");
  assert.deepEqual(errors, ["TOKEN_EXPIRED"]);
});

test("compressed, batched subscriptions from a real node arrive complete and in order", async () => {
  const n = await node();
  let binary = 0;
  // Counts the frames that arrive gzipped, to prove the inflate path was taken.
  class Counting extends WebSocket {
    constructor(url) {
      super(url);
      this.addEventListener("message", (e) => { if (typeof e.data !== "string") binary++; });
    }
  }
  const c = new SluiceClient([n.ws], { WebSocket: Counting });
  const seqs = [];
  const sub = c.subscribe("prices.GZ", (m) => { assert.equal(m.payload.pad.length, 1500); seqs.push(m.seq); }, { batchSize: 20, compression: true });
  const first = nextEvent(sub, "recovered");
  c.connect();
  await first;
  const pad = "p".repeat(1500);
  let next = 0;
  await Promise.all(Array.from({ length: 8 }, async () => {
    while (next < 400) { next++; await n.publish("prices.GZ", { pad }); }
  }));
  await waitFor(() => seqs.length >= 400, "400 messages");
  assertExactly(seqs, 400);
  assert.ok(binary > 0, "no binary frame arrived");
  c.close();
});

test("a real slow-consumer close (4008) is resumed at once with nothing lost or repeated", async () => {
  const n = await node({ SLUICE_QUEUE_SIZE: "4" });
  const c = new SluiceClient([n.ws], { minDelayMs: 600000, maxDelayMs: 600000 });
  const seqs = [], closes = [];
  let stalled = false;
  c.on("close", (e) => closes.push(e.code));
  const sub = c.subscribe("prices.SLOW", (m) => {
    seqs.push(m.seq);
    if (!stalled) {
      // Stop reading for 4 s (this whole process blocks) while another process
      // publishes ~20 MB: the socket buffers fill, then the node's queue of 4.
      stalled = true;
      const t = Date.now();
      while (Date.now() - t < 4000);
    }
  });
  const first = nextEvent(sub, "recovered");
  c.connect();
  await first;
  // The publisher is another process, so it keeps going while this one is blocked.
  const total = 400;
  const pub = spawn(process.execPath, ["-e", `
    const pad = "x".repeat(50000);
    (async () => { for (let i = 1; i <= ${total}; i++) {
      const r = await fetch("${n.http}/publish", { method: "POST",
        headers: { authorization: "Bearer ${ADMIN_TOKEN}", "content-type": "application/json" },
        body: JSON.stringify({ topic: "prices.SLOW", payload: { i, pad } }) });
      if (!r.ok) process.exit(1);
    } })();`], { stdio: "ignore" });
  const pubDone = new Promise((r) => pub.on("exit", r));
  await waitFor(() => seqs.length >= total && c.state === "connected", `${total} messages`, 90000);
  assert.equal(await pubDone, 0);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(closes[0], 4008, `closes: ${closes}`);
  assertExactly(seqs, total);
  // minDelayMs is 10 minutes: only an immediate resume gets here.
  assert.equal(c.stats().reconnects, closes.length);
  c.close();
});
