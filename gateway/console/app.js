// Tenzro console: Chat, Account and Operator pages over the gateway's own API.
// Vanilla JS, no build step. Everything the API returns is rendered as text
// (textContent / text nodes, never innerHTML); keys live in sessionStorage only.
'use strict';

const KEY = 'tenzro.key';
const ADMIN = 'tenzro.admin';
const ONE = 10n ** 18n;
const MAX_SSE_LINE = 1 << 20;
const SVG = 'http://www.w3.org/2000/svg';

// ---------- small helpers ----------

// An element with attributes (`text` sets textContent, `on*` adds listeners) and
// children (strings become text nodes).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') e.textContent = String(v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

// Whole tokens from an 18-decimal base-unit amount (a decimal string).
function whole(units) {
  let v;
  try { v = BigInt(units); } catch (_) { return String(units); }
  const neg = v < 0n;
  if (neg) v = -v;
  const i = v / ONE;
  const f = v % ONE;
  let out = i.toString();
  if (f) out += '.' + f.toString().padStart(18, '0').replace(/0+$/, '');
  return (neg ? '-' : '') + out;
}

function when(unix) {
  if (!unix) return '—';
  return new Date(Number(unix) * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

async function api(path, token, opts) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = 'Bearer ' + token;
  const resp = await fetch(path, Object.assign({ headers }, opts || {}));
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!resp.ok) {
    const msg = body && body.error && body.error.message ? body.error.message : resp.status + ' ' + text.slice(0, 200);
    throw new Error(msg);
  }
  return body;
}

function errorBox(e) {
  return el('div', { class: 'msg error', role: 'alert' }, String(e && e.message ? e.message : e));
}

function table(headers, rows) {
  return el('table', {},
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', { text: h })))),
    el('tbody', {}, rows));
}

function kv(pairs) {
  return el('dl', { class: 'kv' }, pairs.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', {}, v)]));
}

function keyField(storage, label, id, onUse) {
  const input = el('input', { type: 'password', id, placeholder: label, autocomplete: 'off' });
  input.value = sessionStorage.getItem(storage) || '';
  const use = () => {
    const v = input.value.trim();
    if (v) sessionStorage.setItem(storage, v); else sessionStorage.removeItem(storage);
    onUse();
  };
  input.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') use(); });
  return el('div', { class: 'row' }, input,
    el('button', { id: id + '-use', onclick: use }, 'Use'),
    el('span', { class: 'muted' }, 'kept in this tab only (sessionStorage)'));
}

// ---------- chat ----------

const chat = { root: null, history: [], receipts: [], controller: null };

function buildChat() {
  const log = el('div', { class: 'log', id: 'log' });
  const model = el('select', { id: 'model' });
  const maxTokens = el('input', { id: 'max-tokens', type: 'number', min: 1, max: 32768, value: 256, title: 'most tokens per answer' });
  const prompt = el('textarea', { id: 'prompt', placeholder: 'Ask something (Enter sends, Shift+Enter for a new line)' });
  const send = el('button', { id: 'send' }, 'Send');
  const stop = el('button', { id: 'stop', class: 'secondary', disabled: true }, 'Stop');
  const status = el('div', { id: 'chat-status', class: 'muted' });
  const loadModels = async () => {
    status.textContent = '';
    model.replaceChildren();
    const key = sessionStorage.getItem(KEY);
    if (!key) { status.textContent = 'Paste an API key to start.'; return; }
    try {
      const list = await api('/v1/models', key);
      for (const m of list.data || []) {
        if (m.category && m.category !== 'LLM') continue;
        const price = m.min_price_per_token ? ' · from ' + whole(m.min_price_per_token) + ' ' + (m.price_asset || '') + '/token' : '';
        model.append(el('option', { value: m.id }, m.id + price));
      }
      if (!model.options.length) status.textContent = 'No chat model is served right now.';
    } catch (e) { status.replaceChildren(errorBox(e)); }
  };
  send.addEventListener('click', () => ask(prompt, model, maxTokens, log, send, stop));
  stop.addEventListener('click', () => { if (chat.controller) chat.controller.abort(); });
  prompt.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey) { ev.preventDefault(); send.click(); }
  });
  const reset = el('button', { class: 'secondary', id: 'new-chat', onclick: () => { chat.history = []; log.replaceChildren(); } }, 'New conversation');
  chat.root = el('div', {},
    el('section', { class: 'card' }, el('h2', { text: 'API key' }), keyField(KEY, 'tz-… API key', 'api-key', loadModels)),
    el('section', { class: 'card' },
      el('div', { class: 'row' }, el('label', { for: 'model', text: 'Model' }), model,
        el('label', { for: 'max-tokens', text: 'max tokens' }), maxTokens, reset),
      status, log, prompt, el('div', { class: 'row' }, send, stop)));
  loadModels();
}

