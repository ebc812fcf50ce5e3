// The hub's web app: doctors log in (password and authenticator, or their hospital's
// single sign-on), see the live queue of consult requests and cases of their organisation,
// claim a request, read the case, look at the X-ray at full resolution, and write notes and
// prescription drafts back to the case. Admins see who opened a patient's record and the
// emergency logins to review. It talks to its own hub only.
import { openViewer } from './viewer.js';

const $ = (id) => document.getElementById(id);
const state = { me: null, events: null, reloadTimer: null, route: '' };
// Timings the end-to-end test reads: when each case's X-ray was first on screen.
window.medvanShown = {};

// Replaces an element's children, leaving out the absent ones (null, false).
function fill(el, ...kids) {
  el.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false));
}

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function toast(text, bad = false) {
  const t = $('toast');
  t.textContent = text;
  t.className = bad ? 'toast show bad' : 'toast show';
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = 'toast'; }, bad ? 8000 : 3000);
}

function cookie(name) {
  return document.cookie.split(';').map((c) => c.trim()).find((c) => c.startsWith(`${name}=`))?.slice(name.length + 1);
}

class ApiError extends Error {
  constructor(status, message, data) { super(message); this.status = status; this.data = data; }
}

// The browser's session is its cookie; a state-changing request carries the CSRF token the
// login put in a cookie this script can read (another site cannot).
async function api(method, path, body, headers = {}) {
  const opts = { method, headers: { Accept: 'application/json', ...headers }, credentials: 'same-origin' };
  if (method !== 'GET') opts.headers['X-CSRF-Token'] = cookie('__Host-medvan_csrf') || '';
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch {
    throw new ApiError(0, 'The hub did not answer. Check your network and try again.');
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!resp.ok) {
    if (resp.status === 401 && state.me && !path.startsWith('/api/v1/auth/')) {
      state.me = null;
      renderLogin('Your session ended. Log in again.');
    }
    throw new ApiError(resp.status, (data && data.error) || `The hub answered ${resp.status}.`, data);
  }
  return data;
}

function time(at) {
  if (!at) return '';
  return new Date(at).toLocaleString([], { hour: '2-digit', minute: '2-digit', day: '2-digit', month: 'short' });
}

// ---- login ------------------------------------------------------------------------------

async function renderLogin(message) {
  stopEvents();
  $('nav').hidden = true;
  $('logout').hidden = true;
  $('who').textContent = '';
  const error = h('p', { class: 'error', role: 'alert', id: 'login-error' }, message || '');
  const org = h('input', { id: 'org', name: 'org', autocomplete: 'organization', required: true, value: localStorage.getItem('medvan.org') || '' });
  const user = h('input', { id: 'username', name: 'username', autocomplete: 'username', required: true });
  const pw = h('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const code = h('input', { id: 'totp', name: 'totp', inputmode: 'numeric', autocomplete: 'one-time-code', pattern: '[0-9]{6}' });
  const codeBox = h('div', { hidden: true }, h('label', { for: 'totp' }, 'Code from your authenticator app'), code);
  const form = h('form', { 'aria-labelledby': 'login-title', onsubmit: async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    localStorage.setItem('medvan.org', org.value.trim());
    const body = { org: org.value.trim(), username: user.value.trim(), password: pw.value };
    if (code.value) body.totp = code.value.trim();
    try {
      const out = await api('POST', '/api/v1/auth/login', body);
      if (out && out.mfa_enrolment_required) return renderEnrol(out.enrolment_token);
      start();
    } catch (e) {
      if (e.data && e.data.second_factor_required) {
        codeBox.hidden = false;
        code.focus();
        error.textContent = code.value ? e.message : 'Enter the code from your authenticator app.';
      } else {
        error.textContent = e.message;
      }
    }
  } },
  h('label', { for: 'org' }, 'Organisation'), org,
  h('label', { for: 'username' }, 'User name'), user,
  h('label', { for: 'password' }, 'Password'), pw,
  codeBox,
  h('div', { class: 'row', style: 'margin-top:14px' }, h('button', { type: 'submit', id: 'login' }, 'Log in')));
  const sso = h('div', {});
  fill($('main'), h('h1', { id: 'login-title' }, 'Log in'), form, error, sso,
    h('p', {}, h('a', { href: '#/forgot' }, 'Forgot your password?')));
  try {
    const list = await api('GET', '/api/v1/auth/sso');
    if (list.length) {
      sso.append(h('h2', {}, 'Or log in with your hospital account'),
        h('div', { class: 'row' }, list.map((p) => h('a', { class: 'button', href: `${p.start}?return_to=${encodeURIComponent('/#/queue')}` },
          h('span', {}, `${p.name} (${p.org})`)))));
    }
  } catch { /* no SSO list: password logins only */ }
}

