//! The client's pure helpers and the behaviour only a scripted server can provoke on demand (4008, silent heartbeats, gzip, batches).
import assert from "node:assert/strict";
import { test } from "node:test";
import { gzipSync } from "node:zlib";
import { SluiceClient, backoffDelay, jwtExpiryMs, topicMatches } from "../client/sluice.js";
import { fakeServer, hs256, nextEvent, waitFor } from "../test-support/harness.js";

test("backoff stays within full-jitter bounds and caps at maxDelayMs", () => {
  for (let attempt = 0; attempt < 12; attempt++) {
    const cap = Math.min(60000, 1000 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, 1000, 60000, () => 0), 0);
    assert.equal(backoffDelay(attempt, 1000, 60000, () => 0.999999), Math.floor(0.999999 * cap));
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt, 1000, 60000);
      assert.ok(d >= 0 && d < cap, `attempt ${attempt}: ${d} outside [0, ${cap})`);
    }
  }
  // Huge attempt counts must not overflow to Infinity or NaN.
  assert.equal(backoffDelay(5000, 1000, 60000, () => 0.5), 30000);
});

test("jwt expiry is read from exp; non-JWTs give null", () => {
  assert.equal(jwtExpiryMs(hs256("k", { sub: "a", exp: 1700000000 })), 1700000000000);
  assert.equal(jwtExpiryMs("not-a-jwt"), null);
  assert.equal(jwtExpiryMs("a.%%%.c"), null);
  assert.equal(jwtExpiryMs(hs256("k", { sub: "a" })), null);
});

test("wildcard patterns match exactly one segment (*) or one or more (>)", () => {
  assert.equal(topicMatches("prices.*", "prices.IN1"), true);
  assert.equal(topicMatches("prices.*", "prices.IN1.x"), false);
  assert.equal(topicMatches("prices.*", "prices"), false);
  assert.equal(topicMatches("risk.bob.>", "risk.bob.alerts"), true);
  assert.equal(topicMatches("risk.bob.>", "risk.bob"), false);
  assert.equal(topicMatches("risk.*.alerts", "risk.al.alerts"), true);
});

test("bad arguments are refused with a clear TypeError", () => {
  assert.throws(() => new SluiceClient([]), /urls must be/);
  assert.throws(() => new SluiceClient(["http://x"]), /urls must be/);
  const c = new SluiceClient("ws://127.0.0.1:1/ws");
  assert.throws(() => c.subscribe("bad topic", () => {}), /invalid topic/);
  assert.throws(() => c.subscribe("ok", null), /handler must be a function/);
  c.subscribe("ok", () => {});
  assert.throws(() => c.subscribe("ok", () => {}), /already subscribed/);
});

test("4008 resumes at once from (last seq + 1, epoch) and replayed duplicates are dropped", async () => {
  const srv = await fakeServer(async (conn) => {
    conn.connected();
    const sub = await conn.next("subscribe");
    const entry = sub.topics[0];
    if (srv.conns.length === 1) {
      assert.equal(entry, "prices.A");
      conn.send({ type: "ack", topic: "prices.A", payload: { subscribed: true, head_seq: 0, epoch: "e1", recovered: false } });
      for (let s = 1; s <= 3; s++) conn.send({ type: "delta", topic: "prices.A", seq: s, epoch: "e1", payload: { s } });
      conn.close(4008, "slow consumer");
    } else {
      conn.send({ type: "ack", topic: "prices.A", payload: { subscribed: true, head_seq: 5, epoch: "e1", recovered: true } });
      // Seq 3 again (an overlap the client must drop), then 4 and 5.
      for (let s = 3; s <= 5; s++) conn.send({ type: "delta", topic: "prices.A", seq: s, epoch: "e1", payload: { s } });
    }
  });
  const c = new SluiceClient([srv.url], { minDelayMs: 600000, maxDelayMs: 600000 });
  const got = [], rec = [];
  const sub = c.subscribe("prices.A", (m) => got.push(m.seq));
  sub.on("recovered", (r) => rec.push(r));
  const closed = nextEvent(c, "close");
  c.connect();
  assert.equal((await closed).code, 4008);
  const t0 = Date.now();
  await waitFor(() => got.length === 5, "seqs 1..5");
  // minDelayMs is 10 minutes: arriving here at all means the resume did not back off.
  assert.ok(Date.now() - t0 < 10000);
  assert.deepEqual(got, [1, 2, 3, 4, 5]);
  assert.deepEqual(srv.conns[1].frames.find((f) => f.type === "subscribe").topics, [
    { topic: "prices.A", resume_from_seq: 4, epoch: "e1" },
  ]);
  assert.deepEqual(rec.map((r) => [r.recovered, r.resumed]), [[false, false], [true, true]]);
  assert.equal(sub.gaps, 0);
  assert.equal(c.stats().reconnects, 1);
  c.close();
  srv.stop();
});

