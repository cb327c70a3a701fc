//! The browser client of Sluice (SPEC §7): reconnects, resumes and dedupes so handlers see each message once, in seq order.
// An ES module with no dependencies. It runs unchanged in browsers and in Node 20
// (`--experimental-websocket`), which is how web/test/ exercises it.

/**
 * @typedef {"connecting"|"connected"|"reconnecting"|"disconnected"|"failed"} State
 * @typedef {{type: string, topic?: string, seq?: number, epoch?: string, ts?: string,
 *   payload?: any, meta?: any, correlation_id?: string|number, code?: string,
 *   error?: string, details?: any}} Envelope
 * @typedef {string | (() => (string|Promise<string>))} TokenSource
 * @typedef {{token?: TokenSource, minDelayMs?: number, maxDelayMs?: number,
 *   maxAttempts?: number, queueSize?: number, pingIntervalMs?: number,
 *   refreshMarginMs?: number, WebSocket?: any, random?: () => number}} ClientOptions
 * @typedef {{batchSize?: number, compression?: boolean}} SubscribeOptions
 * @typedef {{state: State, url: string|null, reconnects: number, messages_received: number,
 *   messages_sent: number, rtt_ms: number|null, queued: number, dropped: number,
 *   uptime_ms: number}} Stats
 * @typedef {{recovered: boolean, epoch: string|null, head_seq: number, resumed: boolean}} RecoveredEvent
 */

/** Close codes after which reconnecting cannot help (README, close codes). */
const FATAL = new Set([1008, 1009, 4029]);
const DRAINING = 1012;
const SLOW_CONSUMER = 4008;
/** Heartbeats that may go missing before the connection is presumed dead. */
const MISSED_HEARTBEATS = 3;

/**
 * Reconnect delay with "full jitter": uniform in [0, min(max, min·2^attempt)].
 * Spreading clients over the whole window is what stops a node's restart from
 * turning into a synchronized storm of reconnects.
 * @param {number} attempt failed attempts so far (0 for the first retry)
 * @param {number} minDelayMs @param {number} maxDelayMs
 * @param {() => number} [random] returns [0, 1)
 * @returns {number}
 */
export function backoffDelay(attempt, minDelayMs, maxDelayMs, random = Math.random) {
  const cap = Math.min(maxDelayMs, minDelayMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * cap);
}

/**
 * The `exp` claim of a JWT in milliseconds, or null when the token is not a JWT.
 * @param {string} token @returns {number|null}
 */
export function jwtExpiryMs(token) {
  try {
    const part = token.split(".")[1];
    if (!part) return null;
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    return typeof claims.exp === "number" ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

/**
 * Does a wildcard pattern (`a.*`, `a.>`) match a concrete topic?
 * @param {string} pattern @param {string} topic @returns {boolean}
 */
export function topicMatches(pattern, topic) {
  const p = pattern.split("."), t = topic.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return t.length > i;
    if (i >= t.length || (p[i] !== "*" && p[i] !== t[i])) return false;
  }
  return p.length === t.length;
}

/** A tiny event emitter; `on` returns the function that removes the listener. */
class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._l = new Map();
  }
  /** @param {string} name @param {Function} fn @returns {() => void} */
  on(name, fn) {
    if (!this._l.has(name)) this._l.set(name, new Set());
    this._l.get(name).add(fn);
    return () => this._l.get(name)?.delete(fn);
  }
  /** @param {string} name @param {any} value */
  emit(name, value) {
    for (const fn of this._l.get(name) ?? []) {
      // A throwing handler must not break delivery to the others or the client.
      try { fn(value); } catch (e) { setTimeout(() => { throw e; }); }
    }
  }
}