async function renderEnrol(token) {
  const error = h('p', { class: 'error', role: 'alert' });
  let setup;
  try { setup = await api('POST', '/api/v1/auth/mfa/enrol', { enrolment_token: token }); } catch (e) { return renderLogin(e.message); }
  const code = h('input', { id: 'enrol-code', inputmode: 'numeric', autocomplete: 'one-time-code' });
  fill($('main'), h('h1', {}, 'Set up your authenticator'),
    h('p', {}, 'Your role needs a second factor. Add this key to your authenticator app, then enter the code it shows.'),
    h('div', { class: 'card' }, h('strong', {}, 'Key: '), h('code', { id: 'totp-secret' }, setup.secret)),
    h('p', { class: 'muted' }, 'Or open this link on the phone with the app: ', h('code', {}, setup.otpauth_uri || '')),
    h('h2', {}, 'Recovery codes (each works once; keep them safe)'),
    h('ul', {}, (setup.recovery_codes || []).map((c) => h('li', {}, h('code', {}, c)))),
    h('label', { for: 'enrol-code' }, 'Code from the app'), code,
    h('div', { class: 'row', style: 'margin-top:12px' }, h('button', { onclick: async () => {
      try { await api('POST', '/api/v1/auth/mfa/confirm', { enrolment_token: token, code: code.value.trim() }); start(); } catch (e) { error.textContent = e.message; }
    } }, 'Confirm')),
    error);
}

function renderForgot() {
  const error = h('p', { role: 'status' });
  const org = h('input', { id: 'f-org', value: localStorage.getItem('medvan.org') || '' });
  const user = h('input', { id: 'f-user', autocomplete: 'username' });
  fill($('main'), h('h1', {}, 'Forgot your password'),
    h('p', {}, 'We mail a link to the address on your account. It works once, for 30 minutes.'),
    h('label', { for: 'f-org' }, 'Organisation'), org, h('label', { for: 'f-user' }, 'User name'), user,
    h('div', { class: 'row', style: 'margin-top:12px' }, h('button', { onclick: async () => {
      try {
        const out = await api('POST', '/api/v1/auth/password/forgot', { org: org.value.trim(), username: user.value.trim() });
        error.textContent = out.message;
      } catch (e) { error.textContent = e.message; }
    } }, 'Send me a link'), h('a', { href: '#/' }, 'Back to log in')),
    error);
}

function renderReset() {
  const token = new URLSearchParams(location.hash.split('?')[1] || '').get('token')
    || new URLSearchParams(location.hash.slice(1)).get('token');
  const error = h('p', { class: 'error', role: 'alert' });
  const pw = h('input', { id: 'new-pw', type: 'password', autocomplete: 'new-password' });
  fill($('main'), h('h1', {}, 'Choose a new password'),
    token ? null : h('p', { class: 'error' }, 'This link has no token: open the link from the mail again.'),
    h('label', { for: 'new-pw' }, 'New password (at least 12 characters)'), pw,
    h('div', { class: 'row', style: 'margin-top:12px' }, h('button', { onclick: async () => {
      try {
        await api('POST', '/api/v1/auth/password/reset', { token, password: pw.value });
        history.replaceState(null, '', '/');
        renderLogin('Your password is set. Log in with it.');
      } catch (e) { error.textContent = e.message; }
    } }, 'Set password')),
    error);
}

