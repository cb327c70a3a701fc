#!/usr/bin/env python3
"""Publish -> deliver latency through Redis, and Redis commands per delivery.

    python3 scripts/measure/redis_latency.py --redis redis://127.0.0.1:6379 \
        --url ws://127.0.0.1:8081/ws --url ws://127.0.0.1:8082/ws --rate 1000 --seconds 10

An engine publishes with FCALL sluice_publish at a constant rate; each payload
carries its scheduled send time (latency is measured from the schedule, so a
stalled publisher cannot hide queueing). One subscriber per --url receives every
message; the script checks seqs (lost / duplicated / out of order), prints latency
percentiles, and the Redis commands (INFO commandstats) per delivered message.
Needs `pip install websockets redis`.
"""
import argparse, asyncio, json, time

import redis.asyncio as aioredis
import websockets


def pct(sorted_vals, q):
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def commandstats(info):
    return {k[len("cmdstat_"):]: v["calls"] for k, v in info.items() if k.startswith("cmdstat_")}


async def subscriber(url, topic, n, lat, seen, ready):
    async with websockets.connect(url, ping_interval=None, max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "subscribe", "topic": topic}))
        ack = json.loads(await ws.recv())
        assert ack["type"] == "ack", ack
        ready.set()
        while len(seen) < n:
            m = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if m["type"] not in ("delta", "alert"):
                continue
            lat.append((time.time() - m["payload"]["t"]) * 1000)
            seen.append(m["seq"])


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--redis", default="redis://127.0.0.1:6379")
    p.add_argument("--url", action="append", required=True)
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--seconds", type=float, default=10)
    a = p.parse_args()
    r = aioredis.from_url(a.redis)
    topic = f"bench.latency.{int(time.time())}"
    n = int(a.rate * a.seconds)
    lats, seens, readies = [], [], []
    tasks = []
    for url in a.url:
        lat, seen, ready = [], [], asyncio.Event()
        lats.append(lat); seens.append(seen); readies.append(ready)
        tasks.append(asyncio.create_task(subscriber(url, topic, n, lat, seen, ready)))
    for ev in readies:
        await ev.wait()
    before = commandstats(await r.info("commandstats"))
    start = time.time() + 0.1
    for i in range(n):
        due = start + i / a.rate
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await r.fcall("sluice_publish", 1, topic, json.dumps({"t": due, "i": i}))
    await asyncio.gather(*tasks)
    after = commandstats(await r.info("commandstats"))
    delivered = sum(len(s) for s in seens)
    diff = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    diff = {k: v for k, v in diff.items() if v > 0 and k not in ("info",)}
    all_lat = sorted(x for l in lats for x in l)
    ok = all(s == list(range(1, n + 1)) for s in seens)
    print(json.dumps({
        "published": n, "subscribers": len(a.url), "delivered": delivered, "all_in_order_exactly_once": ok,
        "latency_ms": {"p50": round(pct(all_lat, 0.5), 3), "p99": round(pct(all_lat, 0.99), 3),
                       "p999": round(pct(all_lat, 0.999), 3), "max": round(all_lat[-1], 3)},
        "redis_calls": diff,
        "redis_calls_per_delivery": round(sum(diff.values()) / delivered, 3),
        "redis_calls_per_delivery_excluding_publish": round((sum(diff.values()) - diff.get("fcall", 0)) / delivered, 3),
    }))


asyncio.run(main())