/** One subscription: its handler and the position it resumes from. */
export class Subscription extends Emitter {
  /**
   * @param {SluiceClient} client @param {string} topic
   * @param {(msg: Envelope) => void} handler @param {SubscribeOptions} opts
   */
  constructor(client, topic, handler, opts) {
    super();
    this.client = client;
    this.topic = topic;
    this.handler = handler;
    this.opts = opts;
    /** Wildcards get no resume (SPEC §3); they dedupe per concrete topic. */
    this.wildcard = /(^|\.)[*>](\.|$)/.test(topic);
    /** Last delivered seq (0: none yet) and its epoch. @type {number} */
    this.seq = 0;
    /** @type {string|null} */
    this.epoch = null;
    /** Seqs skipped inside one epoch (a server-side loss; should stay 0). */
    this.gaps = 0;
    this.received = 0;
    /** @type {Map<string, {seq: number, epoch: string|null}>} per-topic positions of a wildcard */
    this._pos = new Map();
    this.active = true;
  }
  /** The entry of a subscribe frame: resume from the next seq when we have a position. */
  entry() {
    if (this.wildcard || !this.epoch || this.seq === 0) return this.topic;
    return { topic: this.topic, resume_from_seq: this.seq + 1, epoch: this.epoch };
  }
  /** @param {Envelope} env */
  _deliver(env) {
    const pos = this.wildcard ? this._posOf(env.topic) : this;
    if (env.epoch !== pos.epoch) {
      // A new epoch: the topic's history restarted (its seqs start over), or it
      // continues ours after a Redis failover (the next seq follows; the server
      // only sends a continuation to positions it continues).
      pos.epoch = env.epoch ?? null;
      pos.seq = 0;
    }
    if (env.seq <= pos.seq) return; // already delivered: a replay overlapping live
    if (pos.seq > 0 && env.seq > pos.seq + 1 && env.type !== "snapshot") this.gaps += env.seq - pos.seq - 1;
    pos.seq = env.seq;
    this.received++;
    try { this.handler(env); } catch (e) { setTimeout(() => { throw e; }); }
  }
  /** @param {string} topic */
  _posOf(topic) {
    let p = this._pos.get(topic);
    if (!p) this._pos.set(topic, (p = { seq: 0, epoch: null }));
    return p;
  }
  /** Stop receiving; the server is told when connected. */
  unsubscribe() {
    if (!this.active) return;
    this.active = false;
    this.client._unsubscribe(this);
  }
}