async function start() {
  try {
    state.me = await api('GET', '/api/v1/auth/me');
  } catch {
    return renderLogin();
  }
  $('who').textContent = `${state.me.user} · ${state.me.org}`;
  $('nav').hidden = false;
  $('logout').hidden = false;
  $('nav-admin').hidden = !state.me.permissions.includes('audit_read');
  if (!location.hash || location.hash === '#/' || location.hash === '#') {
    location.hash = state.me.permissions.includes('consult_answer') || state.me.permissions.includes('case_read') ? '#/queue' : '#/admin';
  } else {
    route();
  }
}

// ---- the live queue ---------------------------------------------------------------------

// The live updates: the hub's event stream. The browser reconnects a dropped stream by
// itself, but gives up on an answer like 503 (a hub restarting) or 401; then the page opens
// it again, backing off, and reloads what it shows each time, so a queue never silently
// stops updating.
function startEvents(onChange, backoff = 1000) {
  stopEvents();
  const es = new EventSource('/api/v1/events');
  const poke = () => {
    clearTimeout(state.reloadTimer);
    state.reloadTimer = setTimeout(onChange, 200);
  };
  es.addEventListener('case', poke);
  es.addEventListener('tick', poke);
  es.addEventListener('open', () => { backoff = 1000; poke(); });
  es.onerror = () => {
    if (es.readyState !== EventSource.CLOSED || state.events !== es) return;
    state.retryTimer = setTimeout(() => {
      if (state.events === es) startEvents(onChange, Math.min(backoff * 2, 30000));
    }, backoff);
  };
  state.events = es;
}

function stopEvents() {
  if (state.events) state.events.close();
  state.events = null;
  clearTimeout(state.reloadTimer);
  clearTimeout(state.retryTimer);
}

