// aifactory operator console: a single page over the JSON API (/api/v1).
//
// Rules this file keeps:
//  * Text from the API is untrusted: it only ever reaches the page through textContent or
//    setAttribute (see h()); nothing here assigns innerHTML.
//  * A view builds its skeleton once per route; each refresh only updates it, so filter
//    inputs, half-typed reasons and plot zoom survive polling (Plotly.react, keyed lists).
//  * Every plot container carries data-points="N": the number of points it drew.
'use strict';

(() => {
  const API = '/api/v1';
  const TOKEN_KEY = 'aifactory.console.token';
  const QUERY = new URLSearchParams(location.search);
  // ?refresh=ms lets tests poll fast; 0 turns polling off.
  const REFRESH_MS = parseRefresh(QUERY.get('refresh'));
  const TRIAL_CYCLES_SCANNED = 5; // how far back the line page looks for a cycle with trials

  function parseRefresh(raw) {
    if (raw === null || raw === '') return 5000;
    const n = Number(raw);
    if (!Number.isFinite(n) || n < 0) return 5000;
    return n === 0 ? 0 : Math.max(100, n);
  }

  // ---------------------------------------------------------------- DOM helpers

  // h('div', {class: 'x', testid: 'y', onclick: fn}, 'text', child, [more]) builds an
  // element. Strings become text nodes, so API data can never become markup.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'testid') el.setAttribute('data-testid', v);
      else if (k === 'class') el.className = v;
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'value') el.value = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  // Replace an element's children (only with nodes built by h() or plain text).
  function fill(el, ...children) {
    el.replaceChildren();
    append(el, children);
    return el;
  }

  // Skip DOM work when what would be drawn has not changed since the last refresh.
  function changed(el, data) {
    const sig = JSON.stringify(data);
    if (el._sig === sig) return false;
    el._sig = sig;
    return true;
  }

  // Keyed list: keeps the element of every item whose key survives, so inputs inside a
  // row (a reason being typed) are not thrown away when the list refreshes.
  function syncList(container, items, keyOf, create, update) {
    const old = new Map();
    for (const el of Array.from(container.children)) old.set(el.dataset.key, el);
    let prev = null;
    for (const item of items) {
      const key = String(keyOf(item));
      let el = old.get(key);
      if (el) old.delete(key);
      else {
        el = create(item);
        el.dataset.key = key;
      }
      update(el, item);
      const want = prev ? prev.nextSibling : container.firstChild;
      if (el !== want) container.insertBefore(el, want);
      prev = el;
    }
    for (const el of old.values()) el.remove();
  }

  // A table body redrawn from rows of cells, only when the rows changed.
  function setRows(tbody, rows, cellsOf, emptyText, columns) {
    if (!changed(tbody, rows)) return;
    if (!rows.length) {
      fill(tbody, h('tr', { class: 'empty' }, h('td', { colspan: columns }, emptyText)));
      return;
    }
    fill(tbody, rows.map((r) => h('tr', {}, cellsOf(r).map((c) => (c instanceof Node && c.tagName === 'TD' ? c : h('td', {}, c))))));
  }

  function table(testid, headers) {
    const tbody = h('tbody');
    const el = h('table', { class: 'grid', testid }, h('thead', {}, h('tr', {}, headers.map((t) => h('th', {}, t)))), tbody);
    return { el, tbody, columns: headers.length };
  }

  function section(title, testid, ...body) {
    return h('section', { class: 'panel', testid }, h('h2', {}, title), body);
  }

  // ---------------------------------------------------------------- formatting

  const DASH = '–';
  const isNum = (x) => typeof x === 'number' && Number.isFinite(x);
  const nf = (digits) => new Intl.NumberFormat('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
  const NF = [0, 1, 2, 3].map(nf);

  function fmtInt(x) {
    return isNum(x) ? NF[0].format(Math.round(x)) : DASH;
  }

  function fmtNum(x, digits = 2) {
    return isNum(x) ? NF[Math.min(digits, 3)].format(x) : DASH;
  }

  // bits per byte: always 4 decimals so versions compare digit by digit
  function fmtBpb(x) {
    return isNum(x) ? x.toFixed(4) : DASH;
  }

  // Three significant figures with an SI prefix: 4,212 J, 12.3 kJ, 1.25 MJ.
  function fmtJoules(j) {
    if (!isNum(j)) return DASH;
    const a = Math.abs(j);
    if (a < 1e4) return `${fmtInt(j)} J`;
    const [scale, unit] = a >= 1e9 ? [1e9, 'GJ'] : a >= 1e6 ? [1e6, 'MJ'] : [1e3, 'kJ'];
    const v = a / scale;
    return `${fmtNum(j / scale, v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${unit}`;
  }

  // Plotly renders a little HTML (<br>, <b>) in hover text and labels: API strings going
  // there are escaped so they stay text.
  function esc(s) {
    return String(s === null || s === undefined ? '' : s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  }

  function fmtTpj(x) {
    if (!isNum(x)) return DASH;
    return `${x >= 1000 ? fmtInt(x) : fmtNum(x, x >= 10 ? 1 : 2)} tok/J`;
  }

  function fmtPct(x) {
    return isNum(x) ? `${fmtNum(x, Number.isInteger(x) ? 0 : 1)}%` : DASH;
  }

  // The API's times are ISO strings (…Z or +00:00); epoch seconds are accepted too.
  function toDate(t) {
    if (t === null || t === undefined || t === '') return null;
    const d = typeof t === 'number' ? new Date(t * 1000) : new Date(t);
    return Number.isNaN(d.getTime()) ? null : d;
  }

  // UTC, like the audit log and the CLI, so what the console shows matches them.
  function fmtTime(t) {
    const d = toDate(t);
    return d ? d.toISOString().slice(0, 19).replace('T', ' ') : DASH;
  }

  // Plotly reads 'YYYY-MM-DD HH:MM:SS' (it does not understand zone suffixes).
  function plotTime(t) {
    const d = toDate(t);
    return d ? d.toISOString().slice(0, 23).replace('T', ' ') : null;
  }

  function fmtRel(t, now = Date.now()) {
    const d = toDate(t);
    if (!d) return '';
    const s = Math.round((d.getTime() - now) / 1000);
    const a = Math.abs(s);
    const txt = a < 60 ? `${a} s` : a < 3600 ? `${Math.round(a / 60)} min` : a < 172800 ? `${fmtNum(a / 3600, a < 36000 ? 1 : 0)} h` : `${Math.round(a / 86400)} d`;
    return s >= 0 ? `in ${txt}` : `${txt} ago`;
  }

  function when(t) {
    const d = toDate(t);
    if (!d) return h('span', { class: 'muted' }, DASH);
    return h('span', { title: fmtRel(t) }, fmtTime(t));
  }

  // Energy figures are shown with how they were obtained ("estimated", "measured", …).
  function energyTag(label) {
    if (!label || label === '-') return null;
    const kind = /measured/.test(label) ? (/estimated/.test(label) ? 'mixed' : 'measured') : 'estimated';
    return h('span', { class: `etag etag-${kind}`, title: `energy ${label}` }, label);
  }

  function joulesWithTag(j, label) {
    return h('span', { class: 'nowrap', title: isNum(j) ? `${fmtInt(j)} J` : null }, fmtJoules(j), ' ', energyTag(label));
  }

  function badge(text, kind, testid) {
    return h('span', { class: `badge badge-${kind}`, testid }, text);
  }

  const lineHref = (name) => `#/line/${encodeURIComponent(name)}`;

  // ---------------------------------------------------------------- API and auth

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  const auth = {
    token: () => sessionStorage.getItem(TOKEN_KEY),
    save: (t) => sessionStorage.setItem(TOKEN_KEY, t),
    forget: () => sessionStorage.removeItem(TOKEN_KEY),
  };

  // One request. GETs carry the token when there is one (needed off loopback); a 401
  // forgets the token and asks for it again, whatever the request was.
  async function api(path, { method = 'GET', body, token = auth.token(), quiet401 = false } = {}) {
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
    } catch (e) {
      throw new ApiError(0, 'network', `cannot reach the console API (${e.message})`);
    }
    let data = null;
    try {
      data = await res.json();
    } catch (e) {
      data = null;
    }
    if (res.ok) return data;
    const err = (data && data.error) || {};
    const message = err.message || `${method} ${path}: HTTP ${res.status}`;
    if (res.status === 401 && !quiet401) signedOut(`${message} — sign in again`);
    throw new ApiError(res.status, err.code || `http_${res.status}`, message);
  }

  const authEls = () => ({
    signedIn: document.getElementById('auth-in'),
    form: document.getElementById('auth-form'),
    input: document.getElementById('token-input'),
    who: document.getElementById('whoami'),
    msg: document.getElementById('auth-msg'),
  });

  function showSignedIn(name) {
    const e = authEls();
    e.who.textContent = name;
    e.signedIn.hidden = false;
    e.form.hidden = true;
    e.msg.textContent = '';
    e.form.classList.remove('attention');
  }

  // Forget the token and ask for one; `why` says what needs it.
  function signedOut(why) {
    auth.forget();
    const e = authEls();
    e.signedIn.hidden = true;
    e.form.hidden = false;
    e.msg.textContent = why || '';
    if (why) {
      e.form.classList.add('attention');
      // focus the token box unless the user is typing elsewhere (polls may repeat a 401)
      const a = document.activeElement;
      if (!a || a === document.body || a.tagName === 'BUTTON') e.input.focus();
    }
  }

  async function signIn(token) {
    const e = authEls();
    e.msg.textContent = 'checking…';
    try {
      const me = await api('/whoami', { token, quiet401: true });
      auth.save(token);
      e.input.value = '';
      showSignedIn(me && me.name ? me.name : '?');
      flash(`signed in as ${me && me.name}`);
    } catch (err) {
      e.msg.textContent = err.status === 401 ? 'token rejected' : err.message;
      e.form.classList.add('attention');
    }
  }

  // The stored token is checked once per page load (it may have been revoked).
  async function checkStoredToken() {
    const token = auth.token();
    if (!token) return signedOut('');
    try {
      const me = await api('/whoami', { token, quiet401: true });
      showSignedIn(me && me.name ? me.name : '?');
    } catch (err) {
      if (err.status === 401) signedOut('stored token rejected — sign in again');
      else showSignedIn('(unverified)');
    }
  }

  function initAuth() {
    const e = authEls();
    e.form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const t = e.input.value.trim();
      if (t) signIn(t);
      else e.msg.textContent = 'enter a token';
    });
    document.getElementById('signout').addEventListener('click', () => {
      signedOut('');
      flash('signed out');
    });
    checkStoredToken();
  }

  // ---------------------------------------------------------------- messages

  let flashTimer = null;

  function flash(text, isError = false) {
    const el = document.getElementById('banner');
    el.textContent = text;
    el.className = `banner ${isError ? 'banner-error' : 'banner-ok'}`;
    el.hidden = false;
    el.dataset.kind = isError ? 'error' : 'ok';
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => (el.hidden = true), isError ? 20000 : 6000);
  }

  // A failed refresh shows once and clears itself on the next good one.
  let refreshFailed = false;
  function refreshError(err) {
    refreshFailed = true;
    flash(`refresh failed: ${err.message}`, true);
  }
  function refreshOk() {
    if (!refreshFailed) return;
    refreshFailed = false;
    document.getElementById('banner').hidden = true;
  }

  // ---------------------------------------------------------------- actions

  // A button with the reason it will be audited with (an input beside it, prefilled).
  // `run(reason)` does the POST; its answer's message, or the API's error, is shown.
  function actionControl({ testid, label, reason, run, danger = false, extra = null }) {
    const input = h('input', { type: 'text', class: 'reason', value: reason, testid: `${testid}-reason`, 'aria-label': `reason to ${label.toLowerCase()}`, title: 'reason (goes into the audit log)' });
    const button = h('button', { type: 'button', class: danger ? 'danger' : 'primary', testid }, label);
    const msg = h('span', { class: 'action-msg', testid: `${testid}-msg`, role: 'status' });
    button.addEventListener('click', async () => {
      const why = input.value.trim();
      msg.className = 'action-msg';
      if (!why) {
        msg.textContent = 'a reason is required';
        msg.classList.add('error');
        input.focus();
        return;
      }
      if (!auth.token()) {
        signedOut(`sign in to ${label.toLowerCase()}`);
        msg.textContent = 'sign in first';
        msg.classList.add('error');
        return;
      }
      button.disabled = true;
      msg.textContent = '…';
      try {
        const res = await run(why);
        const text = (res && res.message) || `${label.toLowerCase()}: done`;
        msg.textContent = text;
        flash(text);
      } catch (err) {
        msg.textContent = err.message;
        msg.classList.add('error');
        flash(`${label} failed: ${err.message}`, true);
      } finally {
        button.disabled = false;
        refreshNow();
      }
    });
    return h('span', { class: 'action' }, extra, input, button, msg);
  }

  const post = (path, body) => api(path, { method: 'POST', body });

  // ---------------------------------------------------------------- plots

  const COLORS = { blue: '#1f5fa8', green: '#1e8a4c', red: '#c0392b', amber: '#b7791f', grey: '#8a929c', purple: '#6b46c1', teal: '#138496' };
  const PLOT_CONFIG = { displaylogo: false, displayModeBar: 'hover', responsive: true, modeBarButtonsToRemove: ['lasso2d', 'select2d', 'sendDataToCloud'] };

  function baseLayout(extra) {
    return Object.assign(
      {
        margin: { l: 56, r: 16, t: 8, b: 40 },
        font: { family: 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif', size: 11, color: '#1d2430' },
        paper_bgcolor: '#ffffff',
        plot_bgcolor: '#ffffff',
        showlegend: true,
        legend: { orientation: 'h', y: -0.2, x: 0 },
        hovermode: 'closest',
        uirevision: 'keep', // keeps the user's zoom across Plotly.react calls
        height: 280,
      },
      extra,
    );
  }

  function plotBox(testid, title, note) {
    const div = h('div', { class: 'plot', testid, 'data-points': '0' });
    const box = h('figure', { class: 'plotbox' }, h('figcaption', {}, title, note ? h('span', { class: 'muted small' }, ` ${note}`) : null), div);
    return { box, div };
  }

  // Draw with Plotly.react (updates in place), record how many points were drawn, and do
  // nothing when neither data nor layout changed.
  function drawPlot(div, traces, layout) {
    const points = traces.reduce((n, t) => n + ((t.x || t.y || []).length || 0), 0);
    div.setAttribute('data-points', String(points));
    const full = baseLayout(layout);
    if (!points) {
      full.annotations = [{ text: 'no data yet', showarrow: false, xref: 'paper', yref: 'paper', x: 0.5, y: 0.5, font: { color: COLORS.grey, size: 13 } }];
      full.xaxis = Object.assign({}, full.xaxis, { visible: false });
      full.yaxis = Object.assign({}, full.yaxis, { visible: false });
    }
    if (!changed(div, [traces, full])) return;
    if (!window.Plotly) {
      div.textContent = 'plotly.min.js did not load';
      return;
    }
    window.Plotly.react(div, traces, full, PLOT_CONFIG);
  }

  // ---------------------------------------------------------------- shared pieces

  // The state of a line in words: running / paused by X / awaiting approval / canary …
  function lineStates(line) {
    const out = [];
    const d = line.daemon;
    if (line.paused) out.push({ text: `paused by ${line.paused.by}`, kind: 'warn', title: `${line.paused.reason || ''} (${fmtTime(line.paused.at)})` });
    if ((line.pending_approvals || []).length) {
      const vs = line.pending_approvals.map((a) => `v${a.version}`).join(', ');
      out.push({ text: `awaiting approval (${vs})`, kind: 'warn' });
    }
    if (line.rollout) {
      const r = line.rollout;
      out.push({
        text: `canary v${r.challenger} step ${r.step} at ${fmtPct(r.weight_pct)}${r.status === 'paused' ? ' — paused' : ''}`,
        kind: r.status === 'paused' ? 'warn' : 'info',
        title: r.reason || '',
      });
    }
    if (line.last_cycle && line.last_cycle.status === 'running') out.push({ text: `cycle ${line.last_cycle.id} running`, kind: 'info' });
    if (!d) out.push({ text: 'no daemon', kind: 'muted' });
    else if (!d.running) out.push({ text: 'daemon stopped', kind: 'bad', title: `last heartbeat ${fmtTime(d.heartbeat_at)}` });
    else if (!line.paused) out.push({ text: 'running', kind: 'ok' });
    return out;
  }

  function stateBadges(line, testid) {
    return h('span', { class: 'states', testid }, lineStates(line).map((s) => h('span', { class: `badge badge-${s.kind}`, title: s.title || null }, s.text)));
  }

  function championText(c) {
    return c ? `v${c.version} · ${fmtBpb(c.valid_bpb)} bits/byte` : 'no champion';
  }

  // A budget: the figure always, a bar only when there is a budget to measure against.
  function budgetRow(label, used, budget, fmt, testid, tag) {
    const pct = isNum(budget) && budget > 0 && isNum(used) ? (100 * used) / budget : null;
    return h(
      'div',
      { class: 'budget', testid },
      h('span', { class: 'budget-label' }, label),
      pct === null
        ? h('span', { class: 'budget-nobar muted' }, 'no budget')
        : h('meter', { min: 0, max: budget, low: budget * 0.75, high: budget * 0.9, optimum: 0, value: Math.min(used, budget), title: `${fmtNum(pct, 1)}% of today's budget` }),
      h('span', { class: 'budget-figure' }, fmt(used), pct === null ? null : ` / ${fmt(budget)} (${fmtNum(pct, 0)}%)`, tag ? ' ' : null, tag),
    );
  }

  function budgets(line) {
    const t = line.today || {};
    const energyBudget = isNum(t.energy_kwh_budget) ? t.energy_kwh_budget * 3.6e6 : null;
    const tpj = isNum(t.tokens) && isNum(t.joules) && t.joules > 0 ? t.tokens / t.joules : null;
    return h(
      'div',
      { class: 'budgets' },
      budgetRow('tokens today', t.tokens, t.training_tokens_budget, fmtInt, `budget-tokens-${line.policy}`),
      budgetRow('energy today', t.joules, energyBudget, fmtJoules, `budget-energy-${line.policy}`, energyTag(t.energy_method)),
      h('div', { class: 'budget' }, h('span', { class: 'budget-label' }, 'efficiency'), h('span', { class: 'budget-figure strong', testid: `tpj-${line.policy}` }, fmtTpj(tpj), ' ', tpj === null ? null : energyTag(t.energy_method))),
    );
  }

  // Pending approvals with Approve / Reject (a reason each). Rows are keyed by id so a
  // reason being typed survives refreshes; `describe` may add context per approval.
  function approvalsList({ showLine = true, describe = null } = {}) {
    const list = h('div', { class: 'approvals', testid: 'approvals-list' });
    const empty = h('p', { class: 'muted', testid: 'approvals-empty' }, 'no approvals pending');
    const el = h('div', {}, list, empty);
    function create(a) {
      const info = h('span', { class: 'approval-info' });
      const row = h(
        'div',
        { class: 'approval', testid: `approval-${a.id}` },
        info,
        h(
          'span',
          { class: 'approval-actions' },
          actionControl({ testid: `approve-${a.id}`, label: 'Approve', reason: 'approved in the console', run: (why) => post(`/approvals/${encodeURIComponent(a.id)}/approve`, { reason: why }) }),
          actionControl({ testid: `reject-${a.id}`, label: 'Reject', reason: 'rejected in the console', danger: true, run: (why) => post(`/approvals/${encodeURIComponent(a.id)}/reject`, { reason: why }) }),
        ),
      );
      row._info = info;
      return row;
    }
    function update(row, a) {
      if (!changed(row._info, [a, describe ? describe(a) : null])) return;
      fill(
        row._info,
        showLine ? h('a', { href: lineHref(a.line), class: 'strong' }, a.line) : null,
        showLine ? ' · ' : null,
        h('b', {}, `v${a.version}`),
        ` from cycle ${a.cycle_id} · requested `,
        when(a.requested_at),
        describe ? h('span', { class: 'muted' }, ' · ', describe(a)) : null,
      );
    }
    return {
      el,
      update(approvals) {
        syncList(list, approvals, (a) => a.id, create, update);
        empty.hidden = approvals.length > 0;
      },
    };
  }

  // ---------------------------------------------------------------- views

  // Each view: build() returns its skeleton once; refresh(shared) fetches and updates it.
  // `shared` = {factory, approvals} fetched once per tick for the header and all views.

  function overviewView() {
    const approvals = approvalsList();
    const cards = h('div', { class: 'cards', testid: 'line-cards' });
    const noLines = h('p', { class: 'muted' }, 'no production lines');
    const members = table('members-table', ['member', 'host', 'role', 'term', 'heartbeat', 'lease', 'serving', 'fenced writes']);
    const membersBox = section('Members (daemons sharing this store)', 'members', members.el);
    const meta = h('p', { class: 'muted small', testid: 'factory-generated' });
    const approvalsBox = section('Pending approvals', 'approvals', approvals.el);
    const el = h('div', {}, h('div', { class: 'pagehead' }, h('h1', {}, 'Factory'), meta), approvalsBox, cards, noLines, membersBox);

    function createCard(line) {
      const name = line.policy;
      const card = h('article', { class: 'card', testid: `line-card-${name}` });
      return card;
    }

    function updateCard(card, line) {
      const name = line.policy;
      const now = Date.now();
      const d = line.daemon || {};
      // the relative "next cycle in …" changes every tick, so it is part of the signature
      const lc = line.last_cycle;
      if (!changed(card, [line, fmtRel(d.next_cycle_at, now), lc && fmtRel(lc.finished_at || lc.started_at, now)])) return;
      fill(
        card,
        h('header', { class: 'card-head' }, h('a', { href: lineHref(name), class: 'card-title', testid: `line-link-${name}` }, name), stateBadges(line, `state-${name}`)),
        h(
          'dl',
          { class: 'facts' },
          h('dt', {}, 'champion'),
          h('dd', { testid: `champion-${name}`, class: 'strong' }, championText(line.champion)),
          line.champion && isNum(line.champion.recent_bpb) ? [h('dt', {}, 'recent data'), h('dd', {}, `${fmtBpb(line.champion.recent_bpb)} bits/byte`)] : null,
          line.rollout ? [h('dt', {}, 'canary'), h('dd', { testid: `canary-${name}` }, `v${line.rollout.challenger} at ${fmtPct(line.rollout.weight_pct)} (step ${line.rollout.step}, ${line.rollout.status})`)] : null,
          h('dt', {}, 'next cycle'),
          h('dd', { testid: `next-cycle-${name}` }, d.next_cycle_at ? [fmtTime(d.next_cycle_at), h('span', { class: 'muted' }, ` (${fmtRel(d.next_cycle_at, now)})`)] : h('span', { class: 'muted' }, 'on new data / not scheduled')),
          h('dt', {}, 'last cycle'),
          h('dd', {}, lc ? [lc.id, ' ', badge(lc.status, statusKind(lc.status)), h('span', { class: 'muted' }, ` ${lc.trigger || ''} · ${fmtRel(lc.finished_at || lc.started_at, now)}`)] : h('span', { class: 'muted' }, 'none')),
          line.paused ? [h('dt', {}, 'paused'), h('dd', {}, `by ${line.paused.by}: ${line.paused.reason || ''}`)] : null,
        ),
        budgets(line),
      );
    }

    async function refresh({ factory, approvals: pending }) {
      const lines = factory.lines || [];
      fill(meta, `generated ${fmtTime(factory.generated_at)} UTC · ${lines.length} line${lines.length === 1 ? '' : 's'}`);
      approvals.update(pending);
      syncList(cards, lines, (l) => l.policy, createCard, updateCard);
      noLines.hidden = lines.length > 0;
      const ms = factory.members || [];
      membersBox.hidden = ms.length === 0;
      setRows(
        members.tbody,
        ms,
        (m) => [m.id, m.host || DASH, badge(m.role || '?', m.role === 'leader' ? 'ok' : m.role === 'gone' ? 'bad' : 'muted'), fmtInt(m.epoch), isNum(m.heartbeat_age_s) ? `${fmtNum(m.heartbeat_age_s, 1)} s ago` : DASH, isNum(m.lease_expires_in_s) ? `expires in ${fmtNum(m.lease_expires_in_s, 1)} s` : '', m.serving_url || '', m.fenced_writes ? fmtInt(m.fenced_writes) : ''],
        'no members',
        members.columns,
      );
    }
    return { el, refresh };
  }

  function statusKind(status) {
    if (/^(succeeded|completed|done|promoted|champion|ok|pass|approved|serving)$/.test(status)) return 'ok';
    if (/fail|error|abort|rolled_back|rejected|broken/.test(status)) return 'bad';
    if (/running|canary|challenger|pending|awaiting|paused|waiting/.test(status)) return 'warn';
    return 'muted';
  }

  function lineView(name) {
    const enc = encodeURIComponent(name);
    const title = h('h1', { testid: 'line-title' }, name);
    const states = h('span', { testid: 'line-state' });
    const champion = h('span', { class: 'strong', testid: 'line-champion' });
    const facts = h('p', { class: 'muted small', testid: 'line-facts' });
    const budgetsBox = h('div', { testid: 'line-budgets' });

    // line controls: built once, shown or hidden with the line's state
    const pause = actionControl({ testid: 'pause-line', label: 'Pause', reason: 'paused in the console', run: (why) => post(`/lines/${enc}/pause`, { reason: why }) });
    const resume = actionControl({ testid: 'resume-line', label: 'Resume', reason: 'resumed in the console', run: (why) => post(`/lines/${enc}/resume`, { reason: why }) });
    const rollbackTo = h('input', { type: 'number', min: 1, step: 1, class: 'version', placeholder: 'previous', testid: 'rollback-to', 'aria-label': 'roll back to version (empty: previous)', title: 'version to roll back to (empty: the previous champion)' });
    const rollback = actionControl({
      testid: 'rollback',
      label: 'Rollback',
      reason: 'rolled back in the console',
      danger: true,
      extra: h('label', { class: 'small muted' }, 'to v', rollbackTo),
      run: (why) => post(`/lines/${enc}/rollback`, { to: rollbackTo.value === '' ? null : Number(rollbackTo.value), reason: why }),
    });

    const approvals = approvalsList({ showLine: false, describe: (a) => describeCandidate(a) });
    const rolloutInfo = h('div', { testid: 'rollout-status' });
    const rolloutActions = h(
      'div',
      { class: 'controls', testid: 'rollout-actions' },
      actionControl({ testid: 'rollout-continue', label: 'Continue', reason: 'continued in the console', run: (why) => post(`/lines/${enc}/rollout/continue`, { reason: why }) }),
      actionControl({ testid: 'rollout-abort', label: 'Abort', reason: 'aborted in the console', danger: true, run: (why) => post(`/lines/${enc}/rollout/abort`, { reason: why }) }),
    );
    const quality = plotBox('plot-quality', 'Quality by version', 'valid bits/byte, lower is better; ★ champion, red: rejected');
    const energy = plotBox('plot-energy', 'Energy per cycle', 'tokens per joule (line) and joules (bars); hollow points: estimated energy');
    const trials = plotBox('plot-trials', 'Trials of the latest cycle', 'quality vs energy cost; Pareto front joined');
    const rollout = plotBox('plot-rollout', 'Rollouts', 'challenger traffic share and verdicts');
    const live = plotBox('plot-live', 'Per version', 'requests, failures, mean latency, live bits/byte, JS divergence');
    const liveTable = table('live-table', ['version', 'role', 'share', 'requests', 'failures', 'mean latency', 'prompt tok', 'completion tok', 'live prompts', 'JS divergence', 'live bits/byte', 'loss increase']);
    const models = table('models-table', ['version', 'status', 'aliases', 'valid bits/byte', 'tokens', 'energy', 'tokens/J', 'cycle', 'dataset', 'created (UTC)']);
    const cycles = table('cycles-table', ['#', 'cycle', 'status', 'trigger', 'started (UTC)', 'finished (UTC)', 'tokens', 'energy', 'tokens/J']);
    const lineError = h('p', { class: 'error', testid: 'line-error', hidden: true });

    const el = h(
      'div',
      {},
      h('div', { class: 'pagehead' }, title, states, h('a', { href: `#/audit?line=${enc}`, class: 'small' }, 'audit log of this line →')),
      lineError,
      h('div', { class: 'summary' }, h('div', {}, h('div', {}, 'champion: ', champion), facts), budgetsBox),
      h('div', { class: 'controls', testid: 'line-controls' }, pause, resume, rollback),
      section('Pending approvals', 'line-approvals', approvals.el),
      section('Rollout', 'rollout-panel', rolloutInfo, rolloutActions),
      h('div', { class: 'plots' }, quality.box, energy.box, trials.box, rollout.box),
      section('Live', 'live-panel', h('div', { class: 'plots plots-1' }, live.box), liveTable.el),
      section('Models', 'models', models.el),
      section('Recent cycles', 'cycles', cycles.el),
    );

    const trialCache = new Map(); // finished cycles' trials do not change: fetched once
    let modelsByVersion = new Map();
    let championVersion = null;

    function describeCandidate(a) {
      const m = modelsByVersion.get(a.version);
      const champ = modelsByVersion.get(championVersion);
      if (!m || !isNum(m.valid_bpb)) return '';
      return `valid ${fmtBpb(m.valid_bpb)} bits/byte` + (champ && isNum(champ.valid_bpb) ? ` vs champion v${champ.version} ${fmtBpb(champ.valid_bpb)}` : '');
    }

    function updateHeader(line, now) {
      fill(states, stateBadges(line, null));
      championVersion = line.champion ? line.champion.version : null;
      champion.textContent = championText(line.champion);
      const d = line.daemon;
      fill(
        facts,
        `previous: ${line.previous ? 'v' + line.previous : DASH}`,
        ` · next cycle: ${d && d.next_cycle_at ? `${fmtTime(d.next_cycle_at)} (${fmtRel(d.next_cycle_at, now)})` : 'on new data / not scheduled'}`,
        d ? ` · daemon pid ${d.pid}${d.served_version ? `, serving v${d.served_version}` : ''}${d.serving_url ? ` at ${d.serving_url}` : ''}${d.energy ? `, energy: ${d.energy}` : ''}` : ' · no daemon',
        line.paused ? ` · paused by ${line.paused.by} ${fmtRel(line.paused.at, now)}: ${line.paused.reason || ''}` : '',
      );
      if (changed(budgetsBox, line.today)) fill(budgetsBox, budgets(line));
      pause.hidden = !!line.paused;
      resume.hidden = !line.paused;
      if (!rollbackTo.value && document.activeElement !== rollbackTo) rollbackTo.placeholder = line.previous ? `v${line.previous}` : 'previous';
    }

    function updateRolloutPanel(r) {
      if (!r) fill(rolloutInfo, h('span', { class: 'muted' }, 'no rollout in progress'));
      else
        fill(
          rolloutInfo,
          h('b', {}, `v${r.challenger}`),
          ` in cycle ${r.cycle}: step ${r.step} at ${fmtPct(r.weight_pct)} of traffic · `,
          badge(r.status, statusKind(r.status), 'rollout-state'),
          r.reason ? h('span', { class: 'muted' }, ` ${r.reason}`) : null,
        );
      // Continue / Abort only make sense while the rollout waits for a person
      rolloutActions.hidden = !(r && r.status === 'paused');
    }

    function drawQuality(ms) {
      const pts = ms.filter((m) => isNum(m.valid_bpb)).sort((a, b) => a.version - b.version);
      const color = (m) => (m.version === championVersion ? COLORS.green : /reject|fail|rolled_back/.test(m.status || '') ? COLORS.red : COLORS.blue);
      drawPlot(
        quality.div,
        pts.length
          ? [
              {
                type: 'scatter',
                mode: 'lines+markers',
                name: 'valid bits/byte',
                x: pts.map((m) => m.version),
                y: pts.map((m) => m.valid_bpb),
                text: pts.map((m) => `v${esc(m.version)} ${esc(m.status)}${(m.aliases || []).length ? ' [' + esc(m.aliases.join(', ')) + ']' : ''}<br>${fmtBpb(m.valid_bpb)} bits/byte`),
                hoverinfo: 'text',
                line: { color: '#b9c3cf', width: 1.5 },
                marker: { size: pts.map((m) => (m.version === championVersion ? 13 : 8)), color: pts.map(color), symbol: pts.map((m) => (m.version === championVersion ? 'star' : 'circle')) },
              },
            ]
          : [],
        { showlegend: false, xaxis: { title: { text: 'model version' }, dtick: pts.length > 20 ? null : 1 }, yaxis: { title: { text: 'bits/byte' } } },
      );
    }

    function drawEnergy(cs) {
      const pts = cs.filter((c) => isNum(c.joules) && c.joules > 0 && toDate(c.finished_at || c.started_at)).sort((a, b) => toDate(a.finished_at || a.started_at) - toDate(b.finished_at || b.started_at));
      const x = pts.map((c) => plotTime(c.finished_at || c.started_at));
      const text = pts.map((c) => `cycle ${esc(c.number != null ? '#' + c.number : c.id)}<br>${fmtTpj(c.tokens_per_joule)}<br>${fmtJoules(c.joules)} ${esc(c.energy_label)}<br>${fmtInt(c.tokens)} tokens`);
      // estimated figures are drawn hollow so they never pass for measured ones
      const symbol = pts.map((c) => (/measured/.test(c.energy_label || '') && !/estimated/.test(c.energy_label || '') ? 'circle' : 'circle-open'));
      drawPlot(
        energy.div,
        pts.length
          ? [
              { type: 'bar', name: 'joules per cycle', x, y: pts.map((c) => c.joules), yaxis: 'y2', text, hoverinfo: 'text', textposition: 'none', marker: { color: 'rgba(183,121,31,0.35)' } },
              { type: 'scatter', mode: 'lines+markers', name: 'tokens per joule', x, y: pts.map((c) => (isNum(c.tokens_per_joule) ? c.tokens_per_joule : null)), text, hoverinfo: 'text', line: { color: COLORS.blue }, marker: { size: 8, symbol, color: COLORS.blue } },
            ]
          : [],
        {
          xaxis: { title: { text: 'cycle end (UTC)' }, type: 'date' },
          yaxis: { title: { text: 'tokens / J' }, rangemode: 'tozero' },
          yaxis2: { title: { text: 'joules' }, overlaying: 'y', side: 'right', rangemode: 'tozero', showgrid: false },
          margin: { l: 56, r: 60, t: 8, b: 40 },
        },
      );
    }

    // The newest cycle (of the last few) that has trials; finished cycles are cached.
    async function latestTrials(cs, gen) {
      const recent = cs.slice().sort((a, b) => (toDate(b.started_at) || 0) - (toDate(a.started_at) || 0)).slice(0, TRIAL_CYCLES_SCANNED);
      for (const c of recent) {
        let got = trialCache.get(c.id);
        if (!got) {
          got = await api(`/cycles/${encodeURIComponent(c.id)}/trials`);
          if (gen !== generation) return null;
          if (c.finished_at) trialCache.set(c.id, got);
        }
        if ((got.trials || []).length) return { cycle: c, trials: got.trials };
      }
      return null;
    }

    function drawTrials(found) {
      const ok = found ? found.trials.filter((t) => isNum(t.valid_bpb) && isNum(t.energy_cost)) : [];
      const front = ok.filter((t) => t.on_front).sort((a, b) => a.energy_cost - b.energy_cost);
      const rest = ok.filter((t) => !t.on_front);
      const label = (t) => `trial ${esc(t.number)} (${esc(t.status)})<br>${fmtBpb(t.valid_bpb)} bits/byte<br>energy cost ${fmtNum(t.energy_cost, 3)}<br>${Object.entries(t.params || {}).map(([k, v]) => `${esc(k)}=${esc(typeof v === 'object' ? JSON.stringify(v) : v)}`).join('<br>')}`;
      const traces = [];
      if (rest.length) traces.push({ type: 'scatter', mode: 'markers', name: 'trial', x: rest.map((t) => t.energy_cost), y: rest.map((t) => t.valid_bpb), text: rest.map(label), hoverinfo: 'text', marker: { size: 8, color: COLORS.grey, opacity: 0.75 } });
      if (front.length) traces.push({ type: 'scatter', mode: 'lines+markers', name: 'Pareto front', x: front.map((t) => t.energy_cost), y: front.map((t) => t.valid_bpb), text: front.map(label), hoverinfo: 'text', line: { color: COLORS.red, dash: 'dot' }, marker: { size: 11, symbol: 'diamond', color: COLORS.red } });
      trials.box.querySelector('figcaption').firstChild.textContent = found ? `Trials of cycle ${found.cycle.number != null ? '#' + found.cycle.number + ' ' : ''}${found.cycle.id}` : 'Trials of the latest cycle';
      drawPlot(trials.div, traces, { xaxis: { title: { text: 'energy cost' } }, yaxis: { title: { text: 'valid bits/byte' } } });
    }

    // A rollout's history holds every audit event of its cycle (training too). Drawn: the
    // challenger's share as a step line (events carrying a weight), and the rollout's
    // decisions (canary steps, pauses, approvals, continue/abort, promote, rollback) as
    // markers coloured by outcome; a finished rollout's end is written beside it.
    const DECISIONS = /^(canary_(?!weight)|rollout_|promote|rollback|approval|request_approval)/;

    function rolloutSeries(r, nowIso) {
      const hist = (r.history || []).filter((e) => toDate(e.at)).sort((a, b) => toDate(a.at) - toDate(b.at));
      const pts = hist.filter((e) => isNum(e.weight_pct)).map((e) => [e.at, e.weight_pct]);
      const start = r.started_at && toDate(r.started_at);
      if (start && (!pts.length || toDate(pts[0][0]) > start)) pts.unshift([r.started_at, 0]);
      const active = r.status === 'running' || r.status === 'paused';
      // an active rollout holds its weight until now; a finished one ends at its last update
      const end = active ? nowIso : r.updated_at;
      if (end && toDate(end) && (!pts.length || toDate(end) > toDate(pts[pts.length - 1][0]))) pts.push([end, isNum(r.weight_pct) ? r.weight_pct : pts.length ? pts[pts.length - 1][1] : 0]);
      // the share in effect at a moment: the last weight set at or before it
      const shareAt = (t) => pts.reduce((w, [at, pct]) => (toDate(at) <= toDate(t) ? pct : w), 0);
      const decisions = hist.filter((e) => DECISIONS.test(e.action || ''));
      return { pts, decisions, shareAt, active };
    }

    function drawRollouts(rs, nowIso) {
      const traces = [];
      const annotations = [];
      const palette = [COLORS.blue, COLORS.purple, COLORS.teal, COLORS.amber, '#2f855a', '#9b2c2c'];
      const colorOf = { ok: COLORS.green, bad: COLORS.red, warn: COLORS.amber, info: COLORS.blue };
      const symbolOf = { ok: 'circle', bad: 'x', warn: 'diamond', info: 'square' };
      rs.slice()
        .reverse() // oldest first, so colours stay put as new rollouts arrive
        .forEach((r, i) => {
          const { pts, decisions, shareAt, active } = rolloutSeries(r, nowIso);
          if (!pts.length && !decisions.length) return;
          const name = `v${esc(r.challenger_version)} vs v${esc(r.champion_version ?? '–')}`;
          const x = pts.map(([at]) => plotTime(at));
          const y = pts.map(([, pct]) => pct);
          traces.push({ type: 'scatter', mode: 'lines', name, x, y, line: { shape: 'hv', color: palette[i % palette.length], width: 2 }, hovertemplate: `${name}<br>%{y:.1f}%<extra></extra>`, legendgroup: name });
          if (decisions.length) {
            const kinds = decisions.map(verdictKind);
            traces.push({
              type: 'scatter',
              mode: 'markers',
              name: `${name} decisions`,
              legendgroup: name,
              showlegend: false,
              x: decisions.map((e) => plotTime(e.at)),
              y: decisions.map((e) => shareAt(e.at)),
              text: decisions.map((e) => `${esc(e.action)}${e.outcome ? ': ' + esc(e.outcome) : ''}<br>${esc((e.reason || '').slice(0, 160))}`),
              hoverinfo: 'text+x',
              marker: { size: 10, line: { width: 1, color: '#fff' }, color: kinds.map((k) => colorOf[k]), symbol: kinds.map((k) => symbolOf[k]) },
            });
          }
          if (!active && x.length)
            annotations.push({ x: x[x.length - 1], y: y[y.length - 1], text: `v${esc(r.challenger_version)} ${esc(r.status)}`, showarrow: true, arrowhead: 0, ax: 0, ay: -22, font: { size: 10, color: statusKind(r.status) === 'bad' ? COLORS.red : COLORS.green } });
        });
      drawPlot(rollout.div, traces, { annotations, xaxis: { title: { text: 'time (UTC)' }, type: 'date' }, yaxis: { title: { text: 'challenger share %' }, range: [0, 118], tickvals: [0, 25, 50, 75, 100] } });
    }

    // Audit outcomes are taken / deferred / refused / failed / aborted; a rollback or an
    // abort is bad news even when "taken".
    function verdictKind(e) {
      const a = e.action || '';
      const o = e.outcome || '';
      if (/refused|fail|abort|rolled_back/.test(o) || /rollback|abort/.test(a)) return 'bad';
      if (/deferred|pause/.test(o) || /pause/.test(a)) return 'warn';
      if (/taken|pass|promot|approved/.test(o)) return 'ok';
      return 'info';
    }

    function drawLive(vs) {
      const label = (v) => `v${esc(v.version)}${v.role ? ' ' + esc(v.role) : ''}`;
      const x = vs.map(label);
      const lv = (v, k) => (v.live && isNum(v.live[k]) ? v.live[k] : null);
      const traces = vs.length
        ? [
            { type: 'bar', name: 'requests', x, y: vs.map((v) => v.requests), marker: { color: COLORS.blue }, xaxis: 'x', yaxis: 'y' },
            { type: 'bar', name: 'failures', x, y: vs.map((v) => v.failures), marker: { color: COLORS.red }, xaxis: 'x', yaxis: 'y' },
            { type: 'bar', name: 'mean latency ms', x, y: vs.map((v) => v.mean_latency_ms), marker: { color: COLORS.teal }, xaxis: 'x2', yaxis: 'y2' },
            { type: 'bar', name: 'live bits/byte', x, y: vs.map((v) => lv(v, 'bpb')), marker: { color: COLORS.purple }, xaxis: 'x3', yaxis: 'y3' },
            { type: 'bar', name: 'JS divergence', x, y: vs.map((v) => lv(v, 'js_divergence')), marker: { color: COLORS.amber }, xaxis: 'x4', yaxis: 'y4' },
          ]
        : [];
      const axisTitle = (t) => ({ title: { text: t, font: { size: 10 } } });
      drawPlot(live.div, traces, {
        grid: { rows: 1, columns: 4, pattern: 'independent', xgap: 0.12 },
        barmode: 'group',
        height: 240,
        yaxis: axisTitle('requests'),
        yaxis2: axisTitle('ms'),
        yaxis3: axisTitle('bits/byte'),
        yaxis4: axisTitle('JS divergence'),
      });
      setRows(
        liveTable.tbody,
        vs,
        (v) => [`v${v.version}`, v.role || DASH, isNum(v.share) ? fmtPct(v.share * 100) : DASH /* share is a fraction of traffic */, fmtInt(v.requests), fmtInt(v.failures), isNum(v.mean_latency_ms) ? `${fmtNum(v.mean_latency_ms, 1)} ms` : DASH, fmtInt(v.prompt_tokens), fmtInt(v.completion_tokens), fmtInt(v.live && v.live.prompts), isNum(lv(v, 'js_divergence')) ? fmtNum(lv(v, 'js_divergence'), 3) : DASH, fmtBpb(lv(v, 'bpb')), isNum(lv(v, 'loss_increase_pct')) ? fmtPct(lv(v, 'loss_increase_pct')) : DASH],
        'this daemon does not serve this line (no live figures)',
        liveTable.columns,
      );
    }

    function updateTables(ms, cs) {
      setRows(
        models.tbody,
        ms.slice().sort((a, b) => b.version - a.version),
        (m) => [h('b', {}, `v${m.version}`), badge(m.status || '?', statusKind(m.status || '')), h('span', { testid: `aliases-${m.version}` }, (m.aliases || []).map((a) => badge(a, a === 'champion' ? 'ok' : 'info'))), fmtBpb(m.valid_bpb), fmtInt(m.tokens), joulesWithTag(m.joules, m.energy_method), fmtTpj(m.tokens_per_joule), m.cycle_id || DASH, m.dataset_version ?? DASH, fmtTime(m.created_at)],
        'no models yet',
        models.columns,
      );
      setRows(
        cycles.tbody,
        cs,
        (c) => [c.number != null ? `#${c.number}` : DASH, c.id, badge(c.status, statusKind(c.status)), c.trigger || DASH, fmtTime(c.started_at), fmtTime(c.finished_at), fmtInt(c.tokens), joulesWithTag(c.joules, c.energy_label), fmtTpj(c.tokens_per_joule)],
        'no cycles yet',
        cycles.columns,
      );
    }

    async function refresh(shared, gen) {
      let line = (shared.factory.lines || []).find((l) => l.policy === name);
      if (!line) {
        try {
          line = await api(`/lines/${enc}`);
        } catch (err) {
          lineError.hidden = false;
          lineError.textContent = err.message;
          return;
        }
      }
      lineError.hidden = true;
      const now = Date.now();
      updateHeader(line, now);
      updateRolloutPanel(line.rollout);
      approvals.update(shared.approvals.filter((a) => a.line === name));

      const [m, c, r, l] = await Promise.all([api(`/lines/${enc}/models`), api(`/lines/${enc}/cycles?limit=20`), api(`/lines/${enc}/rollouts?limit=10`), api(`/lines/${enc}/live`)]);
      if (gen !== generation) return;
      const ms = m.models || [];
      const cs = c.cycles || [];
      modelsByVersion = new Map(ms.map((x) => [x.version, x]));
      approvals.update(shared.approvals.filter((a) => a.line === name)); // now with bpb figures
      drawQuality(ms);
      drawEnergy(cs);
      drawRollouts(r.rollouts || [], shared.factory.generated_at || new Date().toISOString());
      drawLive(l.versions || []);
      updateTables(ms, cs);
      const found = await latestTrials(cs, gen);
      if (gen !== generation) return;
      drawTrials(found);
    }
    return { el, refresh };
  }

  function auditView(query) {
    const fields = [
      ['line', 'line', 'text', 12],
      ['agent', 'agent', 'text', 10],
      ['action', 'action', 'text', 12],
      ['cycle', 'cycle id', 'text', 14],
      ['since', 'since (ISO)', 'text', 18],
      ['limit', 'limit', 'number', 5],
    ];
    const inputs = {};
    const lineList = h('datalist', { id: 'audit-lines' });
    const form = h(
      'form',
      { class: 'filters', testid: 'audit-filters', autocomplete: 'off' },
      fields.map(([key, label, type, size]) => {
        inputs[key] = h('input', { type, name: key, size, placeholder: key === 'limit' ? '100' : 'any', value: query.get(key) || (key === 'limit' ? '100' : ''), testid: `audit-filter-${key}`, list: key === 'line' ? 'audit-lines' : null, min: type === 'number' ? 1 : null });
        return h('label', {}, h('span', { class: 'small muted' }, label), inputs[key]);
      }),
      lineList,
      h('button', { type: 'submit', testid: 'audit-apply' }, 'Apply'),
      h('button', { type: 'button', class: 'link', testid: 'audit-clear', onclick: () => clearFilters() }, 'clear'),
    );
    const chain = h('span', { class: 'chain', testid: 'chain-status' }, 'checking chain…');
    const count = h('span', { class: 'muted small', testid: 'audit-count' });
    const events = table('audit-table', ['seq', 'time (UTC)', 'line', 'cycle', 'agent', 'action', 'outcome', 'reason', 'figures']);
    const el = h('div', {}, h('div', { class: 'pagehead' }, h('h1', {}, 'Audit log'), chain), h('div', { class: 'panel' }, form, count, events.el));

    function filters() {
      const q = new URLSearchParams();
      for (const [key] of fields) {
        const v = inputs[key].value.trim();
        if (v) q.set(key, v);
      }
      return q;
    }

    // Filters live in the hash too (shareable); replaceState does not fire hashchange,
    // so the view is not rebuilt under the user's cursor.
    function applyFilters() {
      const q = filters();
      history.replaceState(null, '', `${location.pathname}${location.search}#/audit${q.toString() ? '?' + q : ''}`);
      refreshNow();
    }

    function clearFilters() {
      for (const [key] of fields) inputs[key].value = key === 'limit' ? '100' : '';
      applyFilters();
    }

    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      applyFilters();
    });
    form.addEventListener('change', applyFilters);

    function figuresText(f) {
      if (f === null || f === undefined || (typeof f === 'object' && !Object.keys(f).length)) return '';
      return typeof f === 'string' ? f : JSON.stringify(f);
    }

    async function refresh(shared, gen) {
      if (changed(lineList, (shared.factory.lines || []).map((l) => l.policy))) fill(lineList, (shared.factory.lines || []).map((l) => h('option', { value: l.policy })));
      const [list, verify] = await Promise.all([api(`/audit?${filters()}`), api('/audit/verify')]);
      if (gen !== generation) return;
      if (verify.ok) {
        chain.className = 'chain chain-ok';
        chain.textContent = `chain OK: ${fmtInt(verify.events)} events`;
      } else {
        chain.className = 'chain chain-bad';
        chain.textContent = `BROKEN at seq ${verify.first_bad_seq}: ${verify.problem || 'unknown problem'}`;
      }
      chain.dataset.ok = String(!!verify.ok);
      // the API gives the newest N oldest first; an operator reads the newest first
      const evs = (list.events || []).slice().reverse();
      count.textContent = `${fmtInt(evs.length)} event${evs.length === 1 ? '' : 's'} shown, newest first`;
      setRows(
        events.tbody,
        evs,
        (e) => {
          const fig = figuresText(e.figures);
          return [
            fmtInt(e.seq),
            h('span', { class: 'nowrap' }, fmtTime(e.ts)),
            e.line ? h('a', { href: lineHref(e.line) }, e.line) : DASH,
            e.cycle_id || '',
            e.agent || '',
            h('b', {}, e.action || ''),
            e.outcome ? badge(e.outcome, statusKind(e.outcome)) : '',
            h('td', { class: 'wrap' }, e.reason || ''),
            h('td', { class: 'figures', title: fig }, fig.length > 140 ? fig.slice(0, 140) + '…' : fig),
          ];
        },
        'no events match',
        events.columns,
      );
    }
    return { el, refresh };
  }

  function approvalsView() {
    const approvals = approvalsList();
    const decided = table('decided-table', ['id', 'line', 'version', 'cycle', 'status', 'requested (UTC)', 'decided (UTC)', 'by']);
    const el = h(
      'div',
      {},
      h('div', { class: 'pagehead' }, h('h1', {}, 'Approvals'), h('span', { class: 'muted small' }, 'candidates waiting for a person before they canary')),
      section('Pending', 'approvals', approvals.el),
      section('Recently decided', 'decided', decided.el),
    );
    async function refresh(shared, gen) {
      approvals.update(shared.approvals);
      // all approvals (no status filter): the decided ones, newest first
      const all = await api('/approvals');
      if (gen !== generation) return;
      const done = (all.approvals || []).filter((a) => a.status !== 'pending').sort((a, b) => String(b.decided_at || '').localeCompare(String(a.decided_at || ''))).slice(0, 20);
      setRows(
        decided.tbody,
        done,
        (a) => [String(a.id), h('a', { href: lineHref(a.line) }, a.line), `v${a.version}`, a.cycle_id, badge(a.status, statusKind(a.status)), fmtTime(a.requested_at), fmtTime(a.decided_at), a.decided_by || DASH],
        'none decided yet',
        decided.columns,
      );
    }
    return { el, refresh };
  }

  function notFoundView(hash) {
    return { el: h('div', {}, h('h1', {}, 'Not found'), h('p', {}, `no page at ${hash}: `, h('a', { href: '#/' }, 'back to the factory'))), refresh: async () => {} };
  }

  // ---------------------------------------------------------------- routing and refresh

  function parseRoute() {
    const raw = location.hash.replace(/^#/, '') || '/';
    const [path, qs] = raw.split('?');
    const query = new URLSearchParams(qs || '');
    const m = path.match(/^\/line\/(.+)$/);
    if (m) return { name: 'line', line: decodeURIComponent(m[1]), query };
    if (path === '/' || path === '') return { name: 'overview', query };
    if (path === '/audit') return { name: 'audit', query };
    if (path === '/approvals') return { name: 'approvals', query };
    return { name: 'notfound', query, path };
  }

  let view = null;
  let route = null;
  let generation = 0; // bumps on every route change; stale answers are dropped

  function mount() {
    route = parseRoute();
    generation += 1;
    view =
      route.name === 'line' ? lineView(route.line) : route.name === 'overview' ? overviewView() : route.name === 'audit' ? auditView(route.query) : route.name === 'approvals' ? approvalsView() : notFoundView(location.hash);
    const main = document.getElementById('view');
    main.dataset.route = route.name;
    document.getElementById('banner').hidden = true; // a message belongs to the page it came from
    fill(main, view.el);
    markNav();
    refreshNow();
  }

  function markNav() {
    for (const a of document.querySelectorAll('header a[href]')) {
      const href = a.getAttribute('href');
      const active = (route.name === 'line' && href === lineHref(route.line)) || (route.name === 'audit' && href === '#/audit') || (route.name === 'approvals' && href === '#/approvals') || (route.name === 'overview' && href === '#/');
      a.classList.toggle('active', active);
    }
  }

  function updateNav(factory, pending) {
    const nav = document.getElementById('nav-lines');
    const names = (factory.lines || []).map((l) => ({ name: l.policy, attention: !!(l.paused || (l.rollout && l.rollout.status === 'paused') || (l.pending_approvals || []).length) }));
    if (changed(nav, names)) {
      fill(nav, names.map((l) => h('a', { href: lineHref(l.name), testid: `nav-line-${l.name}`, class: l.attention ? 'attention-dot' : null }, l.name)));
      markNav();
    }
    document.getElementById('nav-approvals-count').textContent = pending.length ? String(pending.length) : '';
  }

  let timer = null;
  let running = false;
  let again = false;

  // One refresh of the header and the current view; never two at once.
  async function tick() {
    clearTimeout(timer);
    if (running) {
      again = true;
      return;
    }
    running = true;
    const gen = generation;
    try {
      const [factory, approvals] = await Promise.all([api('/factory'), api('/approvals?status=pending')]);
      const pending = (approvals && approvals.approvals) || [];
      updateNav(factory, pending);
      if (gen === generation) await view.refresh({ factory, approvals: pending }, gen);
      refreshOk();
      document.getElementById('updated').textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC · ${REFRESH_MS ? `refresh every ${fmtNum(REFRESH_MS / 1000, REFRESH_MS % 1000 ? 1 : 0)} s` : 'refresh off'}`;
    } catch (err) {
      refreshError(err);
    } finally {
      running = false;
      if (again) {
        again = false;
        timer = setTimeout(tick, 0);
      } else if (REFRESH_MS) timer = setTimeout(tick, REFRESH_MS);
    }
  }

  function refreshNow() {
    tick();
  }

  function start() {
    initAuth();
    window.addEventListener('hashchange', mount);
    mount();
  }

  // Exposed for tests and the browser console; not used by the page itself.
  window.aifactoryConsole = { refreshNow, fmt: { fmtInt, fmtBpb, fmtJoules, fmtTpj, fmtTime } };

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
