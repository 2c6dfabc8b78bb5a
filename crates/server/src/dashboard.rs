//! The web dashboard: one server-rendered page whose small script
//! (`/dashboard.js`, with `/dashboard.css`) reads the JSON API and the event
//! stream. It loads nothing from elsewhere, and has no inline script or style,
//! so the Content-Security-Policy can forbid both.

pub(crate) const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
header { background: #1d2330; color: #fff; padding: 10px 20px; display: flex; gap: 16px; align-items: baseline; }
header h1 { font-size: 18px; margin: 0; }
header .live { font-size: 12px; color: #9fb3c8; }
main { padding: 16px 20px; display: grid; gap: 16px; max-width: 1200px; }
section { background: #fff; border-radius: 6px; padding: 12px 16px; box-shadow: 0 1px 2px #0002; }
h2 { font-size: 15px; margin: 0 0 8px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e4e7eb; font-variant-numeric: tabular-nums; }
th { font-weight: 600; color: #52606d; font-size: 12px; }
code { font-size: 12px; }
form.start { display: flex; flex-wrap: wrap; gap: 8px; align-items: end; }
form.start label { display: flex; flex-direction: column; font-size: 12px; color: #52606d; }
input, select, button { font: inherit; padding: 4px 8px; }
button { cursor: pointer; border: 1px solid #9aa5b1; border-radius: 4px; background: #fff; }
button.abort { border-color: #c53030; color: #c53030; }
button.start { border-color: #2f855a; color: #2f855a; }
.msg { color: #c53030; min-height: 1em; }
.session { border: 1px solid #e4e7eb; border-radius: 6px; padding: 8px 12px; margin-bottom: 10px; }
.session .head { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
.state { font-weight: 600; text-transform: uppercase; font-size: 12px; padding: 1px 6px; border-radius: 3px; background: #e4e7eb; }
.state.running { background: #bee3f8; } .state.gathering { background: #fefcbf; }
.state.done { background: #c6f6d5; } .state.failed { background: #fed7d7; }
.bar { width: 220px; height: 12px; background: #e4e7eb; border-radius: 6px; overflow: hidden; }
.bar > div { height: 100%; background: #3182ce; width: 0; transition: width .2s; }
.result-done { color: #2f855a; } .result-bad { color: #c53030; }
.muted { color: #7b8794; font-size: 12px; }
header form { margin-left: auto; }
header button { color: #fff; background: transparent; border-color: #9fb3c8; }
progress { width: 220px; }
a { color: #2b6cb0; }
"#;

pub(crate) const SCRIPT: &str = r#"
const sessions = new Map();
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v; else if (k.startsWith('on')) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k == null ? '' : String(k)));
  return e;
}
function human(n) {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
}
function when(t) { return t ? new Date(t * 1000).toLocaleString() : ''; }
async function api(method, path, body) {
  const write = method !== 'GET';
  const r = await fetch(path, { method, headers: write ? { 'Content-Type': 'application/json' } : {}, body: write ? JSON.stringify(body || {}) : undefined, credentials: 'same-origin' });
  let j = null; try { j = await r.json(); } catch (e) {}
  if (!r.ok) throw new Error((j && j.error) || r.status + ' ' + r.statusText);
  return j;
}
async function loadImages() {
  const list = await api('GET', '/api/images');
  const body = document.getElementById('images-body'); body.replaceChildren();
  const sel = document.getElementById('f-image'); const keep = sel.value; sel.replaceChildren();
  for (const i of list) {
    const status = el('span', { class: 'muted' });
    const verify = el('button', { class: 'verify', onclick: async () => {
      status.textContent = 'verifying…';
      try { const r = await api('POST', '/api/images/' + encodeURIComponent(i.name) + '/verify'); status.textContent = r.ok ? 'intact' : r.error; }
      catch (e) { status.textContent = e.message; }
    } }, 'Verify');
    const del = el('button', { class: 'delete', onclick: async () => {
      if (!confirm('Delete image ' + i.name + '?')) return;
      try { await api('DELETE', '/api/images/' + encodeURIComponent(i.name)); await loadImages(); }
      catch (e) { status.textContent = e.message; }
    } }, 'Delete');
    const desc = el('input', { class: 'describe', value: i.description || '', placeholder: 'description', size: 24 });
    desc.addEventListener('change', async () => {
      try { await api('PUT', '/api/images/' + encodeURIComponent(i.name) + '/description', { description: desc.value }); status.textContent = 'saved'; }
      catch (e) { status.textContent = e.message; }
    });
    body.append(el('tr', { 'data-image': i.name }, el('td', {}, i.name), el('td', {}, desc), el('td', {}, human(i.size)), el('td', {}, human(i.stored_bytes)),
      el('td', {}, i.level), el('td', {}, el('code', {}, i.root_hash.slice(0, 16) + '…')), el('td', {}, when(i.created)), el('td', {}, when(i.verified)),
      el('td', {}, verify, ' ', del, ' ', status)));
    sel.append(el('option', { value: i.name }, i.name));
  }
  if (keep) sel.value = keep;
  if (!list.length) body.append(el('tr', {}, el('td', { colspan: 9, class: 'muted' }, 'No images yet: upload one below, or with img make http://SERVER/NAME -disk=SOURCE --token=…')));
}
function renderSession(s) {
  const live = s.state === 'gathering' || s.state === 'running';
  const box = el('div', { class: 'session', 'data-session-id': s.id, 'data-state': s.state });
  const buttons = [];
  if (s.state === 'gathering') buttons.push(el('button', { class: 'start', onclick: () => act('POST', '/api/sessions/' + s.id + '/start') }, 'Start now'));
  if (live) buttons.push(el('button', { class: 'abort', onclick: () => act('DELETE', '/api/sessions/' + s.id) }, 'Abort'));
  box.append(el('div', { class: 'head' }, el('strong', {}, s.name), el('span', { class: 'state ' + s.state }, s.state),
    el('span', { class: 'muted' }, '#' + s.id + ' · image ' + s.image + ' · run ' + s.run + ' · ' + human(s.disk_size) + (s.bytes_sent ? ' · sent ' + human(s.bytes_sent) : '')),
    ...buttons));
  if (s.error) box.append(el('div', { class: 'msg' }, s.error));
  const t = el('table', {}, el('tr', {}, el('th', {}, 'client'), el('th', {}, 'run'), el('th', {}, 'progress'), el('th', {}, ''), el('th', {}, 'rate'), el('th', {}, 'result'), el('th', {}, 'note')));
  for (const c of s.clients) {
    const pct = c.total ? Math.floor(100 * c.done / c.total) : 0;
    // Through the CSSOM: the CSP (no 'unsafe-inline') drops style="" attributes.
    const fill = el('div', { class: 'fill' }); fill.style.width = pct + '%';
    const bar = el('div', { class: 'bar' }, fill);
    const res = c.result == null ? (live ? '…' : '') : c.result;
    t.append(el('tr', { class: 'client-row', 'data-client': c.addr }, el('td', {}, c.host ? c.host + ' (' + c.addr + ')' : c.addr), el('td', {}, c.run), el('td', {}, bar),
      el('td', { class: 'pct' }, pct + '%'), el('td', {}, c.rate ? human(c.rate) + '/s' : ''),
      el('td', { class: c.result === 'done' ? 'result-done' : (c.result ? 'result-bad' : '') }, res),
      el('td', { class: 'muted note' }, c.note || '')));
  }
  if (!s.clients.length) t.append(el('tr', {}, el('td', { colspan: 7, class: 'muted' }, 'waiting for clients: img -session ' + s.name + ' -client -disk=TARGET')));
  box.append(t);
  if (s.queued.length) box.append(el('div', { class: 'muted queued' }, 'queued for the next run: ' + s.queued.join(', ')));
  return box;
}
function renderSessions() {
  const list = [...sessions.values()].sort((a, b) => b.id - a.id);
  const liveBox = document.getElementById('live'), pastBox = document.getElementById('past');
  liveBox.replaceChildren(); pastBox.replaceChildren();
  for (const s of list) ((s.state === 'gathering' || s.state === 'running') ? liveBox : pastBox).append(renderSession(s));
  if (!liveBox.children.length) liveBox.append(el('div', { class: 'muted' }, 'No session is running.'));
}
async function act(method, path) {
  try { await api(method, path); } catch (e) { document.getElementById('form-msg').textContent = e.message; }
}
async function loadSessions() {
  for (const s of await api('GET', '/api/sessions?limit=20')) sessions.set(s.id, s);
  renderSessions();
}
document.getElementById('start-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const f = ev.target, msg = document.getElementById('form-msg'); msg.textContent = '';
  const body = { name: f.name.value.trim(), image: f.image.value };
  if (f.clients.value) body.clients = Number(f.clients.value);
  if (f.timeout.value) body.timeout = Number(f.timeout.value);
  if (f.throttle.value) body.throttle = Number(f.throttle.value);
  if (f.key.value) body.key = f.key.value;
  try { const s = await api('POST', '/api/sessions', body); sessions.set(s.id, s); renderSessions(); }
  catch (e) { msg.textContent = e.message; }
});
async function loadHosts() {
  const list = await api('GET', '/api/hosts');
  const body = document.getElementById('hosts-body'); body.replaceChildren();
  for (const h of list) {
    const link = el('a', { href: '#host-' + h.id, class: 'host-link', onclick: (ev) => { ev.preventDefault(); showHost(h.id); } }, h.name || h.addr);
    body.append(el('tr', { class: 'host-row', 'data-host': h.name || h.addr }, el('td', {}, link), el('td', {}, h.addr), el('td', {}, el('code', {}, h.mac || '')),
      el('td', {}, h.last_image || ''), el('td', { class: h.last_result === 'done' ? 'result-done' : 'result-bad' }, h.last_result || ''), el('td', {}, when(h.last_seen))));
  }
  if (!list.length) body.append(el('tr', {}, el('td', { colspan: 6, class: 'muted' }, 'No host has taken part in a session yet.')));
}
async function showHost(id) {
  const h = await api('GET', '/api/hosts/' + id);
  const box = document.getElementById('host'); box.replaceChildren();
  box.append(el('h2', {}, 'Host ' + (h.name || h.addr)), el('div', { class: 'muted' }, h.addr + (h.mac ? ' · ' + h.mac : '') + ' · first seen ' + when(h.first_seen)));
  const t = el('table', { id: 'host-history' }, el('tr', {}, el('th', {}, 'when'), el('th', {}, 'session'), el('th', {}, 'image'), el('th', {}, 'root hash'), el('th', {}, 'result'), el('th', {}, 'note')));
  for (const r of h.history) t.append(el('tr', { class: 'history-row' }, el('td', {}, when(r.when)), el('td', {}, '#' + r.session + ' ' + r.session_name + ' run ' + r.run),
    el('td', {}, r.image), el('td', {}, el('code', {}, (r.root_hash || '').slice(0, 16))), el('td', { class: r.result === 'done' ? 'result-done' : 'result-bad' }, r.result || '…'), el('td', { class: 'muted' }, r.note)));
  box.append(t); box.hidden = false;
}
document.getElementById('upload-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const f = ev.target, msg = document.getElementById('upload-msg'), bar = document.getElementById('upload-progress');
  const file = f.file.files[0]; if (!file) return;
  const name = (f.uname.value || file.name).trim();
  const xhr = new XMLHttpRequest();
  xhr.open('PUT', '/api/images/' + encodeURIComponent(name));
  xhr.setRequestHeader('Content-Type', 'application/octet-stream');
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) { bar.max = e.total; bar.value = e.loaded; msg.textContent = human(e.loaded) + ' of ' + human(e.total); } };
  xhr.onload = () => {
    let j = null; try { j = JSON.parse(xhr.responseText); } catch (e) {}
    msg.textContent = xhr.status === 201 ? 'uploaded and verified: ' + name : ((j && j.error) || xhr.status + ' ' + xhr.statusText);
    msg.dataset.status = String(xhr.status);
    loadImages().catch(() => {});
  };
  xhr.onerror = () => { msg.textContent = 'the upload failed'; msg.dataset.status = 'error'; };
  bar.value = 0; msg.dataset.status = ''; msg.textContent = 'uploading…';
  xhr.send(file);
});
function reloadAll() {
  sessions.clear();
  loadSessions().catch(() => {}); loadImages().catch(() => {}); loadHosts().catch(() => {});
}
// Whether the stream broke since the page last had the whole state.
let broken = false;
function connect() {
  const es = new EventSource('/api/events');
  const dot = document.getElementById('conn');
  es.onopen = () => { dot.textContent = 'live'; };
  es.onerror = () => {
    dot.textContent = 'reconnecting…'; broken = true;
    // EventSource retries a lost connection by itself, but gives up on an
    // error answer: a restarted server has forgotten this login (401).
    if (es.readyState !== EventSource.CLOSED) return;
    es.close();
    fetch('/api/sessions?limit=1', { credentials: 'same-origin' }).then((r) => {
      if (r.status === 401) { dot.textContent = 'logged out'; location.assign('/'); }
      else setTimeout(connect, 2000);
    }, () => setTimeout(connect, 2000));
  };
  es.addEventListener('hello', () => { if (broken) { broken = false; reloadAll(); } });
  es.addEventListener('reload', () => { broken = false; reloadAll(); });
  es.addEventListener('session', (e) => {
    const s = JSON.parse(e.data); sessions.set(s.id, s); renderSessions();
    if (s.state === 'done' || s.state === 'failed') loadHosts().catch(() => {});
  });
  es.addEventListener('images', () => loadImages().catch(() => {}));
}
loadHosts().catch(() => {});
loadImages().catch((e) => { document.getElementById('form-msg').textContent = e.message; });
loadSessions().catch((e) => { document.getElementById('form-msg').textContent = e.message; });
connect();
"#;

/// The dashboard (for a request that carried the token).
pub(crate) fn page() -> String {
    PAGE.to_string()
}

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>imgcast server</title><link rel="stylesheet" href="/dashboard.css"></head>
<body>
<header><h1>imgcast server</h1><span class="live" id="conn">connecting…</span>
<form method="post" action="/logout"><button type="submit" id="logout">Log out</button></form></header>
<main>
<section><h2>Images</h2>
<table><thead><tr><th>name</th><th>description</th><th>disk size</th><th>stored</th><th>level</th><th>root hash</th><th>created</th><th>verified</th><th></th></tr></thead>
<tbody id="images-body"></tbody></table>
<form class="start" id="upload-form">
<label>image file<input type="file" name="file" id="u-file" required></label>
<label>name<input name="uname" id="u-name" pattern="[A-Za-z0-9._-]+" placeholder="the file's name"></label>
<button type="submit" id="u-submit">Upload</button>
<progress id="upload-progress" max="1" value="0"></progress>
</form><div class="msg" id="upload-msg"></div></section>
<section><h2>Start a session</h2>
<form class="start" id="start-form">
<label>session name<input name="name" id="f-name" required pattern="[A-Za-z0-9._-]+" placeholder="lab3"></label>
<label>image<select name="image" id="f-image"></select></label>
<label>clients<input name="clients" id="f-clients" type="number" min="1" placeholder="press start"></label>
<label>timeout (s)<input name="timeout" id="f-timeout" type="number" min="0" placeholder="300"></label>
<label>throttle (ms)<input name="throttle" id="f-throttle" type="number" min="0" step="any" placeholder="adaptive"></label>
<label>key<input name="key" id="f-key" type="password" autocomplete="off"></label>
<button type="submit" id="f-submit">Start session</button>
</form><div class="msg" id="form-msg"></div></section>
<section><h2>Live sessions</h2><div id="live"></div></section>
<section><h2>Recent sessions</h2><div id="past"></div></section>
<section><h2>Hosts</h2>
<table><thead><tr><th>host</th><th>address</th><th>MAC</th><th>last image</th><th>result</th><th>last seen</th></tr></thead>
<tbody id="hosts-body"></tbody></table></section>
<section id="host" hidden></section>
</main>
<script src="/dashboard.js"></script>
</body></html>"#;

/// `s` with `&`, `<`, `>`, `"` and `'` escaped, for text put into a page.
pub(crate) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The login form, shown to a request without the token.
pub(crate) fn login_page(error: Option<&str>) -> String {
    let msg = error.map_or(String::new(), |e| {
        format!(r#"<p class="msg">{}</p>"#, escape_html(e))
    });
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imgcast server: log in</title><link rel="stylesheet" href="/dashboard.css"></head>
<body><header><h1>imgcast server</h1></header>
<main><section><h2>Log in</h2>
<p>Give the API token (printed when the server first started, and kept in its token file).</p>
{msg}
<form method="post" action="/login" id="login-form">
<input type="password" name="token" id="token" autocomplete="current-password" size="52" required>
<button type="submit" id="login">Log in</button>
</form></section></main></body></html>"#
    )
}