// One streamed answer: text as it comes, then tokens, cost, provider and the receipt link.
async function ask(prompt, model, maxTokens, log, send, stop) {
  const text = prompt.value.trim();
  const key = sessionStorage.getItem(KEY);
  if (!text) return;
  if (!key) { log.append(errorBox('Paste an API key first.')); return; }
  if (!model.value) { log.append(errorBox('No model to ask.')); return; }
  prompt.value = '';
  chat.history.push({ role: 'user', content: text });
  log.append(el('div', { class: 'msg user' }, text));
  const answer = document.createTextNode('');
  const meta = el('div', { class: 'meta' }, 'streaming…');
  const box = el('div', { class: 'msg assistant' }, answer, meta);
  log.append(box);
  chat.controller = new AbortController();
  send.disabled = true; stop.disabled = false;
  try {
    const max = parseInt(maxTokens.value, 10);
    const r = await stream(key, { model: model.value, max_tokens: max > 0 ? max : undefined }, answer, chat.controller.signal);
    chat.history.push({ role: 'assistant', content: answer.data });
    meta.replaceChildren(...footer(r));
  } catch (e) {
    chat.history.pop();
    if (e.name === 'AbortError') meta.replaceChildren('stopped (this turn is not kept)');
    else { box.classList.add('error'); meta.replaceChildren(String(e.message || e)); }
  } finally {
    chat.controller = null;
    send.disabled = false; stop.disabled = true;
  }
}

