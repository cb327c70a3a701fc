//! The dashboard's pure helpers: Prometheus text parsing and p50/p99 from histogram buckets.
import assert from "node:assert/strict";
import { test } from "node:test";
import { parseMetrics, quantile } from "../dashboard/metrics.js";

test("Prometheus text is parsed into names, labels and values; comments and junk are skipped", () => {
  const text = [
    "# HELP sluice_messages_sent_total Messages sent",
    "# TYPE sluice_messages_sent_total counter",
    "sluice_messages_sent_total 1234",
    'sluice_delivery_latency_seconds_bucket{le="0.005"} 50',
    'sluice_delivery_latency_seconds_bucket{le="+Inf",node="a\\"b"} 100',
    "not a sample line",
    "",
    "sluice_connections_active 3.5e1",
  ].join("\n");
  assert.deepEqual(parseMetrics(text), [
    { name: "sluice_messages_sent_total", labels: {}, value: 1234 },
    { name: "sluice_delivery_latency_seconds_bucket", labels: { le: "0.005" }, value: 50 },
    { name: "sluice_delivery_latency_seconds_bucket", labels: { le: "+Inf", node: 'a\\"b' }, value: 100 },
    { name: "sluice_connections_active", labels: {}, value: 35 },
  ]);
});

test("quantiles interpolate inside the bucket holding the rank, as histogram_quantile does", () => {
  const b = [[0.001, 0], [0.005, 50], [0.01, 100], [Infinity, 100]];
  assert.equal(quantile(b, 0.5), 0.005);
  assert.ok(Math.abs(quantile(b, 0.99) - 0.0099) < 1e-12);
  assert.ok(Math.abs(quantile(b, 0.25) - 0.003) < 1e-12);
  // Everything above the last finite bound: the answer is that bound.
  assert.equal(quantile([[0.1, 0], [Infinity, 10]], 0.5), 0.1);
  // No observations between two scrapes: no point rather than a made-up zero.
  assert.equal(quantile([[0.1, 0], [Infinity, 0]], 0.5), null);
  assert.equal(quantile([], 0.5), null);
});