async function renderQueue() {
  const main = $('main');
  const onCall = h('button', { id: 'on-call', 'aria-pressed': 'false' }, 'On call');
  const consults = h('div', { id: 'consults', 'aria-live': 'polite' });
  const cases = h('div', { id: 'cases' });
  fill(main, h('h1', {}, 'Consult requests'),
    state.me.permissions.includes('consult_answer') ? h('div', { class: 'row' }, onCall, h('span', { id: 'on-call-who', class: 'muted' })) : null,
    consults, h('h2', {}, 'Cases of your organisation'), cases);
  const load = async () => {
    if (state.route !== 'queue') return;
    try {
      if (state.me.permissions.includes('consult_answer')) {
        const oc = await api('GET', '/api/v1/consults/on-call');
        onCall.setAttribute('aria-pressed', String(oc.on_call));
        onCall.textContent = oc.on_call ? 'On call (tap to go off call)' : 'Off call (tap to go on call)';
        $('on-call-who').textContent = oc.doctors_on_call.length ? `On call now: ${oc.doctors_on_call.join(', ')}` : 'Nobody is on call: requests go to every doctor.';
        const list = await api('GET', '/api/v1/consults');
        fill(consults, ...(list.length ? list.map(consultCard) : [h('p', { class: 'muted' }, 'No request for you now. New ones appear here by themselves.')]));
      }
      const all = await api('GET', '/api/v1/cases');
      all.sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
      fill(cases, h('table', {}, h('caption', { class: 'visually-hidden' }, 'Cases'),
        h('thead', {}, h('tr', {}, ['Opened', 'Van', 'Patient', 'Complaint', 'Status', ''].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, all.map((c) => h('tr', {},
          h('td', {}, time(c.created_at)), h('td', {}, c.van), h('td', {}, c.patient_name || c.temp_patient_id || '—'),
          h('td', {}, c.chief_complaint || '—'), h('td', {}, (c.status || '—').replace(/_/g, ' '), c.has_conflicts ? ' ⚠ conflict' : ''),
          h('td', {}, h('a', { href: `#/case/${c.id}` }, 'Open')))))));
    } catch (e) {
      fill(consults, h('p', { class: 'error', role: 'alert' }, e.message));
    }
  };
  onCall.addEventListener('click', async () => {
    const now = onCall.getAttribute('aria-pressed') === 'true';
    try { await api('PUT', '/api/v1/consults/on-call', { on_call: !now }); toast(now ? 'You are off call.' : 'You are on call.'); } catch (e) { toast(e.message, true); }
    load();
  });
  await load();
  startEvents(load);
}

function consultCard(c) {
  const claim = async () => {
    try {
      await api('POST', `/api/v1/consults/${c.case_id}/${encodeURIComponent(c.consult_id)}/claim`);
      location.hash = `#/case/${c.case_id}?consult=${encodeURIComponent(c.consult_id)}`;
    } catch (e) { toast(e.message, true); }
  };
  return h('article', { class: 'card', 'data-consult': c.consult_id, 'aria-label': `Consult from ${c.van}` },
    h('div', { class: 'row' },
      h('span', { class: `badge ${c.urgency}` }, c.urgency),
      c.escalated ? h('span', { class: 'badge escalated' }, 'escalated') : null,
      h('strong', {}, `${c.van}: ${c.reason}`)),
    h('p', {}, `Patient ${c.patient || 'unnamed'}${c.chief_complaint ? `, ${c.chief_complaint}` : ''}; ${c.images} image(s). Asked by ${c.requested_by} at ${time(c.requested_at)}.`),
    h('p', {}, c.state === 'claimed' ? `Claimed by ${c.claimed_by}.` : c.state === 'answered' ? 'Answered.' : 'Waiting for a doctor.'),
    h('div', { class: 'row' },
      c.state === 'waiting' ? h('button', { onclick: claim, class: 'claim' }, 'Claim and open') : null,
      h('a', { href: `#/case/${c.case_id}?consult=${encodeURIComponent(c.consult_id)}` }, 'Open case')));
}

// ---- a case -------------------------------------------------------------------------------

async function renderCase(id, consultId) {
  const main = $('main');
  fill(main, h('p', {}, 'Loading the case…'));
  let v;
  try { v = await api('GET', `/api/v1/cases/${id}`); } catch (e) { fill(main, h('p', { class: 'error', role: 'alert' }, e.message)); return; }
  const f = (p) => v.fields?.[p]?.value;
  const name = [f('patient.first_name'), f('patient.last_name')].filter(Boolean).join(' ') || v.temp_patient_id || 'Unnamed patient';
  const xray = h('section', { 'aria-labelledby': 'xray-title' }, h('h2', { id: 'xray-title' }, 'X-ray'));
  const status = h('p', { role: 'status', id: 'viewer-status', class: 'muted' });
  const note = h('textarea', { id: 'note-text' });
  const noteError = h('p', { class: 'error', role: 'alert' });
  const writeNote = async () => {
    if (!note.value.trim()) { noteError.textContent = 'Write the note first.'; return; }
    const edit = { op: 'add_note', text: note.value.trim() };
    if (consultId) edit.consult_id = consultId;
    try {
      await api('POST', `/api/v1/cases/${id}/edits`, { edits: [edit] });
      toast('Note saved; it goes to the van with the next sync.');
      note.value = '';
      renderCase(id, consultId);
    } catch (e) { noteError.textContent = e.message; }
  };
  fill(main, 
    h('div', { class: 'row' }, h('a', { href: '#/queue' }, '← Queue')),
    h('h1', {}, `${name} · ${v.van}`),
    h('p', {}, `Status: ${(v.status || 'none yet').replace(/_/g, ' ')} · opened ${time(v.created_at)} by ${v.created_by}`,
      f('situation.chief_complaint') ? ` · complaint: ${f('situation.chief_complaint')}` : ''),
    v.conflicts.length ? h('section', {}, h('h2', {}, 'Conflicts'), v.conflicts.map((c) => h('div', { class: 'conflict' },
      h('strong', {}, c.path), ': ', c.values.map((x) => `${JSON.stringify(x.value)} (${x.by}, ${time(x.at)})`).join(' vs ')))) : null,
    h('div', { class: 'cols' },
      h('div', {},
        xray, status,
        h('section', {}, h('h2', {}, 'Write a note to the crew'),
          h('label', { for: 'note-text' }, consultId ? 'Your answer to the consult' : 'Note'), note,
          h('div', { class: 'row', style: 'margin-top:8px' }, h('button', { onclick: writeNote, id: 'send-note' }, 'Send note')), noteError),
        prescriptionForm(id)),
      h('div', {},
        h('section', {}, h('h2', {}, 'Consults'), (v.consults || []).map((c) => h('div', { class: 'note' }, `${time(c.at)} ${c.by}: ${c.reason} (${c.urgency || 'routine'})`))),
        h('section', {}, h('h2', {}, 'Notes'), (v.notes || []).length ? v.notes.map((n) => h('div', { class: 'note' }, h('strong', {}, `${n.by}, ${time(n.at)}: `), n.text)) : h('p', { class: 'muted' }, 'No notes yet.')),
        h('section', {}, h('h2', {}, 'Vitals'), vitalsChart(v.vitals || []), vitalsTable(v.vitals || [])),
        chatSection(id, v),
        h('section', {}, h('h2', {}, 'Interventions and medications'), h('ul', {},
          [...(v.procedures || []), ...(v.medications_given || [])].map((x) => h('li', {}, `${time(x.performed_at || x.given_at || x.at)} ${x.procedure || `${x.medication} ${x.dose} ${x.unit} ${x.route}`} (${x.by})`)))),
        h('section', {}, h('h2', {}, 'Narrative'), h('p', {}, v.narrative || '—')),
        h('section', {}, h('h2', {}, 'Timeline'), h('ol', {}, (v.timeline || []).map((t) => h('li', {}, `${time(t.at)} ${(t.status || t.op || t.kind || '').replace(/_/g, ' ')} (${t.by})`)))))));
  showXray(v, xray, status);
  // Anything new in the case (a medication given, a status, a field) redraws it, unless the
  // doctor is typing in one of its forms: then the next change redraws it.
  startEvents(async () => {
    if (state.route !== `case/${id}`) return;
    const again = await api('GET', `/api/v1/cases/${id}`).catch(() => null);
    if (!again || state.route !== `case/${id}` || JSON.stringify(again) === JSON.stringify(v)) return;
    const typing = [...main.querySelectorAll('input, textarea')].some((f) => f.value.trim() !== '');
    if (!typing) renderCase(id, consultId);
  });
}

// Heart rate, systolic pressure and SpO2 over time, drawn here (no chart library).
function vitalsChart(list) {
  if (list.length < 1) return null;
  const W = 640; const H = 220; const pad = 34;
  const series = [['heart_rate', '#a3121b', 'Heart rate'], ['systolic', '#0a4a94', 'Systolic BP'], ['spo2', '#0a6b2d', 'SpO2']];
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `Vitals over time: ${series.map(([k, , n]) => `${n} ${list.map((x) => x[k]).filter((x) => x !== undefined).join(', ')}`).join('; ')}`);
  const x = (i) => pad + (list.length === 1 ? (W - 2 * pad) / 2 : (i * (W - 2 * pad)) / (list.length - 1));
  const y = (val) => H - pad - (Math.min(Math.max(val, 0), 220) / 220) * (H - 2 * pad);
  for (const [k, color] of series) {
    const pts = list.map((r, i) => (r[k] === undefined ? null : [x(i), y(r[k])])).filter(Boolean);
    if (!pts.length) continue;
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', pts.map((p) => p.join(',')).join(' '));
    line.setAttribute('fill', 'none'); line.setAttribute('stroke', color); line.setAttribute('stroke-width', '3');
    svg.append(line);
    for (const [cx, cy] of pts) {
      const dot = document.createElementNS(ns, 'circle');
      dot.setAttribute('cx', cx); dot.setAttribute('cy', cy); dot.setAttribute('r', '5'); dot.setAttribute('fill', color);
      svg.append(dot);
    }
  }
  return h('figure', { style: 'margin:0' }, svg,
    h('figcaption', {}, series.map(([, c, n]) => h('span', { style: `color:${c}; font-weight:bold; margin-right:14px` }, `— ${n}`))));
}

