#!/usr/bin/env python3
"""Idle memory per connection: RSS growth of a running node over N idle, subscribed
WebSocket connections.

    python3 scripts/measure/idle_memory.py --pid $(pgrep -f 'target/release/sluice') \
        --url ws://127.0.0.1:8080/ws --connections 5000

Reads VmRSS of the node from /proc before and after opening the connections (each
subscribed to its own topic), waits for it to settle, and prints the growth per
connection. Needs `pip install websockets`.
"""
import argparse, asyncio, json, resource, time

import websockets


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_one(url, i, conns):
    ws = await websockets.connect(url, ping_interval=None, max_size=None)
    await ws.recv()  # connected
    await ws.send(json.dumps({"type": "subscribe", "topic": f"idle.t{i % 1000}"}))
    ack = json.loads(await ws.recv())
    assert ack["type"] == "ack", ack
    conns.append(ws)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--url", default="ws://127.0.0.1:8080/ws")
    p.add_argument("--connections", type=int, default=5000)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = rss_kib(a.pid)
    conns = []
    sem = asyncio.Semaphore(200)

    async def guarded(i):
        async with sem:
            await open_one(a.url, i, conns)

    t0 = time.time()
    await asyncio.gather(*(guarded(i) for i in range(a.connections)))
    opened = time.time() - t0
    await asyncio.sleep(3)
    after = rss_kib(a.pid)
    growth = (after - before) * 1024
    print(json.dumps({
        "connections": len(conns),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_connection": round(growth / len(conns)),
        "open_seconds": round(opened, 2),
    }))
    for ws in conns:
        await ws.close()


asyncio.run(main())
