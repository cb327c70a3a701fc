//! Test fixtures for web/test: real `sluice` and `redis-server` processes on free loopback ports, a tiny fake WebSocket server, and waiting helpers.
import { spawn } from "node:child_process";
import { createHash, createHmac } from "node:crypto";
import { existsSync } from "node:fs";
import { createServer } from "node:http";
import net from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
/** The admin token of every node the harness starts (a node refuses one under 32 bytes). */
export const ADMIN_TOKEN = "web-test-admin-token-of-32-bytes-or-more";
export const SLUICE_BIN = process.env.SLUICE_BIN ?? join(ROOT, "target", "debug", "sluice");

/** A port that was free a moment ago on 127.0.0.1. */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Poll `check` until it returns a truthy value; fail with `what` after `ms`. */
export async function waitFor(check, what, ms = 20000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Resolve with the first event `name` of `emitter` that satisfies `pred`. */
export function nextEvent(emitter, name, pred = () => true, ms = 20000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { off(); reject(new Error(`timed out waiting for ${name}`)); }, ms);
    const off = emitter.on(name, (v) => {
      if (!pred(v)) return;
      clearTimeout(t);
      off();
      resolve(v);
    });
  });
}

/** A redis-server on a free port with persistence off; `stop()` kills it. */
export async function startRedis() {
  const port = await freePort();
  const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  const url = `redis://127.0.0.1:${port}`;
  await waitFor(() => tcpOpen(port), `redis-server on ${port}`);
  return { url, port, stop: () => proc.kill("SIGKILL") };
}

function tcpOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.on("connect", () => { s.destroy(); resolve(true); });
    s.on("error", () => resolve(false));
  });
}

/**
 * A `sluice` process on a free port. `env` adds settings (SLUICE_*, REDIS_URL).
 * @returns {Promise<{port: number, http: string, ws: string, id: string, proc: any,
 *   kill: (sig?: string) => void, exited: Promise<number|null>, publish: (topic: string, payload: any) => Promise<any>}>}
 */
export async function startNode(env = {}, id = "n" + Math.random().toString(36).slice(2, 8)) {
  if (!existsSync(SLUICE_BIN)) throw new Error(`${SLUICE_BIN} is missing: run cargo build -p sluice-node first`);
  const port = await freePort();
  const proc = spawn(SLUICE_BIN, [], {
    env: { PATH: process.env.PATH, SLUICE_BIND: `127.0.0.1:${port}`, SLUICE_NODE_ID: id, SLUICE_ADMIN_TOKEN: ADMIN_TOKEN, RUST_LOG: "warn", ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  proc.stderr.on("data", (d) => { stderr += d; });
  const exited = new Promise((r) => proc.on("exit", (code) => r(code)));
  const http = `http://127.0.0.1:${port}`;
  await waitFor(async () => {
    if (proc.exitCode !== null) throw new Error(`sluice exited with ${proc.exitCode}: ${stderr}`);
    try { return (await fetch(`${http}/health`)).ok; } catch { return false; }
  }, `sluice ${id} to answer /health`);
  return {
    port, http, ws: `ws://127.0.0.1:${port}/ws`, id, proc, exited,
    kill: (sig = "SIGKILL") => { if (proc.exitCode === null) proc.kill(sig); },
    publish: async (topic, payload) => {
      const r = await fetch(`${http}/publish`, {
        method: "POST", headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
        body: JSON.stringify({ topic, payload }),
      });
      if (!r.ok) throw new Error(`publish: HTTP ${r.status} ${await r.text()}`);
      return r.json();
    },
  };
}

/** An HS256 JWT, enough for a node started with SLUICE_JWT_SECRET. */
export function hs256(secret, claims) {
  const b = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = b({ alg: "HS256", typ: "JWT" }) + "." + b(claims);
  return head + "." + createHmac("sha256", secret).update(head).digest("base64url");
}

/**
 * A minimal WebSocket server (RFC 6455 over node:http) for behaviour a real node
 * cannot produce on demand. `onConnection(conn, req)` scripts each connection;
 * `conn.frames` holds the parsed client frames, `conn.next()` waits for one.
 */
export async function fakeServer(onConnection) {
  const conns = [];
  const server = createServer((_, res) => res.writeHead(404).end());
  server.on("upgrade", (req, socket) => {
    const key = req.headers["sec-websocket-key"];
    const accept = createHash("sha1").update(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    const conn = new FakeConn(socket, req);
    conns.push(conn);
    onConnection(conn, req);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const port = server.address().port;
  return {
    url: `ws://127.0.0.1:${port}/ws`, conns,
    stop: () => { for (const c of conns) c.socket.destroy(); server.close(); },
  };
}

class FakeConn {
  constructor(socket, req) {
    this.socket = socket;
    this.req = req;
    this.frames = [];
    this.waiters = [];
    this.buf = Buffer.alloc(0);
    socket.on("data", (d) => this._read(d));
    socket.on("error", () => {});
  }
  _read(d) {
    this.buf = Buffer.concat([this.buf, d]);
    for (;;) {
      if (this.buf.length < 2) return;
      const op = this.buf[0] & 0x0f;
      let len = this.buf[1] & 0x7f, off = 2;
      if (len === 126) { if (this.buf.length < 4) return; len = this.buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (this.buf.length < 10) return; len = Number(this.buf.readBigUInt64BE(2)); off = 10; }
      if (this.buf.length < off + 4 + len) return;
      const mask = this.buf.subarray(off, off + 4);
      const data = Buffer.from(this.buf.subarray(off + 4, off + 4 + len));
      for (let i = 0; i < data.length; i++) data[i] ^= mask[i % 4];
      this.buf = this.buf.subarray(off + 4 + len);
      if (op === 1) {
        const f = JSON.parse(data.toString());
        this.frames.push(f);
        for (const w of this.waiters.splice(0)) w();
      } else if (op === 8) {
        this.socket.end();
      }
    }
  }
  /** Wait for the first client frame of `type` not yet taken. */
  async next(type, ms = 10000) {
    this.taken ??= new Set();
    const end = Date.now() + ms;
    for (;;) {
      const i = this.frames.findIndex((f, j) => f.type === type && !this.taken.has(j));
      if (i >= 0) { this.taken.add(i); return this.frames[i]; }
      if (Date.now() > end) throw new Error(`fake server: no ${type} frame within ${ms} ms`);
      await new Promise((r) => { this.waiters.push(r); setTimeout(r, 50); });
    }
  }
  _frame(op, payload) {
    const n = payload.length;
    const head = n < 126 ? Buffer.from([0x80 | op, n])
      : n < 65536 ? Buffer.from([0x80 | op, 126, n >> 8, n & 255])
      : (() => { const h = Buffer.alloc(10); h[0] = 0x80 | op; h[1] = 127; h.writeBigUInt64BE(BigInt(n), 2); return h; })();
    this.socket.write(Buffer.concat([head, payload]));
  }
  send(obj) { this._frame(1, Buffer.from(typeof obj === "string" ? obj : JSON.stringify(obj))); }
  sendBinary(buf) { this._frame(2, buf); }
  close(code, reason = "") {
    const p = Buffer.alloc(2 + Buffer.byteLength(reason));
    p.writeUInt16BE(code, 0);
    p.write(reason, 2);
    this._frame(8, p);
    setTimeout(() => this.socket.end(), 50);
  }
  connected(hbMs = 30000) {
    this.send({ type: "connected", payload: { connection_id: "c", node_id: "fake", heartbeat_interval_ms: hbMs, protocol: 1 } });
  }
}