// Messages beside the consult, kept in the case (they reach the van with the sync).
function chatSection(id, v) {
  const text = h('input', { id: 'chat-text', 'aria-label': 'Message to the crew' });
  const error = h('p', { class: 'error', role: 'alert' });
  return h('section', {}, h('h2', {}, 'Chat with the crew'),
    h('div', { id: 'chat', 'aria-live': 'polite' }, (v.chat || []).length
      ? v.chat.map((m) => h('div', { class: 'note' }, h('strong', {}, `${m.by}, ${time(m.at)}: `), m.text))
      : h('p', { class: 'muted' }, 'No messages yet.')),
    h('div', { class: 'row' }, text, h('button', { onclick: async () => {
      if (!text.value.trim()) return;
      try {
        await api('POST', `/api/v1/cases/${id}/edits`, { edits: [{ op: 'add_chat', text: text.value.trim() }] });
        text.value = '';
        renderCase(id, new URLSearchParams(location.hash.split('?')[1] || '').get('consult'));
      } catch (e) { error.textContent = e.message; }
    } }, 'Send')), error);
}

function vitalsTable(list) {
  if (!list.length) return h('p', { class: 'muted' }, 'No vitals yet.');
  const cols = [['heart_rate', 'HR'], ['systolic', 'SBP'], ['diastolic', 'DBP'], ['spo2', 'SpO2'], ['respiratory_rate', 'RR'], ['temperature_c', 'Temp'], ['gcs_total', 'GCS'], ['pain', 'Pain']];
  return h('table', {}, h('caption', { class: 'visually-hidden' }, 'Vitals'),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Time'), cols.map(([, n]) => h('th', { scope: 'col' }, n)))),
    h('tbody', {}, list.map((x) => h('tr', {}, h('td', {}, time(x.taken_at || x.at)), cols.map(([k]) => h('td', {}, x[k] ?? ''))))));
}

