"""Benchmark peer "fastapi": FastAPI WebSocket fan-out over Redis pub/sub, run
by uvicorn with N worker processes.

Contract:
  * subscribe: ws://127.0.0.1:P/ws/<topic>
  * once the socket is registered locally AND this worker's Redis subscription
    to channel <topic> is confirmed by Redis, the server sends the text frame
    {"type":"subscribed","topic":"<topic>"}
  * every message PUBLISHed on Redis channel <topic> is then forwarded verbatim
    as one text frame to each local socket of that topic
  * publish path: `PUBLISH <topic> <payload>` on Redis, directly
  * GET /health -> 200 "ok"

Design (per worker process): one Redis pub/sub connection and one reader task.
A channel is SUBSCRIBEd when its first local socket arrives and UNSUBSCRIBEd
when the last one leaves; the SUBSCRIBE confirmation read by the reader task is
what releases the ack. Fan-out is a non-blocking put into each socket's bounded
queue, drained by that socket's own sender, so a slow client never stalls the
reader; a client whose queue overflows is dropped (closed with 1013).

Config (env, because uvicorn --workers imports this module by name):
  PEER_REDIS_URL (default redis://127.0.0.1:6379)
  PEER_QUEUE_MAX (default 4096 messages per socket)
"""
import asyncio
import collections
import contextlib
import json
import logging
import os
import re

import redis.asyncio as aioredis
from fastapi import FastAPI, WebSocket
from fastapi.responses import PlainTextResponse
from starlette.websockets import WebSocketDisconnect

REDIS_URL = os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379")
QUEUE_MAX = int(os.environ.get("PEER_QUEUE_MAX", "4096"))
# Every worker stays subscribed to this channel for its whole life, so the
# pub/sub connection is always open; peer.sh counts its subscribers
# (PUBSUB NUMSUB) to know that all workers are up.
CONTROL_CHANNEL = "sluice-peer-fastapi.control"
TOPIC_RE = re.compile(r"[A-Za-z0-9_.:-]{1,200}")

log = logging.getLogger("fastapi-peer")


class Subscriber:
    """One WebSocket's outbound queue."""

    __slots__ = ("queue", "overflowed")

    def __init__(self):
        self.queue = asyncio.Queue(maxsize=QUEUE_MAX)
        self.overflowed = asyncio.Event()

    def push(self, text):
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.overflowed.set()


class Hub:
    """Local topic registry + the worker's single Redis pub/sub reader."""

    def __init__(self, url):
        self.redis = aioredis.Redis.from_url(url)
        self.pubsub = self.redis.pubsub()
        self.topics = {}  # topic -> set[Subscriber]
        self.ready = {}  # topic -> Future resolved by the SUBSCRIBE confirmation
        # SUBSCRIBE confirmations arrive in the order the commands were sent;
        # a FIFO per channel copes with subscribe/unsubscribe/subscribe churn.
        self.pending = collections.defaultdict(collections.deque)
        self.reader = None

    async def start(self):
        await self.pubsub.subscribe(CONTROL_CHANNEL)
        self.reader = asyncio.create_task(self._read_loop())

    async def stop(self):
        if self.reader:
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
            await self.redis.aclose()

    async def add(self, topic, sub):
        """Register `sub` on `topic`; returns once Redis delivery is assured."""
        subs = self.topics.get(topic)
        if subs is None:
            subs = self.topics[topic] = set()
            fut = asyncio.get_running_loop().create_future()
            self.ready[topic] = fut
            self.pending[topic].append(fut)
            subs.add(sub)
            await self.pubsub.subscribe(topic)
        else:
            subs.add(sub)
            fut = self.ready[topic]
        # shield: one socket going away must not cancel the shared future
        await asyncio.shield(fut)

    async def remove(self, topic, sub):
        subs = self.topics.get(topic)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self.topics[topic]
            self.ready.pop(topic, None)
            with contextlib.suppress(Exception):
                await self.pubsub.unsubscribe(topic)

    async def _read_loop(self):
        while True:
            try:
                msg = await self.pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception:  # connection trouble: redis-py reconnects and resubscribes
                log.exception("redis pub/sub read failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if msg is None:
                continue
            kind = msg["type"]
            if kind == "message":
                subs = self.topics.get(msg["channel"].decode())
                if subs:
                    text = msg["data"].decode()
                    for sub in subs:
                        sub.push(text)
            elif kind == "subscribe":
                queue = self.pending.get(msg["channel"].decode())
                if queue:
                    fut = queue.popleft()
                    if not fut.done():
                        fut.set_result(None)
                    if not queue:
                        del self.pending[msg["channel"].decode()]


hub = Hub(REDIS_URL)


@contextlib.asynccontextmanager
async def lifespan(_app):
    await hub.start()
    yield
    await hub.stop()


app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/health", response_class=PlainTextResponse)
async def health():
    return "ok"


async def _drain_incoming(ws):
    """Read (and ignore) client frames until the client goes away."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return


async def _pump(ws, sub):
    """Send queued messages in order; returns when the socket can't be written."""
    queue = sub.queue
    try:
        while True:
            text = await queue.get()
            await ws.send_text(text)
    except Exception:  # disconnected / closed: the endpoint cleans up
        return


@app.websocket("/ws/{topic}")
async def ws_topic(ws: WebSocket, topic: str):
    if not TOPIC_RE.fullmatch(topic):
        await ws.close(code=1008)
        return
    await ws.accept()
    sub = Subscriber()
    tasks = []
    try:
        await hub.add(topic, sub)
        await ws.send_text(json.dumps({"type": "subscribed", "topic": topic},
                                      separators=(",", ":")))
        tasks = [asyncio.create_task(_drain_incoming(ws)),
                 asyncio.create_task(_pump(ws, sub)),
                 asyncio.create_task(sub.overflowed.wait())]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if tasks[2] in done:  # too slow: drop it
            with contextlib.suppress(Exception):
                await ws.close(code=1013)
    except Exception:  # client vanished before/while being acked
        pass
    finally:
        for t in tasks:
            t.cancel()
        await hub.remove(topic, sub)