/** The reconnecting, resuming client. Events: `state`, `connected`, `close`, `error`, `frame`, `refreshed`. */
export class SluiceClient extends Emitter {
  /** @param {string|string[]} urls @param {ClientOptions} [options] */
  constructor(urls, options = {}) {
    super();
    const list = Array.isArray(urls) ? urls : [urls];
    if (list.length === 0 || list.some((u) => typeof u !== "string" || !/^wss?:\/\//.test(u)))
      throw new TypeError("SluiceClient: urls must be ws:// or wss:// strings");
    this.urls = list;
    this.options = {
      minDelayMs: 1000, maxDelayMs: 60000, maxAttempts: Infinity, queueSize: 1000,
      pingIntervalMs: 15000, refreshMarginMs: 30000, random: Math.random, ...options,
    };
    /** @type {State} */
    this.state = "disconnected";
    this._i = 0; // index of the URL in use
    this._attempts = 0; // consecutive connects that did not reach `connected`
    /** @type {Map<string, Subscription>} */
    this._subs = new Map();
    /** @type {string[]} frames waiting for a connection, oldest first */
    this._queue = [];
    this._ws = null;
    this._timers = {};
    this._chain = Promise.resolve(); // keeps frames in order behind a gunzip
    this._inflating = 0;
    this._corr = 0;
    this._c = { reconnects: 0, received: 0, sent: 0, dropped: 0, rtt: null, since: 0 };
    /** Set by `connected`: @type {{connection_id?: string, node_id?: string, heartbeat_interval_ms?: number}} */
    this.server = {};
  }

  /** @returns {string|null} the URL of the current or last connection */
  get url() { return this.state === "disconnected" ? null : this.urls[this._i]; }

  /** Open the connection (again). Idempotent while connecting or connected. */
  connect() {
    if (this.state === "connected" || this.state === "connecting" || this.state === "reconnecting") return;
    this._attempts = 0;
    this._open("connecting");
  }

  /** Close for good: no reconnect until `connect()`. */
  close() {
    this._stop();
    this._setState("disconnected");
  }

  /** Drop the connection and reconnect now, e.g. from a "reconnect" button. */
  reconnect() {
    this._stop();
    this._attempts = 0;
    this._c.reconnects++;
    this._open("reconnecting");
  }

  /**
   * Subscribe to a topic (or a wildcard pattern).
   * @param {string} topic @param {(msg: Envelope) => void} handler
   * @param {SubscribeOptions} [opts] @returns {Subscription}
   */
  subscribe(topic, handler, opts = {}) {
    if (typeof topic !== "string" || !/^[A-Za-z0-9_.:*>-]{1,200}$/.test(topic))
      throw new TypeError(`SluiceClient: invalid topic ${JSON.stringify(topic)}`);
    if (typeof handler !== "function") throw new TypeError("SluiceClient: handler must be a function");
    if (this._subs.has(topic)) throw new Error(`SluiceClient: already subscribed to ${topic}`);
    const sub = new Subscription(this, topic, handler, opts);
    this._subs.set(topic, sub);
    if (this.state === "connected") this._sendSubscribes([sub]);
    return sub;
  }

  /**
   * Send a client frame (e.g. `{type: "background_mode", enabled: true}`); queued while offline.
   * @param {object} frame
   */
  send(frame) {
    const text = JSON.stringify(frame);
    if (this.state === "connected") return this._write(text);
    this._queue.push(text);
    while (this._queue.length > this.options.queueSize) {
      this._queue.shift();
      this._c.dropped++;
    }
  }

  /** @returns {Stats} */
  stats() {
    const c = this._c;
    return {
      state: this.state, url: this.url, reconnects: c.reconnects,
      messages_received: c.received, messages_sent: c.sent, rtt_ms: c.rtt,
      queued: this._queue.length, dropped: c.dropped,
      uptime_ms: this.state === "connected" ? Date.now() - c.since : 0,
    };
  }

  /** @returns {Subscription[]} */
  subscriptions() { return [...this._subs.values()]; }

  /** @param {Subscription} sub */
  _unsubscribe(sub) {
    if (this._subs.get(sub.topic) !== sub) return;
    this._subs.delete(sub.topic);
    if (this.state === "connected") this._write(JSON.stringify({ type: "unsubscribe", topic: sub.topic }));
  }

  /** @param {State} s */
  _setState(s) {
    if (this.state === s) return;
    this.state = s;
    this.emit("state", s);
  }

  _clearTimers() {
    for (const k of Object.keys(this._timers)) {
      clearTimeout(this._timers[k]);
      clearInterval(this._timers[k]);
    }
    this._timers = {};
  }

  /** Detach and close the socket without reacting to its close event. */
  _stop() {
    this._clearTimers();
    const ws = this._ws;
    this._ws = null;
    this._gen = (this._gen ?? 0) + 1; // late events of the old socket are ignored
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(1000); } catch { /* already closing */ }
    }
  }

