/*
 * The Lakewire dashboard: topics from /api/topics, subscriptions through lakewire-client.js, a
 * live table and a rate chart per subscription. Records are buffered as they arrive and drawn
 * once per animation frame, so thousands of records per second cost one DOM update per frame.
 *
 * URL parameters: ?topic=T&filter=CEL&fields=a,b&from=earliest subscribes on load; with none the
 * first topic is subscribed from `latest`; ?auto=0 subscribes to nothing.
 */
(function () {
  'use strict';

  const MAX_ROWS = 500;          // rows kept per table
  const MAX_COLUMNS = 8;         // value columns shown (the row's JSON has everything)
  const CHART_SECONDS = 120;     // the rate chart's window
  const $ = (sel, el) => (el || document).querySelector(sel);

  const ui = {
    state: $('#conn-state'), totalRate: $('#total-rate'), topicList: $('#topic-list'),
    form: $('#sub-form'), topic: $('#topic'), filter: $('#filter'), filterError: $('#filter-error'),
    fields: $('#fields'), fieldNames: $('#field-names'), fieldHelp: $('#field-help'),
    from: $('#from'), fromTime: $('#from-time'), fromTimeLabel: $('#from-time-label'),
    subs: $('#subs'), empty: $('#empty'), template: $('#sub-template'),
  };
  let topics = [];
  const panels = new Map();
  let frameRequested = false;

  const client = new LakewireClient(undefined, {
    onState: (s) => { ui.state.textContent = s; ui.state.dataset.state = s; },
  });
  window.lakewireDashboard = { client, panels };

  // ---- topics ----
  async function loadTopics() {
    try {
      const res = await fetch('/api/topics');
      if (!res.ok) throw new Error('HTTP ' + res.status);
      topics = await res.json();
    } catch (e) {
      ui.topicList.innerHTML = '';
      ui.topicList.append(el('li', { className: 'error' }, 'cannot load topics: ' + e.message));
      return;
    }
    ui.topicList.innerHTML = '';
    ui.topic.innerHTML = '';
    for (const t of topics) {
      const parts = t.partitions ? t.partitions.length + ' partition' + (t.partitions.length === 1 ? '' : 's') : 'not assigned yet';
      const meta = [t.format, parts, t.fields ? t.fields.length + ' fields' : null].filter(Boolean).join(' · ');
      const b = el('button', { type: 'button', title: 'Use ' + t.name + ' in the form' },
        el('span', {}, t.name), el('span', { className: 'meta' }, meta));
      b.addEventListener('click', () => { selectTopic(t.name); ui.filter.focus(); });
      ui.topicList.append(el('li', {}, b));
      ui.topic.append(el('option', { value: t.name }, t.name));
    }
    if (!topics.length) ui.topicList.append(el('li', { className: 'muted' }, 'no topics configured'));
    else selectTopic(topics[0].name);
  }

  function selectTopic(name) {
    ui.topic.value = name;
    const t = topics.find((x) => x.name === name);
    for (const b of ui.topicList.querySelectorAll('button')) {
      b.setAttribute('aria-current', String(b.firstChild.textContent === name));
    }
    ui.fieldNames.innerHTML = '';
    const fields = (t && t.fields) || [];
    for (const f of [{ path: 'key' }].concat(fields)) ui.fieldNames.append(el('option', { value: f.path }));
    ui.fieldHelp.textContent = fields.length
      ? 'Fields: ' + fields.map((f) => f.path.replace(/^value\./, '') + ' (' + f.type + ')').join(', ')
      : '';
  }
  ui.topic.addEventListener('change', () => selectTopic(ui.topic.value));
  ui.from.addEventListener('change', () => {
    ui.fromTimeLabel.hidden = ui.from.value !== 'time';
    if (ui.from.value === 'time' && !ui.fromTime.value) {
      const d = new Date(Date.now() - 5 * 60000 - new Date().getTimezoneOffset() * 60000);
      ui.fromTime.value = d.toISOString().slice(0, 19);
    }
  });
  ui.filter.addEventListener('input', () => showFilterError(''));

  function showFilterError(msg) {
    ui.filterError.textContent = msg;
    if (msg) ui.filter.setAttribute('aria-invalid', 'true');
    else ui.filter.removeAttribute('aria-invalid');
  }

  // ---- subscribing ----
  ui.form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    let from = ui.from.value;
    if (from === 'time') {
      const ms = new Date(ui.fromTime.value).getTime();
      if (!Number.isFinite(ms)) { showFilterError('pick a start time'); ui.fromTime.focus(); return; }
      from = { timestamp: ms };
    }
    subscribe({
      topic: ui.topic.value,
      filter: ui.filter.value.trim(),
      fields: ui.fields.value.split(',').map((s) => s.trim()).filter(Boolean),
      from,
    });
  });

  function subscribe(request) {
    if (!request.topic) return;
    showFilterError('');
    const panel = new Panel(request);
    panels.set(panel, panel);
    panel.sub = client.subscribe(request, {
      onSubscribed: (f) => panel.subscribed(f),
      onRecords: (records) => panel.add(records),
      onLagged: (n) => panel.lagged(n),
      onGap: (f) => panel.gap(f),
      onError: (f) => {
        if (panel.sub.state === 'failed') {
          panel.remove();
          showFilterError((f.code === 'bad_filter' ? '' : f.code + ': ') + f.message);
          ui.filter.focus();
        } else {
          panel.error(f.code + ': ' + f.message);
        }
      },
    });
    panel.el.dataset.subId = panel.sub.id;
  }

  // ---- one subscription's panel ----
  class Panel {
    constructor(request) {
      this.request = request;
      this.el = ui.template.content.firstElementChild.cloneNode(true);
      this.el.dataset.topic = request.topic;
      this.tbody = $('tbody', this.el);
      this.headRow = $('thead tr', this.el);
      this.canvas = $('canvas', this.el);
      this.lagBadge = $('.lag-badge', this.el);
      this.stats = $('.sub-stats', this.el);
      this.pending = [];
      this.paused = false;
      this.columns = null;
      this.rows = 0;
      this.total = 0;
      this.dropped = 0;
      this.counts = new Map(); // second -> records
      this.records = new WeakMap(); // row -> record
      const title = request.topic + (request.filter ? ' | ' + request.filter : '') +
        (request.fields && request.fields.length ? ' → ' + request.fields.join(', ') : '');
      $('.sub-title', this.el).textContent = title;
      const pause = $('.pause', this.el);
      pause.addEventListener('click', () => {
        this.paused = !this.paused;
        pause.textContent = this.paused ? 'Resume' : 'Pause';
        pause.setAttribute('aria-pressed', String(this.paused));
        schedule();
      });
      $('.clear', this.el).addEventListener('click', () => { this.tbody.innerHTML = ''; this.rows = 0; });
      $('.close', this.el).addEventListener('click', () => { this.sub.unsubscribe(); this.remove(); });
      this.tbody.addEventListener('click', (ev) => {
        const copy = ev.target.closest('button.copy');
        if (copy) { this.copy(copy.closest('tr').previousElementSibling, copy); return; }
        const row = ev.target.closest('tr.rec');
        if (row) this.toggle(row);
      });
      this.tbody.addEventListener('keydown', (ev) => this.key(ev));
      ui.subs.prepend(this.el);
      ui.empty.hidden = true;
      this.updateStats();
    }

    subscribed(f) {
      this.partitions = f.partitions;
      this.updateStats();
    }

    add(records) {
      const sec = Math.floor(Date.now() / 1000);
      this.counts.set(sec, (this.counts.get(sec) || 0) + records.length);
      this.total += records.length;
      for (const r of records) this.pending.push(r);
      // Only the newest MAX_ROWS can ever be shown: drop the rest early.
      if (this.pending.length > 2 * MAX_ROWS) this.pending.splice(0, this.pending.length - MAX_ROWS);
      schedule();
    }

    lagged(n) {
      this.dropped += n;
      this.lagBadge.hidden = false;
      this.lagBadge.textContent = 'lagged: ' + this.dropped.toLocaleString() + ' dropped';
      this.lagBadge.title = 'The gateway dropped records this page could not take in time (last at ' +
        new Date().toLocaleTimeString() + ')';
    }

    gap(f) {
      this.error('gap: partition ' + f.partition + ' resumed at offset ' + f.first_available +
        ' (offset ' + f.requested + ' is no longer in Kafka)');
    }

    error(msg) {
      const p = $('.sub-error', this.el);
      p.hidden = false;
      p.textContent = msg;
    }

    remove() {
      panels.delete(this);
      this.el.remove();
      ui.empty.hidden = panels.size > 0;
    }

    updateStats() {
      const parts = this.partitions ? this.partitions.length + ' partitions · ' : 'subscribing · ';
      this.stats.textContent = parts + this.total.toLocaleString() + ' records · ' +
        this.rate().toLocaleString() + '/s' + (this.paused ? ' · paused' : '');
    }

    /** Records per second over the last complete second. */
    rate() {
      return this.counts.get(Math.floor(Date.now() / 1000) - 1) || 0;
    }

    render() {
      if (this.paused || !this.pending.length) return;
      const batch = this.pending.length > MAX_ROWS ? this.pending.slice(-MAX_ROWS) : this.pending;
      this.pending = [];
      if (!this.columns) this.setColumns(batch[0]);
      const frag = document.createDocumentFragment();
      const fresh = batch.length < 40;
      for (let i = batch.length - 1; i >= 0; i--) frag.append(this.row(batch[i], fresh));
      this.tbody.prepend(frag);
      this.rows += batch.length;
      while (this.rows > MAX_ROWS && this.tbody.lastElementChild) {
        const last = this.tbody.lastElementChild;
        if (last.classList.contains('rec')) this.rows--;
        last.remove();
      }
    }

    setColumns(r) {
      const v = r.value;
      const valueKeys = v && typeof v === 'object' && !Array.isArray(v) ? Object.keys(v).slice(0, MAX_COLUMNS) : null;
      this.columns = valueKeys;
      // A projection without `key` sends none: no empty column for it.
      this.showKey = 'key' in r;
      const names = ['p', 'offset', 'time'].concat(this.showKey ? ['key'] : [], valueKeys || ['value']);
      for (const n of names) this.headRow.append(el('th', { scope: 'col' }, n));
    }

    row(r, fresh) {
      const tr = el('tr', { className: fresh ? 'rec fresh' : 'rec', tabIndex: 0 });
      tr.dataset.partition = r.partition;
      tr.dataset.offset = r.offset;
      tr.setAttribute('aria-expanded', 'false');
      tr.append(el('td', { className: 'num' }, String(r.partition)),
        el('td', { className: 'num' }, String(r.offset)),
        el('td', {}, r.timestamp == null ? '' : time(r.timestamp)));
      if (this.showKey) tr.append(el('td', {}, r.key == null ? '' : String(r.key)));
      if (this.columns) {
        const v = r.value || {};
        for (const k of this.columns) tr.append(el('td', {}, cell(v[k])));
      } else {
        tr.append(el('td', {}, cell(r.value)));
      }
      this.records.set(tr, r);
      return tr;
    }

    toggle(row) {
      const open = row.getAttribute('aria-expanded') === 'true';
      row.setAttribute('aria-expanded', String(!open));
      if (open) {
        if (row.nextElementSibling && row.nextElementSibling.classList.contains('detail')) row.nextElementSibling.remove();
        return;
      }
      const td = el('td', { colSpan: row.children.length },
        el('button', { type: 'button', className: 'copy' }, 'Copy JSON'),
        el('pre', {}, JSON.stringify(this.records.get(row), null, 2)));
      row.after(el('tr', { className: 'detail' }, td));
    }

    async copy(row, button) {
      const text = JSON.stringify(this.records.get(row));
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = 'Copied';
      } catch (e) {
        const pre = button.nextElementSibling;
        getSelection().selectAllChildren(pre);
        button.textContent = 'Selected: press Ctrl+C';
      }
      setTimeout(() => { button.textContent = 'Copy JSON'; }, 1500);
    }

    key(ev) {
      const row = ev.target.closest('tr.rec');
      if (!row) return;
      const step = (dir) => {
        let n = dir > 0 ? row.nextElementSibling : row.previousElementSibling;
        while (n && !n.classList.contains('rec')) n = dir > 0 ? n.nextElementSibling : n.previousElementSibling;
        if (n) n.focus();
      };
      if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); this.toggle(row); }
      else if (ev.key === 'ArrowDown') { ev.preventDefault(); step(1); }
      else if (ev.key === 'ArrowUp') { ev.preventDefault(); step(-1); }
      else if (ev.key === 'c') {
        if (row.getAttribute('aria-expanded') !== 'true') this.toggle(row);
        this.copy(row, $('button.copy', row.nextElementSibling));
      }
    }

    drawChart() {
      const c = this.canvas;
      const dpr = window.devicePixelRatio || 1;
      const w = c.clientWidth, h = c.clientHeight;
      if (!w) return;
      if (c.width !== Math.round(w * dpr)) { c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); }
      const g = c.getContext('2d');
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, w, h);
      const now = Math.floor(Date.now() / 1000);
      for (const s of this.counts.keys()) if (s < now - CHART_SECONDS) this.counts.delete(s);
      let max = 1;
      for (const v of this.counts.values()) max = Math.max(max, v);
      const top = 14, bottom = h - 2, bw = w / CHART_SECONDS;
      g.fillStyle = 'rgba(63,180,255,0.85)';
      for (let i = 0; i < CHART_SECONDS; i++) {
        const v = this.counts.get(now - CHART_SECONDS + i) || 0;
        if (!v) continue;
        const bh = (bottom - top) * v / max;
        g.fillRect(i * bw, bottom - bh, Math.max(1, bw - 0.5), bh);
      }
      g.fillStyle = '#8b98a5';
      g.font = '11px system-ui, sans-serif';
      g.fillText(this.rate().toLocaleString() + ' rec/s now · peak ' + max.toLocaleString() + '/s · last 2 min', 6, 11);
    }
  }

  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    Object.assign(e, props);
    for (const c of children) e.append(c);
    return e;
  }

  function cell(v) {
    if (v === null || v === undefined) return '';
    if (typeof v === 'object') return JSON.stringify(v);
    if (typeof v === 'number' && !Number.isInteger(v)) return String(Math.round(v * 10000) / 10000);
    return String(v);
  }

  function time(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
  }

  // ---- the frame loop: all DOM work happens here ----
  function schedule() {
    if (frameRequested) return;
    frameRequested = true;
    requestAnimationFrame(() => {
      frameRequested = false;
      for (const p of panels.values()) p.render();
    });
  }

  // Charts and counters once a second (also in frames).
  setInterval(() => requestAnimationFrame(() => {
    let total = 0;
    for (const p of panels.values()) { p.drawChart(); p.updateStats(); total += p.rate(); }
    ui.totalRate.textContent = total.toLocaleString() + ' rec/s';
  }), 1000);

  loadTopics().then(() => {
    const q = new URLSearchParams(location.search);
    if (q.get('auto') === '0' || !topics.length) return;
    const topic = q.get('topic') || topics[0].name;
    selectTopic(topic);
    let from = q.get('from') || 'latest';
    // The form shows what was subscribed, ready to be changed and sent again.
    ui.filter.value = q.get('filter') || '';
    ui.fields.value = q.get('fields') || '';
    if (from === 'latest' || from === 'earliest') ui.from.value = from;
    if (/^\d+$/.test(from)) from = { timestamp: Number(from) };
    subscribe({
      topic,
      filter: q.get('filter') || '',
      fields: (q.get('fields') || '').split(',').map((s) => s.trim()).filter(Boolean),
      from,
    });
  });
})();
