// The hub's web app: doctors log in (password and authenticator, or their hospital's
// single sign-on), see the live queue of consult requests and cases of their organisation,
// claim a request, read the case, look at the X-ray at full resolution, join the case's
// live call with the van, write notes and prescription drafts back to the case, get the
// pre-arrival alerts of their hospital, and see the vans on a map. Admins see who opened a
// patient's record and the emergency logins to review. It talks to its own hub only.
import { openViewer } from './viewer.js';

const $ = (id) => document.getElementById(id);
const state = { me: null, events: null, reloadTimer: null, route: '', call: null };
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
  $('nav-map').hidden = !state.me.permissions.includes('case_read');
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
  es.addEventListener('alert', (e) => {
    try {
      const a = JSON.parse(e.data);
      toast(`Pre-arrival: ${a.van} entered ${a.zone_name}. ${a.summary?.chief_complaint || ''}`);
    } catch { /* a malformed event is ignored; the list shows it */ }
    poke();
  });
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
  const alerts = h('div', { id: 'alerts', 'aria-live': 'assertive' });
  const cases = h('div', { id: 'cases' });
  fill(main, alerts, h('h1', {}, 'Consult requests'),
    state.me.permissions.includes('consult_answer') ? h('div', { class: 'row' }, onCall, h('span', { id: 'on-call-who', class: 'muted' })) : null,
    consults, h('h2', {}, 'Cases of your organisation'), cases);
  const load = async () => {
    if (state.route !== 'queue') return;
    try {
      if (state.me.permissions.includes('consult_answer')) {
        const oc = await api('GET', '/api/v1/consults/on-call');
        onCall.setAttribute('aria-pressed', String(oc.on_call));
        const until = oc.on_call_until ? ` until ${new Date(oc.on_call_until * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}` : '';
        onCall.textContent = oc.on_call ? `On call${until} (tap to go off call)` : 'Off call (tap to go on call)';
        $('on-call-who').textContent = oc.doctors_on_call.length ? `On call now: ${oc.doctors_on_call.join(', ')}` : 'Nobody is on call: requests go to every doctor.';
        const list = await api('GET', '/api/v1/consults');
        fill(consults, ...(list.length ? list.map(consultCard) : [h('p', { class: 'muted' }, 'No request for you now. New ones appear here by themselves.')]));
      }
      const list = await api('GET', '/api/v1/alerts').catch(() => []);
      fill(alerts, list.length ? [h('h2', {}, 'Pre-arrival alerts'), ...list.map(alertCard)] : null);
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

function alertCard(a) {
  const s = a.summary || {};
  const p = s.patient || {};
  const who = [p.age ? `${p.age} ${p.age_units || 'years'}` : null, p.sex].filter(Boolean).join(', ');
  return h('article', { class: 'card alert-card', 'aria-label': `Pre-arrival alert from ${a.van}` },
    h('strong', {}, `${a.van} entered ${a.zone_name} at ${time(a.entered_at)}`),
    h('p', {}, `${who || 'Patient'}: ${s.chief_complaint || 'no complaint recorded'}`,
      s.symptom_onset ? `; symptoms since ${time(s.symptom_onset)}` : '', s.status ? `; ${String(s.status).replace(/_/g, ' ')}` : ''),
    h('a', { href: `#/case/${a.case_id}` }, 'Open case and join the call'));
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
        callSection(id),
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

// ---- the case's live call -------------------------------------------------------------------

// WHIP (our camera and microphone) and WHEP (everyone else) against the hub's media server;
// both carry every candidate in the offer, as the hub takes no trickle.
async function exchange(pc, url) {
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
    setTimeout(resolve, 2000);
  });
  const resp = await fetch(url, {
    method: 'POST', credentials: 'same-origin', body: pc.localDescription.sdp,
    headers: { 'Content-Type': 'application/sdp', 'X-CSRF-Token': cookie('__Host-medvan_csrf') || '' },
  });
  if (resp.status !== 201) throw new ApiError(resp.status, (await resp.text()) || `The hub answered ${resp.status}.`);
  const location = resp.headers.get('Location');
  await pc.setRemoteDescription({ type: 'answer', sdp: await resp.text() });
  return location;
}

function stopCall() {
  const c = state.call;
  if (!c) return;
  state.call = null;
  clearInterval(c.timer);
  for (const pc of c.pcs) pc.close();
  for (const t of c.stream?.getTracks() || []) t.stop();
  for (const loc of c.sessions) {
    fetch(loc, { method: 'DELETE', credentials: 'same-origin', headers: { 'X-CSRF-Token': cookie('__Host-medvan_csrf') || '' } }).catch(() => {});
  }
}

// The call stays up while the case redraws: its box is kept and put back.
function callSection(id) {
  if (state.call?.caseId === id) return state.call.box;
  if (state.call) stopCall();
  const status = h('p', { role: 'status', class: 'muted' }, 'Nobody from this case is in a call with you.');
  const join = h('button', { id: 'join-call' }, 'Join the call');
  const box = h('section', { class: 'call', 'aria-labelledby': 'call-title' }, h('h2', { id: 'call-title' }, 'Live call'), status, join);
  join.addEventListener('click', async () => {
    join.disabled = true;
    status.textContent = 'Joining…';
    const call = { caseId: id, box, pcs: [], sessions: [], stream: null, timer: null };
    state.call = call;
    try {
      const theirs = h('video', { autoplay: true, playsinline: true, 'aria-label': 'The van and the others in the call' });
      const remote = new MediaStream();
      const watch = new RTCPeerConnection();
      call.pcs.push(watch);
      for (let i = 0; i < 2; i++) {
        watch.addTransceiver('video', { direction: 'recvonly' });
        watch.addTransceiver('audio', { direction: 'recvonly' });
      }
      watch.ontrack = (e) => { remote.addTrack(e.track); theirs.srcObject = remote; };
      call.sessions.push(await exchange(watch, `/api/v1/calls/${id}/whep`));
      let mine = null;
      try {
        call.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360 }, audio: true });
        const send = new RTCPeerConnection();
        call.pcs.push(send);
        for (const t of call.stream.getTracks()) send.addTransceiver(t, { direction: 'sendonly' });
        call.sessions.push(await exchange(send, `/api/v1/calls/${id}/whip`));
        mine = h('video', { class: 'mine', autoplay: true, muted: true, playsinline: true, 'aria-label': 'Your camera' });
        mine.muted = true;
        mine.srcObject = call.stream;
      } catch (e) {
        toast(`You watch and listen only: ${e.message}`, true);
      }
      const people = h('p', { class: 'muted', id: 'call-people' });
      const leave = h('button', { id: 'leave-call', onclick: () => { stopCall(); renderCase(id); } }, 'Leave the call');
      fill(box, h('h2', { id: 'call-title' }, 'Live call'), theirs, mine, people, leave);
      const refresh = async () => {
        const list = await api('GET', `/api/v1/calls/${id}`).catch(() => null);
        if (list) people.textContent = `In the call: ${[...new Set(list.map((p) => p.who))].join(', ')}`;
      };
      call.timer = setInterval(refresh, 3000);
      refresh();
    } catch (e) {
      stopCall();
      join.disabled = false;
      status.textContent = `Could not join: ${e.message}`;
    }
  });
  return box;
}