// The study UID of a case's images: the case id under the UUID arc (as the van writes it).
function studyUid(caseId) {
  return `2.25.${BigInt(`0x${caseId.replace(/-/g, '')}`).toString()}`;
}

// An attachment's bytes as an object URL, waiting for it to arrive from the van: the case
// can name an image before its bytes are at the hub.
async function attachmentUrl(caseId, sha, tries = 120) {
  for (let i = 0; i < tries; i++) {
    const r = await fetch(`/api/v1/cases/${caseId}/attachments/${sha}`, { credentials: 'same-origin' }).catch(() => null);
    if (r && r.ok) return URL.createObjectURL(await r.blob());
    if (r && r.status !== 404 && r.status !== 409 && r.status !== 503) return null;
    await new Promise((res) => setTimeout(res, 500));
  }
  return null;
}

async function showXray(v, box, status) {
  const previews = (v.attachments || []).filter((a) => a.kind === 'xray_preview');
  const dicoms = (v.attachments || []).filter((a) => a.media_type === 'application/dicom');
  if (!previews.length && !dicoms.length) { box.append(h('p', { class: 'muted' }, 'No X-ray on this case yet.')); return; }
  // The previews come first (small, sent first by the van); the full-resolution images
  // follow and open in the viewer.
  const strip = h('div', { class: 'row', role: 'list', 'aria-label': 'X-ray previews' });
  const holder = h('div', {});
  const study = studyUid(v.id);
  box.append(strip, holder, h('p', {}, 'For another DICOMweb viewer: ', h('code', { id: 'dicomweb-url' }, `${location.origin}/dicomweb/studies/${study}`)));
  for (const p of previews) {
    const img = h('img', { alt: `X-ray preview: ${p.label || 'image'}`, width: '220', 'data-preview': p.sha256 });
    strip.append(h('figure', { role: 'listitem', style: 'margin:0' }, img, h('figcaption', {}, p.label || 'preview')));
    attachmentUrl(v.id, p.sha256).then((url) => {
      if (!url) return;
      img.onload = () => { window.medvanShown[p.sha256] = Date.now(); };
      img.src = url;
    });
  }
  const sopOf = (previewSha) => (v.procedures || []).find((x) => x.preview_sha256 === previewSha)?.sop_instance_uid;
  const wanted = previews.map((p) => sopOf(p.sha256)).filter(Boolean);
  let opened = null;
  for (let attempt = 0; attempt < 100 && document.contains(box); attempt++) {
    let instances = [];
    try { instances = await api('GET', `/dicomweb/studies/${study}/instances`, undefined, { Accept: 'application/dicom+json' }); } catch { instances = []; }
    const bySop = new Map(instances.map((i) => [i['00080018']?.Value?.[0], i]));
    // The newest image whose full resolution is here.
    const sop = [...wanted].reverse().find((s) => bySop.has(s)) || instances[instances.length - 1]?.['00080018']?.Value?.[0];
    if (sop && sop !== opened) {
      const i = bySop.get(sop);
      const url = `/dicomweb/studies/${study}/series/${i['0020000E']?.Value?.[0]}/instances/${sop}`;
      openViewer(holder, url, (text, bad) => { status.textContent = text; status.className = bad ? 'error' : 'muted'; });
      opened = sop;
    }
    if (!sop) status.textContent = 'The full-resolution image is on its way from the van.';
    if (opened && (wanted.length === 0 || opened === wanted[wanted.length - 1])) return;
    await new Promise((res) => setTimeout(res, 3000));
  }
}