  /** @param {State} state */
  async _open(state) {
    this._setState(state);
    const gen = (this._gen = (this._gen ?? 0) + 1);
    this._attempts++;
    let url = this.urls[this._i];
    const t = this.options.token;
    try {
      // A function is asked for a fresh token on every connect: the last one may have expired.
      this._token = typeof t === "function" ? await t() : t;
    } catch (e) {
      this.emit("error", { code: "TOKEN_SOURCE", error: String(e) });
      this._token = undefined;
      if (gen === this._gen) this._scheduleReconnect(null);
      return;
    }
    if (gen !== this._gen) return; // closed or restarted while the token was fetched
    if (this._token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(this._token);
    const WS = this.options.WebSocket ?? globalThis.WebSocket;
    let ws;
    try {
      ws = new WS(url);
    } catch (e) {
      this.emit("error", { code: "CONNECT", error: String(e) });
      this._scheduleReconnect(null);
      return;
    }
    this._ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onmessage = (ev) => this._onData(ev.data, gen);
    ws.onclose = (ev) => {
      if (gen !== this._gen) return;
      this._onClose(ev.code, ev.reason);
    };
    // An error always means an abnormal end (1006). Browsers follow it with a close
    // event, Node 20's WebSocket does not when the connect fails: act on the error.
    ws.onerror = () => {
      if (gen !== this._gen) return;
      this._stop();
      this._onClose(1006, "connection failed");
    };
    this._watch();
  }

  /** Presume the connection dead after three heartbeat intervals of silence. */
  _watch() {
    clearTimeout(this._timers.watch);
    const hb = this.server.heartbeat_interval_ms;
    // Before `connected` arrives there is no interval yet: allow a handshake-sized wait.
    const limit = this.state === "connected" && hb ? hb * MISSED_HEARTBEATS : 30000;
    // Frames only stamp `_lastRx`; this one timer re-arms itself for the rest of the
    // window, so 2000 frames a second do not cost 4000 timer calls.
    const check = () => {
      if (!this._ws) return;
      const idle = Date.now() - this._lastRx;
      if (idle < limit) {
        this._timers.watch = setTimeout(check, limit - idle);
        return;
      }
      this._stop();
      this._onClose(4000, "heartbeat timeout");
    };
    this._lastRx = Date.now();
    this._timers.watch = setTimeout(check, limit);
  }

  /** @param {number} code @param {string} reason */
  _onClose(code, reason) {
    this._clearTimers();
    this._ws = null;
    this.emit("close", { code, reason });
    if (FATAL.has(code)) {
      this._setState("failed");
      return;
    }
    this._scheduleReconnect(code);
  }

  /** @param {number|null} code the close code, or null when no socket was opened */
  _scheduleReconnect(code) {
    const o = this.options;
    if (this._attempts >= o.maxAttempts) {
      this._setState("failed");
      return;
    }
    let delay;
    if (code === DRAINING) {
      // The node is going away on purpose: another node can take us now.
      this._i = (this._i + 1) % this.urls.length;
      delay = 0;
    } else if (code === SLOW_CONSUMER && this._attempts === 0) {
      // We fell behind; the node is fine. Resume at once from the last seq.
      delay = 0;
    } else {
      this._i = (this._i + 1) % this.urls.length;
      delay = backoffDelay(Math.max(0, this._attempts - 1), o.minDelayMs, o.maxDelayMs, o.random);
    }
    this._c.reconnects++;
    this._setState("reconnecting");
    this._timers.retry = setTimeout(() => this._open("reconnecting"), delay);
  }

  /** Frames are handled strictly in arrival order, even when one needs an async gunzip. */
  _onData(data, gen) {
    if (gen !== this._gen) return;
    this._lastRx = Date.now();
    if (typeof data === "string" && this._inflating === 0) return this._onText(data);
    this._inflating++;
    const text = typeof data === "string" ? Promise.resolve(data) : inflate(data);
    this._chain = this._chain
      .then(() => text)
      .then((t) => gen === this._gen && this._onText(t))
      .catch((e) => this.emit("error", { code: "DECODE", error: String(e) }))
      .finally(() => this._inflating--);
  }

  /** @param {string} text */
  _onText(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      this.emit("error", { code: "DECODE", error: "frame is not JSON" });
      return;
    }
    if (Array.isArray(frame)) {
      for (const f of frame) this._onFrame(f);
    } else if (frame && typeof frame === "object") {
      this._onFrame(frame);
    }
  }

  /** @param {Envelope} f */
  _onFrame(f) {
    this._c.received++;
    this.emit("frame", f);
    switch (f.type) {
      case "connected": return this._onConnected(f.payload ?? {});
      case "snapshot": case "delta": case "alert": return this._route(f);
      case "ack": return this._onAck(f);
      case "pong":
        if (typeof f.payload?.ts === "number") this._c.rtt = Date.now() - f.payload.ts;
        return;
      case "error":
        this.emit("error", f);
        if (f.details?.topic && f.code !== "RATE_LIMIT_EXCEEDED") this._subs.get(f.details.topic)?.emit("error", f);
        return;
    }
  }