async function stream(key, params, answer, signal) {
  const resp = await fetch('/v1/chat/completions', {
    method: 'POST',
    signal,
    headers: { Authorization: 'Bearer ' + key, 'Content-Type': 'application/json' },
    body: JSON.stringify(Object.assign({}, params, { messages: chat.history, stream: true, stream_options: { include_usage: true } })),
  });
  if (!resp.ok) {
    const t = await resp.text();
    let msg = resp.status + ' ' + t.slice(0, 200);
    try { msg = JSON.parse(t).error.message || msg; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  const r = { provider: resp.headers.get('x-tenzro-provider'), asset: resp.headers.get('x-tenzro-asset'), cost: null, usage: null, receipt: null };
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    const lines = buf.split('\n');
    buf = lines.pop();
    if (buf.length > MAX_SSE_LINE) throw new Error('the server sent an SSE line over 1 MiB');
    for (const raw of lines) line(raw.replace(/\r$/, ''), r, answer);
  }
  return r;
}

function line(l, r, answer) {
  if (l.startsWith(':')) {
    const m = /x-tenzro-cost=(\d+)/.exec(l);
    if (m) r.cost = m[1];
    const a = /x-tenzro-asset=(\S+)/.exec(l);
    if (a) r.asset = a[1];
    return;
  }
  if (!l.startsWith('data:')) return;
  const data = l.slice(5).trim();
  if (data === '[DONE]') return;
  let v;
  try { v = JSON.parse(data); } catch (_) { return; }
  if (v.error) throw new Error(v.error.message || 'the stream was cut');
  const delta = v.choices && v.choices[0] && v.choices[0].delta;
  if (delta && typeof delta.content === 'string') answer.data += delta.content;
  if (v.tenzro && v.tenzro.receipt) r.receipt = v.tenzro.receipt;
  if (v.usage) {
    r.usage = v.usage;
    if (r.cost === null && v.usage.cost !== undefined) r.cost = String(v.usage.cost);
  }
}

function footer(r) {
  const parts = [];
  if (r.usage) parts.push(el('span', { class: 'tokens' }, r.usage.prompt_tokens + ' prompt + ' + r.usage.completion_tokens + ' completion tokens'));
  if (r.cost !== null) parts.push(el('span', { class: 'cost', 'data-units': r.cost }, 'cost ' + whole(r.cost) + ' ' + (r.asset || '')));
  if (r.provider) parts.push(el('span', { class: 'provider' }, 'provider ' + r.provider));
  if (r.receipt) {
    chat.receipts.push({ receipt: r.receipt, provider: r.provider });
    parts.push(el('a', { class: 'verify', href: '#/receipt/' + (chat.receipts.length - 1) }, 'verify the receipt'));
  }
  return parts.flatMap((p, i) => (i ? [' · ', p] : [p]));
}

async function receiptPage(root, index) {
  const entry = chat.receipts[Number(index)];
  if (!entry) { root.append(errorBox('No such receipt in this tab; receipts are kept while the page is open.')); return; }
  const fields = Object.entries(entry.receipt).map(([k, v]) => [k, el('span', { class: 'mono' }, typeof v === 'object' ? JSON.stringify(v) : String(v))]);
  const result = el('div', { id: 'receipt-result' }, 'checking…');
  root.append(el('section', { class: 'card' }, el('h2', { text: 'Receipt' }), kv(fields), el('h2', { text: 'Verification' }), result));
  try {
    // A registered provider's id is its key's DID: then the signer must be it.
    const provider = entry.provider && entry.provider.startsWith('did:') ? entry.provider : undefined;
    const v = await api('/v1/receipts/verify', null, { method: 'POST', body: JSON.stringify({ receipt: entry.receipt, provider }) });
    result.replaceChildren(v.valid
      ? el('span', { class: 'ok' }, 'valid: signed by ' + v.signer)
      : el('span', { class: 'bad' }, 'invalid: ' + v.error));
  } catch (e) { result.replaceChildren(errorBox(e)); }
}

// ---------- account ----------

async function accountPage(root) {
  const body = el('div', { id: 'account-body' });
  const load = async () => {
    body.replaceChildren('loading…');
    const key = sessionStorage.getItem(KEY);
    if (!key) { body.replaceChildren('Paste an API key to see its account.'); return; }
    try { body.replaceChildren(...await accountView(key)); } catch (e) { body.replaceChildren(errorBox(e)); }
  };
  root.append(el('section', { class: 'card' }, el('h2', { text: 'API key' }), keyField(KEY, 'tz-… API key', 'account-key', load)), body);
  load();
}

function amounts(map) {
  const e = Object.entries(map || {});
  return e.length ? e.map(([a, v]) => whole(v) + ' ' + a).join(', ') : '—';
}

async function accountView(key) {
  const a = await api('/v1/account', key);
  const summary = el('section', { class: 'card' }, el('h2', { text: 'Account' }), kv([
    ['account', el('span', { class: 'mono', id: 'account-id' }, a.id)],
    ['identity', a.identity || '—'],
    ['balances', el('span', { id: 'balances' }, amounts(a.balances))],
    ['held', amounts(a.held)],
    ['spent today', el('span', { id: 'spent-today' }, amounts(a.spent_today))],
    ['scope', el('pre', {}, JSON.stringify(a.scope || {}, null, 2))],
  ]));
  const rows = [];
  for (const c of (a.channels || []).slice(0, 100)) {
    const voucher = el('td', { class: 'mono' }, '…');
    rows.push(el('tr', { class: 'channel' },
      el('td', { class: 'mono', text: c.id }), el('td', { class: 'mono', text: c.provider }),
      el('td', { class: 'num', text: whole(c.deposit) + ' ' + c.asset }), el('td', { class: 'num', text: whole(c.spent) }),
      el('td', { class: 'num', text: c.nonce }), el('td', { text: c.state }), voucher));
    api('/v1/channels/' + encodeURIComponent(c.id) + '/voucher', key)
      .then((v) => voucher.replaceChildren('nonce ' + v.nonce + ' · ' + whole(v.cumulative_spent) + ' ' + v.asset + (v.provider_signature ? ' · countersigned' : ' · not countersigned')))
      .catch(() => voucher.replaceChildren('none yet'));
  }
  const channels = el('section', { class: 'card' }, el('h2', { text: 'Channels' }),
    rows.length ? table(['channel', 'provider', 'deposit', 'spent', 'nonce', 'state', 'latest voucher'], rows) : el('p', { class: 'muted' }, 'No channel yet: one opens with the first paid request.'));
  let agents;
  try {
    const list = await api('/v1/account/agents', key);
    const arows = (list.data || []).map((k) => el('tr', {},
      el('td', { text: k.name || k.key_id }), el('td', { class: 'mono', text: k.identity }),
      el('td', {}, el('pre', {}, JSON.stringify(k.scope || {})))));
    agents = arows.length ? table(['agent key', 'identity', 'scope'], arows) : el('p', { class: 'muted' }, 'No agent keys on this account.');
  } catch (e) { agents = errorBox(e); }
  return [summary, channels, el('section', { class: 'card' }, el('h2', { text: 'Agents' }), agents)];
}

// ---------- operator ----------

let refresh = null;

async function operatorPage(root) {
  const body = el('div', { id: 'operator-body' });
  const load = async () => {
    const token = sessionStorage.getItem(ADMIN);
    if (!token) { body.replaceChildren('Paste the admin token to see the network.'); return; }
    try { body.replaceChildren(...await operatorView(token)); } catch (e) { body.replaceChildren(errorBox(e)); }
  };
  root.append(el('section', { class: 'card' }, el('h2', { text: 'Admin token' }), keyField(ADMIN, 'admin token', 'admin-token', load)), body);
  refresh = setInterval(() => { if (body.isConnected) load(); }, 5000);
  await load();
}

async function operatorView(token) {
  const [providers, pools, stats] = await Promise.all([
    api('/admin/providers', token), api('/admin/pools', token), api('/admin/stats', token)]);
  const slashes = providers.slashes || [];
  const rows = (providers.data || []).map((p) => {
    const mine = slashes.filter((s) => s.provider === p.id);
    const rate = p.total ? (100 * p.failed / p.total).toFixed(1) + '%' : '—';
    const v = p.attestation;
    const tee = v ? (v.trusted ? 'trusted ' + (v.tee_kind || '') : 'untrusted: ' + (v.reasons || []).join('; ')) + ' · until ' + when(v.expires_at) : (p.tee || 'none');
    return el('tr', { class: 'provider' },
      el('td', { class: 'mono', text: p.id }),
      el('td', { class: 'status-' + p.status, text: p.status }),
      el('td', { text: p.breaker }),
      el('td', { class: 'num', text: p.ema_latency_ms == null ? '—' : p.ema_latency_ms.toFixed(0) + ' ms' }),
      el('td', { class: 'num', text: rate + ' of ' + p.total }),
      el('td', { class: 'num', text: whole(p.stake) }),
      el('td', { text: tee }),
      el('td', { class: 'num', text: mine.length ? mine.length + ' (' + whole(mine.reduce((t, s) => t + BigInt(s.amount), 0n)) + ')' : '0' }));
  });
  const prows = Object.entries(pools.pools || {}).map(([asset, p]) => el('tr', {},
    el('td', { text: asset }), el('td', { class: 'num', text: whole(p.treasury) }),
    el('td', { class: 'num', text: whole(p.burned) }), el('td', { class: 'num', text: whole(p.stakers) })));
  return [
    el('section', { class: 'card' }, el('h2', { text: 'Live' }), el('div', { class: 'stats' },
      el('div', {}, el('div', { class: 'stat', id: 'req-rate' }, stats.requests_per_second.toFixed(2)), el('div', { class: 'muted' }, 'requests / s (last 60 s)')),
      el('div', {}, el('div', { class: 'stat', id: 'err-rate' }, stats.errors_per_second.toFixed(2)), el('div', { class: 'muted' }, 'errors / s'))),
    el('h2', { text: 'Spend and tokens, last hour' }), chart(stats.minutes || [])),
    el('section', { class: 'card' }, el('h2', { text: 'Providers' }),
      table(['provider', 'status', 'breaker', 'EMA latency', 'failure rate', 'bond', 'TEE verdict', 'slashes'], rows)),
    el('section', { class: 'card' }, el('h2', { text: 'Pools' }), table(['asset', 'treasury', 'burned', 'stakers'], prows)),
  ];
}

// Tokens per minute as bars, spend per minute (all assets' base units) as a line.
function chart(minutes) {
  const W = 1000, H = 180, L = 40, B = 20, T = 10;
  const tokens = minutes.map((m) => m.tokens || 0);
  const spend = minutes.map((m) => Object.values(m.spend || {}).reduce((t, v) => t + Number(BigInt(v)) / 1e18, 0));
  const maxT = Math.max(1, ...tokens);
  const maxS = Math.max(1e-18, ...spend);
  const n = Math.max(1, minutes.length);
  const w = (W - L) / n;
  const y = (v, max) => H - B - (H - B - T) * (v / max);
  const s = svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'tokens and spend per minute' });
  s.append(svg('line', { class: 'axis', x1: L, y1: H - B, x2: W, y2: H - B }));
  tokens.forEach((t, i) => {
    if (!t) return;
    s.append(svg('rect', { class: 'tokens', x: L + i * w + 1, y: y(t, maxT), width: Math.max(1, w - 2), height: H - B - y(t, maxT) }));
  });
  const pts = spend.map((v, i) => `${(L + i * w + w / 2).toFixed(1)},${y(v, maxS).toFixed(1)}`).join(' ');
  s.append(svg('polyline', { class: 'spend', points: pts }));
  const label = (x, yy, text, anchor) => {
    const t = svg('text', { x, y: yy, 'text-anchor': anchor || 'start' });
    t.textContent = text;
    s.append(t);
  };
  label(2, T + 8, String(maxT));
  label(W - 2, T + 8, maxS.toPrecision(3), 'end');
  label(L, H - 4, '-60 min');
  label(W - 2, H - 4, 'now', 'end');
  return el('div', {}, s, el('div', { class: 'legend' },
    el('span', { class: 'l-tokens' }, '▮ tokens / min (max ' + maxT + ')'),
    el('span', { class: 'l-spend' }, '— spend / min in whole tokens (max ' + maxS.toPrecision(3) + ')')));
}

// ---------- routing ----------

function route() {
  if (refresh) { clearInterval(refresh); refresh = null; }
  const parts = (location.hash || '#/chat').slice(2).split('/');
  const page = parts[0] || 'chat';
  for (const a of document.querySelectorAll('header nav a')) a.classList.toggle('active', a.id === 'nav-' + page);
  const root = document.getElementById('app');
  root.replaceChildren();
  if (page === 'account') accountPage(root);
  else if (page === 'operator') operatorPage(root);
  else if (page === 'receipt') receiptPage(root, parts[1]);
  else {
    if (!chat.root) buildChat();
    root.append(chat.root);
  }
}

window.addEventListener('hashchange', route);
route();