// ---- the map ------------------------------------------------------------------------------------

// The organisation's zones and where its vans are, drawn here on a plain projection (no map
// tiles: nothing is fetched from elsewhere).
async function renderMap() {
  const box = h('div', { class: 'map' });
  const list = h('div', { id: 'vans', 'aria-live': 'polite' });
  fill($('main'), h('h1', {}, 'Vans and zones'), box, list);
  const draw = async () => {
    if (state.route !== 'map') return;
    let zones = [];
    let vans = [];
    try {
      [zones, vans] = await Promise.all([api('GET', '/api/v1/geofences'), api('GET', '/api/v1/fleet/positions')]);
    } catch (e) { fill(list, h('p', { class: 'error', role: 'alert' }, e.message)); return; }
    const pts = [...vans.map((v) => [v.lat, v.lon])];
    for (const z of zones) {
      if (z.shape.type === 'circle') {
        const dLat = z.shape.radius_m / 111320;
        const dLon = dLat / Math.cos((z.shape.center.lat * Math.PI) / 180);
        pts.push([z.shape.center.lat - dLat, z.shape.center.lon - dLon], [z.shape.center.lat + dLat, z.shape.center.lon + dLon]);
      } else pts.push(...z.shape.points.map((p) => [p.lat, p.lon]));
    }
    if (!pts.length) { fill(box, h('p', { class: 'muted' }, 'No van has reported a position and no zone is defined.')); fill(list); return; }
    const lat0 = Math.min(...pts.map((p) => p[0])); const lat1 = Math.max(...pts.map((p) => p[0]));
    const lon0 = Math.min(...pts.map((p) => p[1])); const lon1 = Math.max(...pts.map((p) => p[1]));
    const k = Math.cos((((lat0 + lat1) / 2) * Math.PI) / 180);
    const W = 900; const H = 560; const pad = 40;
    const sx = (W - 2 * pad) / Math.max((lon1 - lon0) * k, 1e-6); const sy = (H - 2 * pad) / Math.max(lat1 - lat0, 1e-6);
    const s = Math.min(sx, sy);
    const X = (lon) => pad + (lon - lon0) * k * s; const Y = (lat) => H - pad - (lat - lat0) * s;
    const NS = 'http://www.w3.org/2000/svg';
    const el = (tag, attrs, text) => {
      const e = document.createElementNS(NS, tag);
      for (const [a, v] of Object.entries(attrs)) e.setAttribute(a, v);
      if (text) e.textContent = text;
      return e;
    };
    const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `Map of ${zones.length} zones and ${vans.length} vans` });
    for (const z of zones) {
      const cls = `zone-${z.kind}`;
      if (z.shape.type === 'circle') {
        svg.append(el('circle', { class: cls, cx: X(z.shape.center.lon), cy: Y(z.shape.center.lat), r: (z.shape.radius_m / 111320) * s }));
        svg.append(el('text', { x: X(z.shape.center.lon), y: Y(z.shape.center.lat) }, z.name));
      } else {
        svg.append(el('polygon', { class: cls, points: z.shape.points.map((p) => `${X(p.lon)},${Y(p.lat)}`).join(' ') }));
        svg.append(el('text', { x: X(z.shape.points[0].lon), y: Y(z.shape.points[0].lat) }, z.name));
      }
    }
    for (const v of vans) {
      svg.append(el('circle', { class: 'van', cx: X(v.lon), cy: Y(v.lat), r: 8 }));
      svg.append(el('text', { x: X(v.lon) + 12, y: Y(v.lat) + 4 }, v.van));
    }
    box.replaceChildren(svg);
    fill(list, vans.length ? h('table', {}, h('caption', { class: 'visually-hidden' }, 'Vans'),
      h('thead', {}, h('tr', {}, ['Van', 'Last fix', 'Speed', 'Zones', 'Case'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, vans.map((v) => h('tr', {}, h('td', {}, v.van), h('td', {}, time(v.at_ms)),
        h('td', {}, v.speed_mps != null ? `${Math.round(v.speed_mps * 3.6)} km/h` : '—'),
        h('td', {}, v.zones.map((id) => zones.find((z) => z.id === id)?.name || id).join(', ') || '—'),
        h('td', {}, v.active_case ? h('a', { href: `#/case/${v.active_case}` }, 'Open') : '—')))))
      : h('p', { class: 'muted' }, 'No van has reported a position yet.'));
  };
  // The timer first: leaving the page during the first draw still stops it.
  state.mapTimer = setInterval(draw, 2000);
  await draw();
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
  clearInterval(state.mapTimer);
  if (state.call && !hash.startsWith(`#/case/${state.call.caseId}`)) stopCall();
  if (hash.startsWith('#/reset')) { state.route = 'reset'; return renderReset(); }
  if (hash.startsWith('#/forgot')) { state.route = 'forgot'; return renderForgot(); }
  if (!state.me) { state.route = 'login'; return renderLogin(); }
  const m = hash.match(/^#\/case\/([0-9a-f-]{36})(?:\?consult=(.*))?$/);
  if (m) { state.route = `case/${m[1]}`; return renderCase(m[1], m[2] ? decodeURIComponent(m[2]) : null); }
  if (hash.startsWith('#/admin')) { state.route = 'admin'; return renderAdmin(); }
  if (hash.startsWith('#/map')) { state.route = 'map'; return renderMap(); }
  state.route = 'queue';
  return renderQueue();
}

window.addEventListener('hashchange', route);
$('logout').addEventListener('click', async () => {
  stopCall();
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