  _onConnected(p) {
    this.server = p;
    this._attempts = 0;
    this._c.since = Date.now();
    this._setState("connected");
    this.emit("connected", p);
    this._watch();
    this._sendSubscribes([...this._subs.values()]);
    // Queued frames go after the resubscribes so they act on a complete session.
    const q = this._queue;
    this._queue = [];
    for (const text of q) this._write(text);
    this._ping();
    this._timers.ping = setInterval(() => this._ping(), this.options.pingIntervalMs);
    this._scheduleRefresh();
  }

  _ping() {
    this._write(JSON.stringify({ type: "ping", correlation_id: "rtt", ts: Date.now() }));
  }

  /** Ask the token function for a new token ahead of `exp` and send `refresh`. */
  _scheduleRefresh() {
    const t = this.options.token;
    const exp = typeof this._token === "string" ? jwtExpiryMs(this._token) : null;
    if (typeof t !== "function" || exp === null) return;
    // A token living less than twice the margin is refreshed at half its life, and
    // never sooner than a second, so a short-lived token cannot loop the refresh.
    const left = exp - Date.now();
    const wait = Math.max(1000, left - Math.min(this.options.refreshMarginMs, left / 2));
    this._timers.refresh = setTimeout(async () => {
      const gen = this._gen;
      try {
        const token = await t();
        if (gen !== this._gen || this.state !== "connected") return;
        this._token = token;
        this._write(JSON.stringify({ type: "refresh", token }));
        this.emit("refreshed", { expires_ms: jwtExpiryMs(token) });
        this._scheduleRefresh();
      } catch (e) {
        this.emit("error", { code: "TOKEN_SOURCE", error: String(e) });
      }
    }, Math.min(wait, 2 ** 31 - 1));
  }

  /** One subscribe frame per distinct option set; each entry carries its own resume position. @param {Subscription[]} subs */
  _sendSubscribes(subs) {
    const groups = new Map();
    for (const s of subs) {
      const key = `${s.opts.batchSize ?? ""}|${s.opts.compression ?? ""}`;
      if (!groups.has(key)) groups.set(key, { opts: s.opts, subs: [] });
      groups.get(key).subs.push(s);
    }
    for (const { opts, subs: list } of groups.values()) {
      // Stay well under the server's frame size limit with many subscriptions.
      for (let i = 0; i < list.length; i += 200) {
        /** @type {any} */
        const frame = { type: "subscribe", topics: list.slice(i, i + 200).map((s) => s.entry()) };
        if (opts.batchSize) frame.batch_size = opts.batchSize;
        if (opts.compression) frame.compression = true;
        this._write(JSON.stringify(frame));
      }
    }
  }

  /** @param {Envelope} f */
  _onAck(f) {
    const p = f.payload ?? {};
    const sub = f.topic !== undefined ? this._subs.get(f.topic) : undefined;
    if (!sub || p.subscribed !== true) return;
    const resumed = !sub.wildcard && sub.seq > 0 && !!sub.epoch;
    if (!p.recovered) {
      // Not a gap-free resume: the server starts over from its snapshot or head.
      sub.seq = 0;
      sub._pos.clear();
    }
    sub.epoch = p.epoch ?? null;
    sub.emit("recovered", { recovered: !!p.recovered, epoch: sub.epoch, head_seq: p.head_seq ?? 0, resumed });
  }

  /** @param {Envelope} env */
  _route(env) {
    const exact = this._subs.get(env.topic);
    if (exact) exact._deliver(env);
    for (const s of this._subs.values()) if (s.wildcard && topicMatches(s.topic, env.topic)) s._deliver(env);
  }

  /** @param {string} text */
  _write(text) {
    // Only reachable while connected; a socket closing underneath is resumed anyway.
    if (!this._ws || this._ws.readyState !== 1) return;
    this._ws.send(text);
    this._c.sent++;
  }
}

/**
 * Gunzip a binary frame with the platform's DecompressionStream.
 * @param {ArrayBuffer|Blob} data @returns {Promise<string>}
 */
export async function inflate(data) {
  const blob = data instanceof Blob ? data : new Blob([data]);
  return new Response(blob.stream().pipeThrough(new DecompressionStream("gzip"))).text();
}