function prescriptionForm(id) {
  const med = h('input', { id: 'rx-med', placeholder: 'salbutamol' });
  const dose = h('input', { id: 'rx-dose', inputmode: 'decimal', placeholder: '100' });
  const unit = h('select', { id: 'rx-unit' }, ['mg', 'mcg', 'g', 'ml'].map((u) => h('option', { value: u }, u)));
  const routeSel = h('select', { id: 'rx-route' }, ['oral', 'inhalation', 'intravenous', 'intramuscular', 'intranasal', 'topical'].map((u) => h('option', { value: u }, u)));
  const freq = h('input', { id: 'rx-freq', placeholder: 'every 4 hours as needed' });
  const days = h('input', { id: 'rx-days', inputmode: 'numeric', placeholder: '5' });
  const error = h('p', { class: 'error', role: 'alert' });
  return h('section', {}, h('h2', {}, 'Prescription draft'),
    h('label', { for: 'rx-med' }, 'Medication'), med, h('label', { for: 'rx-dose' }, 'Dose'), dose,
    h('label', { for: 'rx-unit' }, 'Unit'), unit, h('label', { for: 'rx-route' }, 'Route'), routeSel,
    h('label', { for: 'rx-freq' }, 'How often'), freq, h('label', { for: 'rx-days' }, 'For how many days'), days,
    h('div', { class: 'row', style: 'margin-top:8px' }, h('button', { onclick: async () => {
      const edit = { op: 'add_prescription', medication: med.value.trim(), dose: Number(dose.value), unit: unit.value, route: routeSel.value, frequency: freq.value.trim() };
      if (days.value) edit.duration_days = Number(days.value);
      try { await api('POST', `/api/v1/cases/${id}/edits`, { edits: [edit] }); toast('Prescription draft saved.'); } catch (e) { error.textContent = e.message; }
    } }, 'Save draft')), error);
}

