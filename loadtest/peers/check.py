#!/usr/bin/env python3
"""End-to-end smoke check of one benchmark peer: opens 3 subscribers on one
topic, waits for the subscribe ack (nchan: 0.5 s sleep), publishes 20 messages
through the peer's publish path and asserts that every subscriber received all
20, unchanged and in order. Exit status 0 = pass, 1 = fail.

usage: check.py <nchan|socketio|fastapi|socketioxide> --port P
                [--redis redis://127.0.0.1:6379] [--via redis|http]
                [--subs 3] [--count 20]
"""
import argparse
import asyncio
import http.client
import json
import sys
import time
import uuid

import redis.asyncio as aioredis
from websockets.asyncio.client import connect

TIMEOUT = 5.0


def payload(i):
    body = {"ls": i, "lt": time.time_ns(), "p": "x" * 16}
    return json.dumps(body, separators=(",", ":"))


# ------------------------------------------------------------ subscribers ---

class Sub:
    """One subscriber connection; `expect(frame)` maps a published payload to
    the exact frame the peer must deliver."""

    def __init__(self, name, port, topic):
        self.name, self.port, self.topic = name, port, topic
        self.ws = None

    async def open(self):
        n, p, t = self.name, self.port, self.topic
        if n == "nchan":
            self.ws = await connect(f"ws://127.0.0.1:{p}/sub/{t}")
        elif n == "fastapi":
            self.ws = await connect(f"ws://127.0.0.1:{p}/ws/{t}")
            ack = await self.recv()
            want = json.dumps({"type": "subscribed", "topic": t}, separators=(",", ":"))
            assert ack == want, f"fastapi ack {ack!r} != {want!r}"
        else:  # socket.io (python-socketio or socketioxide), Engine.IO v4 over websocket
            self.ws = await connect(f"ws://127.0.0.1:{p}/socket.io/?EIO=4&transport=websocket")
            opening = await self.recv()
            assert opening.startswith("0{"), f"expected engine.io open packet, got {opening!r}"
            await self.ws.send("40")
            connected = await self.recv()
            assert connected.startswith("40"), f"expected socket.io CONNECT ack, got {connected!r}"
            await self.ws.send("42" + json.dumps(["subscribe", t]))
            ack = await self.recv()
            want = "42" + json.dumps(["subscribed", t], separators=(",", ":"))
            assert ack == want, f"socket.io ack {ack!r} != {want!r}"

    def expect(self, body):
        if self.name in ("nchan", "fastapi"):
            return body
        return '42["msg",' + body + "]"

    async def recv(self):
        while True:
            frame = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
            if self.name in ("socketio", "socketioxide") and frame == "2":
                await self.ws.send("3")  # engine.io ping -> pong
                continue
            return frame


# -------------------------------------------------------------- publishers ---

def http_publish(port, path, bodies, ok_codes):
    """POST every body on ONE keep-alive HTTP/1.1 connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        for b in bodies:
            conn.request("POST", path, body=b.encode(),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status in ok_codes, f"POST {path} -> {resp.status}"
            assert not resp.will_close, "server closed the keep-alive connection"
    finally:
        conn.close()


def sio_emitter_message(topic, body):
    """The JSON an external emitter PUBLISHes on channel `socketio` so that every
    python-socketio worker emits event `msg` with `body` to room `topic`."""
    return ('{"method":"emit","event":"msg","data":[' + body + '],"namespace":"/",'
            '"room":' + json.dumps(topic) + ',"skip_sid":null,"callback":null,'
            '"host_id":"external"}')


async def publish(args, topic, bodies):
    name, via = args.name, args.via
    if via == "http":
        if name == "nchan":
            http_publish(args.port, f"/pub/{topic}", bodies, (201, 202))
        else:
            http_publish(args.port, f"/publish/{topic}", bodies, (200,))
        return
    r = aioredis.Redis.from_url(args.redis)
    try:
        for b in bodies:
            if name == "fastapi":
                await r.publish(topic, b)
            elif name == "socketio":
                await r.publish("socketio", sio_emitter_message(topic, b))
            else:
                raise SystemExit(f"--via redis is not supported for {name}")
    finally:
        await r.aclose()


# ------------------------------------------------------------------- main ---

async def main(args):
    topic = f"bench.check{uuid.uuid4().hex[:8]}.0"
    subs = [Sub(args.name, args.port, topic) for _ in range(args.subs)]
    await asyncio.gather(*(s.open() for s in subs))
    if args.name == "nchan":
        await asyncio.sleep(0.5)  # nchan has no subscribe ack
    bodies = [payload(i) for i in range(args.count)]
    await publish(args, topic, bodies)

    failures = 0
    for k, s in enumerate(subs):
        got = []
        try:
            for _ in bodies:
                got.append(await s.recv())
        except (asyncio.TimeoutError, Exception) as e:  # noqa: BLE001
            print(f"  subscriber {k}: stopped after {len(got)} frames: {type(e).__name__} {e}")
        want = [s.expect(b) for b in bodies]
        if got != want:
            failures += 1
            bad = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), len(got))
            print(f"  subscriber {k}: FAIL at #{bad}: got {got[bad] if bad < len(got) else None!r} "
                  f"want {want[bad] if bad < len(want) else None!r}")
        await s.ws.close()
    verdict = "PASS" if failures == 0 else "FAIL"
    print(f"{verdict} {args.name} via {args.via}: {args.subs} subscribers x {args.count} messages "
          f"on {topic}; sample frame: {subs[0].expect(bodies[0])}")
    return failures == 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=["nchan", "socketio", "fastapi", "socketioxide"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379")
    ap.add_argument("--via", choices=["redis", "http"],
                    help="publish path (default: the one the load generator uses)")
    ap.add_argument("--subs", type=int, default=3)
    ap.add_argument("--count", type=int, default=20)
    a = ap.parse_args()
    if a.via is None:
        a.via = "redis" if a.name in ("socketio", "fastapi") else "http"
    try:
        ok = asyncio.run(main(a))
    except (AssertionError, OSError, asyncio.TimeoutError) as e:
        print(f"FAIL {a.name}: {type(e).__name__}: {e}")
        ok = False
    sys.exit(0 if ok else 1)
