//! `<sluice-status>`: the connection indicator bound to a SluiceClient (state, URL, RTT, counters, a reconnect button).
// Usage: import "/client/sluice-status.js"; document.querySelector("sluice-status").client = client;

const STYLE = `
:host{display:inline-flex;align-items:center;gap:.6em;font:12px/1.4 system-ui,sans-serif;
  padding:.3em .7em;border:1px solid #ccd;border-radius:1em;background:#fff;color:#223}
.dot{width:.8em;height:.8em;border-radius:50%;background:#999}
.connected .dot{background:#1a7f37}.connecting .dot,.reconnecting .dot{background:#d4a72c}
.failed .dot{background:#cf222e}.disconnected .dot{background:#999}
.box{display:contents}.url{color:#57606a;max-width:22em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
b{font-weight:600}button{font:inherit;padding:.1em .6em;border-radius:.8em;border:1px solid #ccd;background:#f6f8fa;cursor:pointer}`;

/** The status element. Set `.client` to a SluiceClient; it redraws on state changes and twice a second. */
export class SluiceStatus extends HTMLElement {
  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    root.innerHTML = `<style>${STYLE}</style><span class="box disconnected" part="box">
<span class="dot" part="dot"></span><b class="state" part="state">disconnected</b>
<span class="url" part="url"></span><span>RTT <b class="rtt">–</b></span>
<span>rx <b class="rx">0</b></span><span>reconnects <b class="rc">0</b></span>
<span>queued <b class="q">0</b></span><button part="button" type="button">Reconnect</button></span>`;
    /** @type {Record<string, HTMLElement>} */
    this.$ = {};
    for (const k of ["box", "state", "url", "rtt", "rx", "rc", "q"]) this.$[k] = root.querySelector("." + k);
    root.querySelector("button").addEventListener("click", () => this._client?.reconnect());
    this._client = null;
    this._off = null;
  }

  /** @param {import("./sluice.js").SluiceClient|null} c */
  set client(c) {
    this._off?.();
    this._client = c;
    this._off = c ? c.on("state", () => this.render()) : null;
    this.render();
  }
  get client() { return this._client; }

  connectedCallback() {
    this._timer = setInterval(() => this.render(), 500);
    this.render();
  }
  disconnectedCallback() { clearInterval(this._timer); }

  render() {
    const c = this._client;
    if (!c) return;
    const s = c.stats();
    this.$.box.className = "box " + s.state;
    this.setAttribute("state", s.state);
    this.$.state.textContent = s.state;
    this.$.url.textContent = s.url ?? "";
    this.$.url.title = s.url ?? "";
    this.$.rtt.textContent = s.rtt_ms === null ? "–" : `${s.rtt_ms} ms`;
    this.$.rx.textContent = String(s.messages_received);
    this.$.rc.textContent = String(s.reconnects);
    this.$.q.textContent = String(s.queued);
  }
}

if (!customElements.get("sluice-status")) customElements.define("sluice-status", SluiceStatus);
