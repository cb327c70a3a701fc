"""Benchmark peer "socketio": python-socketio AsyncServer (ASGI, run by uvicorn
with N worker processes) whose rooms are shared through AsyncRedisManager.

Contract:
  * connect: ws://127.0.0.1:P/socket.io/?EIO=4&transport=websocket
  * client emits `subscribe` <topic>  -> enter_room(sid, topic), then the server
    emits `subscribed` <topic> back to that client only.
  * publications arrive as event `msg` with the JSON payload: 42["msg",{...}]
  * publish path 1 (used by the load generator): an external emitter does
    `PUBLISH socketio <json>` on Redis, json =
    {"method":"emit","event":"msg","data":[<payload>],"namespace":"/",
     "room":"<topic>","skip_sid":null,"callback":null,"host_id":"external"}
  * publish path 2 (manual checks): POST /publish/<topic> with a JSON body
    -> await sio.emit('msg', payload, room=topic)   (answers 200)
  * GET /health -> 200 "ok"

Config (env, because uvicorn --workers imports this module by name):
  PEER_REDIS_URL (default redis://127.0.0.1:6379), PEER_SIO_CHANNEL (default socketio)
"""
import json
import os
import re

import socketio

REDIS_URL = os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379")
CHANNEL = os.environ.get("PEER_SIO_CHANNEL", "socketio")
TOPIC_RE = re.compile(r"[A-Za-z0-9_.:-]{1,200}")

mgr = socketio.AsyncRedisManager(REDIS_URL, channel=CHANNEL)
sio = socketio.AsyncServer(
    async_mode="asgi",
    client_manager=mgr,
    transports=["websocket"],  # clients go straight to the websocket transport
    cors_allowed_origins="*",  # load-test clients may send any Origin
    logger=False,
    engineio_logger=False,
    # ping_interval / ping_timeout left at the defaults (25 s / 20 s)
)


@sio.event
async def subscribe(sid, topic):
    if not isinstance(topic, str) or not TOPIC_RE.fullmatch(topic):
        await sio.emit("error", "bad topic", to=sid)
        return
    await sio.enter_room(sid, topic)
    await sio.emit("subscribed", topic, to=sid)


async def _respond(send, status, body=b""):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def http_app(scope, receive, send):
    """Minimal ASGI app for the non-socket.io routes."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                # Start the Redis listener now (python-socketio would otherwise
                # start it lazily on the first connection), so this worker is
                # subscribed to the `socketio` channel before any client is
                # acked. peer.sh waits for PUBSUB NUMSUB socketio >= workers.
                if not sio.manager_initialized:
                    sio.manager_initialized = True
                    sio.manager.initialize()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    if path == "/health" and method == "GET":
        return await _respond(send, 200, b"ok")
    if path.startswith("/publish/") and method == "POST":
        topic = path[len("/publish/"):]
        if not TOPIC_RE.fullmatch(topic):
            return await _respond(send, 400, b"bad topic")
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        try:
            payload = json.loads(body)
        except ValueError:
            return await _respond(send, 400, b"bad json")
        await sio.emit("msg", payload, room=topic)
        return await _respond(send, 200)
    return await _respond(send, 404, b"not found")


app = socketio.ASGIApp(sio, other_asgi_app=http_app)