test("three missed heartbeats: the connection is presumed dead and replaced", async () => {
  const srv = await fakeServer((conn) => conn.connected(100)); // then silence
  const c = new SluiceClient([srv.url], { minDelayMs: 10, maxDelayMs: 10 });
  const closes = [];
  c.on("close", (e) => closes.push([e.code, Date.now()]));
  const t0 = Date.now();
  c.connect();
  await waitFor(() => srv.conns.length >= 2, "a second connection");
  assert.equal(closes[0][0], 4000);
  // Not before 3 × 100 ms of silence (the rtt ping is answered by nobody).
  assert.ok(closes[0][1] - t0 >= 300, `closed after ${closes[0][1] - t0} ms`);
  c.close();
  srv.stop();
});

test("heartbeats arriving in time keep the connection; the watch re-arms", async () => {
  const beats = [];
  const srv = await fakeServer((conn) => {
    conn.connected(200);
    if (beats.length === 0) beats.push(setInterval(() => conn.send({ type: "heartbeat" }), 100));
  });
  const c = new SluiceClient([srv.url], { minDelayMs: 10, maxDelayMs: 10 });
  const closes = [];
  c.on("close", (e) => closes.push(e.code));
  c.connect();
  await nextEvent(c, "connected");
  // Five times the 600 ms window: a watch that never re-arms would have fired.
  await new Promise((r) => setTimeout(r, 3000));
  assert.deepEqual(closes, []);
  assert.equal(srv.conns.length, 1);
  clearInterval(beats[0]);
  await waitFor(() => closes.length === 1, "the close once heartbeats stop");
  assert.equal(closes[0], 4000);
  c.close();
  srv.stop();
});

test("gzip binary frames and batch arrays are delivered in order with text frames", async () => {
  const srv = await fakeServer(async (conn) => {
    conn.connected();
    await conn.next("subscribe");
    conn.send({ type: "ack", topic: "t.z", payload: { subscribed: true, head_seq: 0, epoch: "e", recovered: false } });
    const env = (s) => ({ type: "delta", topic: "t.z", seq: s, epoch: "e", payload: { big: "x".repeat(2000), s } });
    conn.sendBinary(gzipSync(JSON.stringify([env(1), env(2), env(3)])));
    conn.send(env(4)); // a text frame right behind a binary one must not overtake it
    conn.sendBinary(gzipSync(JSON.stringify(env(5))));
    conn.send([env(6), env(7)]);
  });
  const c = new SluiceClient([srv.url]);
  const got = [];
  c.subscribe("t.z", (m) => got.push(m.seq), { batchSize: 10, compression: true });
  c.connect();
  await waitFor(() => got.length === 7, "seven messages");
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7]);
  const sub = srv.conns[0].frames.find((f) => f.type === "subscribe");
  assert.equal(sub.batch_size, 10);
  assert.equal(sub.compression, true);
  c.close();
  srv.stop();
});

test("1008 and 1009 stop the client in state failed, with no reconnect", async () => {
  for (const code of [1008, 1009]) {
    const srv = await fakeServer((conn) => { conn.connected(); setTimeout(() => conn.close(code), 50); });
    const c = new SluiceClient([srv.url], { minDelayMs: 1, maxDelayMs: 1 });
    const states = [];
    c.on("state", (s) => states.push(s));
    c.connect();
    await waitFor(() => c.state === "failed", `failed after ${code}`);
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(states, ["connecting", "connected", "failed"]);
    assert.equal(srv.conns.length, 1);
    srv.stop();
  }
});

test("unsubscribe tells the server and stops the handler; other subscriptions go on", async () => {
  const srv = await fakeServer(async (conn) => {
    conn.connected();
    for (const t of ["a.x", "a.y"]) {
      await conn.next("subscribe");
      conn.send({ type: "ack", topic: t, payload: { subscribed: true, head_seq: 0, epoch: "e", recovered: false } });
    }
    await conn.next("unsubscribe");
    for (const t of ["a.x", "a.y"]) conn.send({ type: "delta", topic: t, seq: 1, epoch: "e", payload: {} });
  });
  const c = new SluiceClient([srv.url]);
  const got = [];
  const x = c.subscribe("a.x", (m) => got.push(m.topic));
  const acked = nextEvent(x, "recovered");
  c.connect();
  await acked;
  const y = c.subscribe("a.y", (m) => got.push(m.topic));
  await nextEvent(y, "recovered");
  x.unsubscribe();
  await waitFor(() => got.length === 1, "a.y's message");
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(got, ["a.y"]);
  assert.deepEqual(srv.conns[0].frames.filter((f) => f.type === "unsubscribe"), [{ type: "unsubscribe", topic: "a.x" }]);
  assert.deepEqual(c.subscriptions().map((s) => s.topic), ["a.y"]);
  c.close();
  srv.stop();
});
