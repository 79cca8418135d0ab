/*
 * lakewire-client.js: a small client for Lakewire's WebSocket protocol v1 (docs/protocol.md).
 * Served by every gateway at /client.js; no dependencies, no build step.
 *
 *   const client = new LakewireClient('ws://127.0.0.1:8080/ws', { onState: s => ... });
 *   const sub = client.subscribe(
 *     { topic: 'trades', filter: "value.price > 100.0", fields: ['value.symbol'], from: 'latest' },
 *     { onRecords: (records) => ..., onError: (err) => ..., onLagged: (n) => ... });
 *   sub.unsubscribe();  client.close();
 *
 * The connection reconnects by itself with exponential backoff; every subscription then resumes
 * from the next offset of each of its partitions (`from: {"offsets": ...}`), so records still in
 * Kafka are neither lost nor repeated across a gateway restart.
 */
(function (root) {
  'use strict';

  const DEFAULTS = { minDelayMs: 250, maxDelayMs: 10000, connectTimeoutMs: 10000 };

  function defaultUrl() {
    const loc = root.location;
    if (!loc) throw new Error('LakewireClient: a WebSocket URL is needed outside a browser');
    return (loc.protocol === 'https:' ? 'wss://' : 'ws://') + loc.host + '/ws';
  }

  class Subscription {
    constructor(client, id, request, callbacks) {
      this.client = client;
      this.id = id;
      this.request = request;
      this.callbacks = callbacks || {};
      /** Per partition, the next offset wanted (the resume position). */
      this.positions = {};
      this.partitions = null;
      this.state = 'pending'; // pending | active | failed | closed
    }

    /** The `from` of a (re)subscribe: the resume position once the server has said where it starts. */
    from() {
      if (this.partitions === null) return this.request.from || 'latest';
      return { offsets: Object.assign({}, this.positions) };
    }

    unsubscribe() {
      if (this.state === 'closed') return;
      this.state = 'closed';
      this.client._forget(this);
    }

    _subscribed(frame) {
      this.partitions = frame.partitions;
      const start = frame.start || {};
      for (const p of frame.partitions) {
        if (start[p] !== undefined) this.positions[p] = Math.max(this.positions[p] || 0, start[p]);
      }
      this.state = 'active';
      call(this.callbacks.onSubscribed, frame, this);
    }

    _records(records) {
      for (const r of records) {
        const next = r.offset + 1;
        if (!(this.positions[r.partition] >= next)) this.positions[r.partition] = next;
      }
      call(this.callbacks.onRecords, records, this);
    }
  }

  function call(fn, ...args) {
    if (typeof fn !== 'function') return;
    try { fn(...args); } catch (e) { setTimeout(() => { throw e; }); }
  }

  class LakewireClient {
    /**
     * @param {string} [url] the gateway's /ws URL (default: this page's host)
     * @param {object} [options] onState(state), minDelayMs, maxDelayMs, WebSocket (constructor),
     *   protocols (passed to WebSocket)
     */
    constructor(url, options) {
      this.url = url || defaultUrl();
      this.options = Object.assign({}, DEFAULTS, options || {});
      this.subs = new Map();
      this.nextId = 1;
      this.attempt = 0;
      this.closed = false;
      this.state = 'connecting';
      this.ws = null;
      this._connect();
    }

    /** Subscribes; returns a Subscription (`unsubscribe()`, `positions`, `state`). */
    subscribe(request, callbacks) {
      if (!request || !request.topic) throw new Error('subscribe: a topic is needed');
      const id = request.id || 's' + this.nextId++;
      if (this.subs.has(id)) throw new Error('subscribe: id ' + id + ' is in use');
      const sub = new Subscription(this, id, Object.assign({}, request, { id }), callbacks);
      this.subs.set(id, sub);
      this._sendSubscribe(sub);
      return sub;
    }

    /** Closes the connection for good. */
    close() {
      this.closed = true;
      clearTimeout(this.timer);
      if (this.ws) this.ws.close(1000, 'client closed');
      this._setState('closed');
    }

    _forget(sub) {
      this.subs.delete(sub.id);
      this._send({ op: 'unsubscribe', id: sub.id });
    }

    _sendSubscribe(sub) {
      const r = sub.request;
      const msg = { op: 'subscribe', id: sub.id, topic: r.topic, from: sub.from() };
      if (r.filter) msg.filter = r.filter;
      if (r.fields && r.fields.length) msg.fields = r.fields;
      this._send(msg);
    }

    _send(msg) {
      if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(msg));
    }

    _setState(state) {
      if (this.state === state) return;
      this.state = state;
      call(this.options.onState, state);
    }

    _connect() {
      const WS = this.options.WebSocket || root.WebSocket;
      let ws;
      try {
        ws = new WS(this.url, this.options.protocols);
      } catch (e) {
        this._retry();
        return;
      }
      this.ws = ws;
      const timeout = setTimeout(() => ws.close(), this.options.connectTimeoutMs);
      ws.onopen = () => {
        clearTimeout(timeout);
        this.attempt = 0;
        this._setState('live');
        for (const sub of this.subs.values()) {
          if (sub.state !== 'failed') this._sendSubscribe(sub);
        }
      };
      ws.onmessage = (ev) => this._frame(ev.data);
      ws.onclose = () => {
        clearTimeout(timeout);
        if (this.ws !== ws) return;
        this.ws = null;
        if (!this.closed) this._retry();
      };
      ws.onerror = () => {}; // onclose follows and reconnects
    }

    _retry() {
      this._setState('reconnecting');
      const o = this.options;
      const base = Math.min(o.maxDelayMs, o.minDelayMs * Math.pow(2, this.attempt++));
      const delay = base / 2 + Math.random() * base / 2;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => { if (!this.closed) this._connect(); }, delay);
    }

    _frame(data) {
      let f;
      try { f = JSON.parse(data); } catch (e) { return; }
      const sub = f.id !== undefined ? this.subs.get(f.id) : undefined;
      switch (f.type) {
        case 'records': if (sub) sub._records(f.records); break;
        case 'subscribed': if (sub) sub._subscribed(f); break;
        case 'lagged': if (sub) call(sub.callbacks.onLagged, f.dropped, sub); break;
        case 'gap': if (sub) call(sub.callbacks.onGap, f, sub); break;
        case 'error':
          if (sub) {
            if (sub.state === 'pending') { sub.state = 'failed'; this.subs.delete(sub.id); }
            call(sub.callbacks.onError, f, sub);
          } else {
            call(this.options.onError, f);
          }
          break;
        default: break;
      }
    }
  }

  root.LakewireClient = LakewireClient;
  if (typeof module === 'object' && module.exports) module.exports = { LakewireClient };
})(typeof globalThis !== 'undefined' ? globalThis : this);