// ---- admin ----------------------------------------------------------------------------------

async function renderAdmin() {
  const caseId = h('input', { id: 'who-case', placeholder: 'case id' });
  const out = h('div', { id: 'who-saw', 'aria-live': 'polite' });
  const glass = h('div', { id: 'break-glass' });
  fill($('main'), h('h1', {}, 'Administration'),
    h('section', {}, h('h2', {}, 'Who saw this patient'),
      h('label', { for: 'who-case' }, 'Case id'), caseId,
      h('div', { class: 'row', style: 'margin-top:8px' }, h('button', { onclick: async () => {
        try {
          const log = await api('GET', `/api/v1/cases/${encodeURIComponent(caseId.value.trim())}/access-log`);
          fill(out, h('table', {}, h('caption', { class: 'visually-hidden' }, 'Accesses'),
            h('thead', {}, h('tr', {}, ['When', 'Who', 'What', 'Outcome'].map((t) => h('th', { scope: 'col' }, t)))),
            h('tbody', {}, log.map((e) => h('tr', {}, h('td', {}, time(e.at || e['@timestamp'])), h('td', {}, e.actor || e.user), h('td', {}, e.action), h('td', {}, e.outcome))))));
        } catch (e) { fill(out, h('p', { class: 'error', role: 'alert' }, e.message)); }
      } }, 'Show accesses')), out),
    h('section', {}, h('h2', {}, 'Emergency logins to review'), glass));
  try {
    const list = await api('GET', '/api/v1/admin/break-glass');
    fill(glass, list.length ? h('table', {}, h('caption', { class: 'visually-hidden' }, 'Emergency logins'),
      h('thead', {}, h('tr', {}, ['When', 'Van', 'Who', 'Reason'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, list.map((e) => h('tr', {}, h('td', {}, time(e.at)), h('td', {}, e.van), h('td', {}, e.user), h('td', {}, e.detail)))))
      : h('p', { class: 'muted' }, 'No emergency login to review.'));
  } catch (e) { fill(glass, h('p', { class: 'error', role: 'alert' }, e.message)); }
}

// ---- routing --------------------------------------------------------------------------------

function route() {
  const hash = location.hash || '#/';
  stopEvents();
  if (hash.startsWith('#/reset')) { state.route = 'reset'; return renderReset(); }
  if (hash.startsWith('#/forgot')) { state.route = 'forgot'; return renderForgot(); }
  if (!state.me) { state.route = 'login'; return renderLogin(); }
  const m = hash.match(/^#\/case\/([0-9a-f-]{36})(?:\?consult=(.*))?$/);
  if (m) { state.route = `case/${m[1]}`; return renderCase(m[1], m[2] ? decodeURIComponent(m[2]) : null); }
  if (hash.startsWith('#/admin')) { state.route = 'admin'; return renderAdmin(); }
  state.route = 'queue';
  return renderQueue();
}

window.addEventListener('hashchange', route);
$('logout').addEventListener('click', async () => {
  await api('POST', '/api/v1/auth/logout').catch(() => {});
  state.me = null;
  location.hash = '#/';
  renderLogin('Logged out.');
});
// The password reset mail links to /reset-password#token=...: the same app.
if (location.pathname === '/reset-password') {
  const token = new URLSearchParams(location.hash.slice(1)).get('token');
  history.replaceState(null, '', `/#/reset?token=${encodeURIComponent(token || '')}`);
}
if ((location.hash || '').startsWith('#/reset') || (location.hash || '').startsWith('#/forgot')) route(); else start();
