#!/usr/bin/env python3
"""Idle memory per connection: RSS growth of a running node over N idle, subscribed
WebSocket connections.

    SLUICE_MAX_CONNECTIONS_PER_IP=100000 target/release/sluice &
    python3 scripts/measure/idle_memory.py --pid $(pgrep -f 'target/release/sluice') \
        --url ws://127.0.0.1:8080/ws --connections 5000

Reads VmRSS of the node from /proc before and after opening the connections (each
subscribed to one of 1000 topics), waits for it to settle, and prints the growth per
connection, with the anonymous (heap) part from /proc/<pid>/smaps_rollup. Needs
`pip install websockets`.

Limits to mind: the node refuses more than SLUICE_MAX_CONNECTIONS_PER_IP (default
1000) connections from one address, so raise it or spread the clients over several
source addresses with `--bind 127.0.0.1,127.0.0.2,...` (every 127/8 address works on
Linux; one source address also runs out of ephemeral ports near 28k). Both this
process and the node need a file descriptor per connection: `ulimit -n` must allow
it in the shells that start them.
"""
import argparse, asyncio, json, resource, time

import websockets


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def rss_kib(pid):
    return status_kib(pid, "VmRSS")


def rollup_kib(pid):
    """Rss, Anonymous and Private_Dirty from smaps_rollup (heap and stacks are in Anonymous)."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].rstrip(":") in ("Rss", "Anonymous", "Private_Dirty"):
                    out[parts[0].rstrip(":").lower()] = int(parts[1])
    except OSError:
        pass
    return out


async def open_one(url, i, conns, local_addr):
    kwargs = {"local_addr": (local_addr, 0)} if local_addr else {}
    ws = await websockets.connect(url, ping_interval=None, max_size=None, open_timeout=60, **kwargs)
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
    p.add_argument("--bind", default="",
                   help="comma-separated source addresses used in turn (e.g. 127.0.0.2,127.0.0.3)")
    p.add_argument("--concurrency", type=int, default=200, help="connections being opened at once")
    p.add_argument("--settle", type=float, default=3.0, help="seconds to wait before reading RSS")
    p.add_argument("--hold", type=float, default=0.0,
                   help="seconds to keep the connections open after the report (for profilers)")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.connections + 50 > hard:
        raise SystemExit(f"ulimit -n is {hard}: too low for {a.connections} connections")
    binds = [b.strip() for b in a.bind.split(",") if b.strip()] or [None]
    before = rss_kib(a.pid)
    before_rollup = rollup_kib(a.pid)
    conns = []
    sem = asyncio.Semaphore(a.concurrency)

    async def guarded(i):
        async with sem:
            await open_one(a.url, i, conns, binds[i % len(binds)])

    t0 = time.time()
    await asyncio.gather(*(guarded(i) for i in range(a.connections)))
    opened = time.time() - t0
    await asyncio.sleep(a.settle)
    after = rss_kib(a.pid)
    after_rollup = rollup_kib(a.pid)
    growth = (after - before) * 1024
    report = {
        "connections": len(conns),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_connection": round(growth / len(conns)),
        "open_seconds": round(opened, 2),
    }
    if "anonymous" in before_rollup and "anonymous" in after_rollup:
        anon = (after_rollup["anonymous"] - before_rollup["anonymous"]) * 1024
        report["anon_bytes_per_connection"] = round(anon / len(conns))
    print(json.dumps(report), flush=True)
    await asyncio.sleep(a.hold)
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)


asyncio.run(main())
