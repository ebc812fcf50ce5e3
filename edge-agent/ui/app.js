// The van's touchscreen: crew login, the active case, vitals, treatment, the X-ray
// workflow, consults and the doctor's answers, conflicts, and the sync state. It talks only
// to the agent it is served by; every action is shown as saved only once the agent has
// answered, which it does once the change is durable on the van's disk.

const STATUSES = [
  ['call_received', 'Call received'], ['dispatched', 'Dispatched'], ['en_route', 'En route'],
  ['on_scene', 'On scene'], ['patient_contact', 'With patient'], ['transporting', 'Transporting'],
  ['at_destination', 'At destination'], ['closed', 'Closed'],
];
const VITALS = [
  ['heart_rate', 'Heart rate', 'bpm'], ['systolic', 'BP systolic', 'mmHg'], ['diastolic', 'BP diastolic', 'mmHg'],
  ['spo2', 'SpO2', '%'], ['respiratory_rate', 'Resp. rate', '/min'], ['temperature_c', 'Temperature', '°C'],
  ['glucose', 'Glucose', 'mg/dl'], ['pain', 'Pain', '0-10'], ['gcs_total', 'GCS', '3-15'],
];
const PROCEDURES = [
  ['Splinting', 79321009], ['Peripheral IV access', 392230005], ['Oxygen therapy', 57485005],
  ['Cervical collar', 398041008], ['Wound dressing', 182531007],
];
const MEDICATIONS = [
  { medication: 'Paracetamol', dose: 1000, unit: 'mg', route: 'oral' },
  { medication: 'Morphine', dose: 5, unit: 'mg', route: 'intravenous' },
  { medication: 'Fentanyl', dose: 50, unit: 'mcg', route: 'intranasal' },
  { medication: 'Ondansetron', dose: 4, unit: 'mg', route: 'intravenous' },
  { medication: 'Salbutamol', dose: 5, unit: 'mg', route: 'inhalation' },
];
const CONSULT_REASONS = [
  'Please review the X-ray', 'Advice on pain relief', 'Which hospital should we go to?', 'Deteriorating patient',
];

// The X-ray tab's choices: nothing carried over from another case (no side chosen, so a
// paired part's side is always picked for this patient).
function freshXray(presets = []) {
  return { part: null, view: null, side: null, presets, technique: null, preview: null, previewCase: null, status: null, error: null };
}

const state = {
  token: sessionStorage.getItem('medvan.token'),
  user: sessionStorage.getItem('medvan.user'),
  breakGlass: sessionStorage.getItem('medvan.bg') === '1',
  caseId: sessionStorage.getItem('medvan.case'),
  tab: 'overview',
  view: null,
  seenNotes: new Set(),
  // Text being typed, by field: a refresh of the case redraws the screen without losing it.
  drafts: {},
  viewJson: '',
  vitals: {},
  vitalField: 'heart_rate',
  xray: freshXray(),
};
// Each action's time from the tap to its saved acknowledgement on screen (ms), for the
// end-to-end test's figures.
window.medvanAcks = [];
// Each exposure's time from the finger lifted to its preview on screen (ms).
window.medvanImages = [];

const $ = (id) => document.getElementById(id);

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
  // Also in the console: the kiosk's browser log keeps what the crew was told.
  console.info(`toast: ${text}`);
  const t = $('toast');
  t.textContent = text;
  t.className = bad ? 'toast show bad' : 'toast show';
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = 'toast'; }, bad ? 6000 : 2500);
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp;
  try {
    resp = await fetch(`/api/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, 'The van computer did not answer. Check it is switched on, then try again.');
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (resp.status === 401 && state.token && !path.startsWith('/crew/login')) {
    endSession('Your session ended (unused for 10 minutes, or too long). Log in again.');
    throw new ApiError(401, 'Log in again.');
  }
  if (!resp.ok) throw new ApiError(resp.status, (data && (data.message || data.error)) || `The van answered ${resp.status}.`);
  return data;
}

// Runs an action and acknowledges it once the agent answered (the change is durable then).
async function act(label, fn) {
  const started = performance.now();
  try {
    const out = await fn();
    toast(`Saved: ${label}`);
    window.medvanAcks.push(performance.now() - started);
    return out;
  } catch (e) {
    toast(`Not saved: ${label}. ${e.message}`, true);
    return undefined;
  }
}

function endSession(message) {
  // The van's call goes on (it is the van's, and the doctors stay); this screen stops playing it.
  stopWatching();
  state.token = null; state.user = null; state.caseId = null; state.view = null;
  state.vitals = {}; state.drafts = {}; state.xray = freshXray(state.xray.presets);
  sessionStorage.clear();
  renderLogin(message);
}

// ---- the sync indicator -----------------------------------------------------------

async function pollSync() {
  const el = $('sync');
  if (!state.token) { el.textContent = 'Sync: log in to see'; el.className = 'sync'; return; }
  try {
    const s = await api('GET', '/sync');
    const words = {
      up_to_date: 'Up to date with the hub',
      syncing: `Syncing: ${s.pending_cases} case(s) waiting`,
      connecting: `Offline: ${s.pending_cases} case(s) waiting`,
      offline: `Offline: ${s.pending_cases} case(s) waiting`,
      not_configured: 'Not linked to a hub',
      certificate_expired: 'Offline: this van must be re-enrolled',
    };
    const cls = s.state === 'up_to_date' ? 'up_to_date' : s.state === 'syncing' ? 'syncing' : 'offline';
    el.textContent = words[s.state] || s.state;
    el.className = `sync ${cls}`;
    el.dataset.state = s.state;
  } catch {
    el.textContent = 'Sync: unknown';
    el.className = 'sync offline';
  }
}

// ---- login -------------------------------------------------------------------------

async function renderLogin(message) {
  $('who').textContent = '';
  $('logout').hidden = true;
  const main = $('main');
  let members = [];
  try { members = (await api('GET', '/crew/members')) || []; } catch { members = []; }
  let chosen = null;
  let pin = '';
  const pinShown = h('div', { class: 'pin', 'aria-live': 'polite', id: 'pin-dots' }, '');
  const error = h('p', { class: 'error', role: 'alert' }, message || '');
  const showPin = () => { pinShown.textContent = '•'.repeat(pin.length) || ' '; };
  const nameTiles = h('div', { class: 'tiles', role: 'group', 'aria-label': 'Who are you?' },
    members.map((m) => h('button', {
      class: 'quiet', 'aria-pressed': 'false', 'data-user': m.username,
      onclick: (ev) => {
        chosen = m.username;
        for (const b of nameTiles.querySelectorAll('button')) b.setAttribute('aria-pressed', String(b === ev.currentTarget));
        pin = ''; showPin();
      },
    }, m.display_name || m.username)));
  const submit = async () => {
    if (!chosen) { error.textContent = 'Tap your name first.'; return; }
    try {
      const s = await api('POST', '/crew/login', { username: chosen, pin });
      startSession(s, false);
    } catch (e) {
      pin = ''; showPin();
      error.textContent = e.message;
    }
  };
  const digit = (d) => h('button', { onclick: () => { if (pin.length < 12) { pin += d; showPin(); } }, 'aria-label': `Digit ${d}` }, d);
  const pad = h('div', { class: 'pad', role: 'group', 'aria-label': 'PIN pad' },
    ...['1', '2', '3', '4', '5', '6', '7', '8', '9'].map(digit),
    h('button', { class: 'quiet', onclick: () => { pin = pin.slice(0, -1); showPin(); }, 'aria-label': 'Delete last digit' }, '⌫'),
    digit('0'),
    h('button', { class: 'ok', onclick: submit, id: 'pin-ok' }, 'OK'));
  fill(main, 
    h('h1', {}, 'Crew login'),
    members.length ? h('p', {}, 'Tap your name, then enter your PIN. This works without a network.')
      : h('p', { class: 'error' }, 'No crew list on this van yet: it comes from the hub at the next sync. Use an emergency login meanwhile.'),
    nameTiles,
    h('div', { class: 'row', style: 'margin-top:16px; align-items:flex-start; gap:32px' },
      h('div', {}, h('p', { id: 'pin-label' }, 'PIN'), pinShown, pad),
      h('div', {}, h('h2', {}, 'Emergency'),
        h('p', {}, 'No PIN here? An emergency login opens cases for 30 minutes and is reviewed.'),
        h('button', { class: 'danger', onclick: renderBreakGlass }, 'Emergency login'))),
    error);
  showPin();
}

function renderBreakGlass() {
  const name = h('input', { class: 'field', id: 'bg-name', 'aria-label': 'Your full name', autocomplete: 'off' });
  const reason = h('input', { class: 'field', id: 'bg-reason', 'aria-label': 'Why you need access', autocomplete: 'off' });
  const error = h('p', { class: 'error', role: 'alert' });
  const reasons = ['My PIN is not on this van', 'I forgot my PIN', 'Crew member from another service'];
  fill($('main'), 
    h('h1', {}, 'Emergency login'),
    h('p', {}, 'Say who you are and why. The login is flagged, lasts 30 minutes and is reviewed.'),
    h('label', { for: 'bg-name' }, 'Your full name'), name, keyboard(name),
    h('h2', {}, 'Reason'),
    h('div', { class: 'row' }, reasons.map((r) => h('button', { class: 'quiet', onclick: () => { reason.value = r; } }, r))),
    h('label', { for: 'bg-reason' }, 'Or in your words'), reason,
    h('div', { class: 'row', style: 'margin-top:12px' },
      h('button', { class: 'danger', onclick: async () => {
        try {
          const s = await api('POST', '/crew/break-glass', { name: name.value, reason: reason.value });
          startSession(s, true);
        } catch (e) { error.textContent = e.message; }
      } }, 'Open emergency session'),
      h('button', { class: 'quiet', onclick: () => renderLogin() }, 'Back')),
    error);
}

function startSession(s, breakGlass) {
  state.token = s.token; state.user = s.user; state.breakGlass = breakGlass;
  sessionStorage.setItem('medvan.token', s.token);
  sessionStorage.setItem('medvan.user', s.user);
  sessionStorage.setItem('medvan.bg', breakGlass ? '1' : '0');
  showWho();
  pollSync();
  renderCases();
}

function showWho() {
  $('who').textContent = state.user ? `${state.user}${state.breakGlass ? ' (EMERGENCY LOGIN)' : ''}` : '';
  $('logout').hidden = !state.user;
}

// A text field whose content survives the screen being redrawn.
function draft(tag, id, label, initial = '') {
  const el = h(tag, { class: 'field', id, 'aria-label': label, autocomplete: 'off' });
  el.value = state.drafts[id] ?? initial;
  el.addEventListener('input', () => { state.drafts[id] = el.value; });
  el.addEventListener('focus', () => { lastField = el; });
  return el;
}

// The text field the on-screen keyboard types into: the last one tapped on this screen.
let lastField = null;

// ---- the on-screen keyboard (no keyboard is assumed) -------------------------------

function keyboard(target) {
  const rows = ['1234567890', 'qwertyuiop', 'asdfghjkl', 'zxcvbnm,.'];
  let upper = false;
  const kb = h('div', { class: 'kbd', role: 'group', 'aria-label': 'On-screen keyboard' });
  const into = () => (lastField && document.contains(lastField) ? lastField : target);
  const type = (s) => {
    const el = into();
    el.value += s;
    el.dispatchEvent(new Event('input'));
  };
  const draw = () => {
    fill(kb, 
      ...rows.map((r) => h('div', { class: 'keys' }, [...r].map((c) => {
        const ch = upper ? c.toUpperCase() : c;
        return h('button', { class: 'quiet', type: 'button', onclick: () => type(ch), 'aria-label': `Type ${ch}` }, ch);
      }))),
      h('div', { class: 'keys' },
        h('button', { class: 'quiet', type: 'button', onclick: () => { upper = !upper; draw(); }, 'aria-pressed': String(upper) }, 'Shift'),
        h('button', { class: 'quiet', type: 'button', style: 'min-width:320px', onclick: () => type(' '), 'aria-label': 'Space' }, 'Space'),
        h('button', { class: 'quiet', type: 'button', onclick: () => { const el = into(); el.value = el.value.slice(0, -1); el.dispatchEvent(new Event('input')); }, 'aria-label': 'Delete' }, '⌫')));
  };
  draw();
  return kb;
}

// ---- cases ---------------------------------------------------------------------------

async function renderCases() {
  state.caseId = null;
  sessionStorage.removeItem('medvan.case');
  const main = $('main');
  const list = h('div', { class: 'tiles' });
  fill(main, 
    h('h1', {}, 'Cases'),
    h('div', { class: 'row' }, h('button', { id: 'new-case', class: 'ok', onclick: newCase }, '+ New case')),
    h('h2', {}, 'Open cases on this van'), list);
  try {
    const cases = await api('GET', '/cases');
    const open = cases.filter((c) => c.status !== 'closed');
    if (!open.length) list.append(h('p', { class: 'muted' }, 'No open case.'));
    for (const c of open) {
      const label = [c.patient_name || c.temp_patient_id || 'Unnamed patient', c.chief_complaint, statusName(c.status)].filter(Boolean).join(' · ');
      list.append(h('button', { class: 'quiet', onclick: () => openCase(c.id) }, label, c.has_conflicts ? ' ⚠ conflict' : ''));
    }
  } catch (e) {
    list.append(h('p', { class: 'error', role: 'alert' }, e.message));
  }
}

async function newCase() {
  const created = await act('new case', () => api('POST', '/cases'));
  if (created) openCase(created.id);
}

function statusName(s) {
  return (STATUSES.find(([k]) => k === s) || [null, s || 'No status yet'])[1];
}

async function openCase(id) {
  state.caseId = id;
  state.drafts = {};
  state.vitals = {};
  state.xray = freshXray(state.xray.presets);
  state.tab = 'overview';
  state.seenNotes = new Set();
  sessionStorage.setItem('medvan.case', id);
  await refreshCase(true);
}

async function refreshCase(first = false) {
  if (!state.caseId) return;
  try {
    const v = await api('GET', `/cases/${state.caseId}`);
    const json = JSON.stringify(v);
    if (!first && json === state.viewJson) return;
    state.viewJson = json;
    const fresh = (v.notes || []).filter((n) => !state.seenNotes.has(n.id));
    state.view = v;
    if (first) for (const n of v.notes || []) state.seenNotes.add(n.id);
    else if (fresh.length) toast(`New note from ${fresh[0].by}`);
    renderCase();
  } catch (e) {
    toast(e.message, true);
  }
}

// Sends edits; true once the agent has them durably.
function edit(label, edits) {
  return act(label, async () => {
    await api('POST', `/cases/${state.caseId}/edits`, { edits });
    await refreshCase();
    return true;
  });
}

function renderCase() {
  const v = state.view;
  if (!v) return;
  const reached = new Map();
  for (const item of v.timeline || []) if (item.status) reached.set(item.status, item.at);
  const next = STATUSES.find(([k]) => !reached.has(k));
  const timeline = h('section', { class: 'timeline', 'aria-label': 'Status timeline' },
    h('h2', {}, 'Status'),
    h('ol', {}, STATUSES.filter(([k]) => reached.has(k)).map(([k, name]) =>
      h('li', {}, h('strong', {}, name), ' ', h('span', { class: 'muted' }, time(reached.get(k)))))),
    next ? h('button', { class: 'ok', id: 'next-status', style: 'width:100%',
      onclick: () => edit(next[1], [{ op: 'set_status', status: next[0] }]) }, `${next[1]} now`) : null,
    h('h2', {}, 'Other status'),
    h('div', { class: 'grid' }, STATUSES.filter(([k]) => !reached.has(k) && (!next || k !== next[0])).map(([k, name]) =>
      h('button', { class: 'quiet', onclick: () => edit(name, [{ op: 'set_status', status: k }]) }, name))));
  const tabs = [['overview', 'Patient'], ['vitals', 'Vitals'], ['treatment', 'Treatment'], ['narrative', 'Narrative'],
    ['xray', 'X-ray'], ['consult', `Doctor${(v.notes || []).length ? ` (${v.notes.length})` : ''}`],
    ['conflicts', `Conflicts${v.conflicts.length ? ` (${v.conflicts.length})` : ''}`]];
  const body = { overview: tabOverview, vitals: tabVitals, treatment: tabTreatment, narrative: tabNarrative,
    xray: tabXray, consult: tabConsult, conflicts: tabConflicts }[state.tab]();
  fill($('main'), 
    h('div', { class: 'row', style: 'justify-content:space-between' },
      h('h1', {}, `Case ${patientLabel(v)}`),
      h('button', { class: 'quiet', onclick: renderCases }, 'All cases')),
    h('div', { class: 'layout' }, timeline,
      h('section', {},
        h('nav', { class: 'tabs', 'aria-label': 'Case sections' }, tabs.map(([k, name]) =>
          h('button', { class: 'quiet', 'aria-pressed': String(state.tab === k), 'data-tab': k,
            onclick: () => { state.tab = k; renderCase(); } }, name))),
        body)));
}

function patientLabel(v) {
  const f = v.fields || {};
  const name = [f['patient.first_name']?.value, f['patient.last_name']?.value].filter(Boolean).join(' ');
  return name || v.temp_patient_id || v.id.slice(0, 8);
}

function time(at) {
  if (!at) return '';
  const d = new Date(at);
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function tabOverview() {
  const v = state.view;
  const f = v.fields || {};
  const field = (path, label) => h('div', { class: 'card' }, h('div', { class: 'muted' }, label),
    h('div', { class: 'value' }, f[path]?.value ?? '—'));
  const complaint = draft('input', 'complaint', 'Chief complaint', f['situation.chief_complaint']?.value || '');
  const quick = ['Fall', 'Chest pain', 'Shortness of breath', 'Stroke symptoms', 'Road traffic collision'];
  return h('div', {},
    h('div', { class: 'row' }, field('patient.age', 'Age'), field('patient.sex', 'Sex'), field('situation.chief_complaint', 'Chief complaint')),
    h('h2', {}, 'Chief complaint'),
    h('div', { class: 'row' }, quick.map((q) => h('button', { class: 'quiet',
      onclick: () => edit('chief complaint', [{ op: 'set_field', field: 'situation.chief_complaint', value: q }]) }, q))),
    h('label', { for: 'complaint' }, 'Or in your words'), complaint,
    h('button', { onclick: () => edit('chief complaint', [{ op: 'set_field', field: 'situation.chief_complaint', value: complaint.value }]) }, 'Save complaint'),
    h('h2', {}, 'Age (estimate is fine)'),
    h('div', { class: 'row' }, [5, 20, 35, 50, 65, 80].map((a) => h('button', { class: 'quiet',
      onclick: () => edit('age', [{ op: 'set_field', field: 'patient.age', value: a }, { op: 'set_field', field: 'patient.age_units', value: 'years' }]) }, `${a}`))),
    h('h2', {}, 'Sex'),
    h('div', { class: 'row' }, [['female', 'Female'], ['male', 'Male'], ['unknown', 'Unknown']].map(([k, n]) =>
      h('button', { class: 'quiet', onclick: () => edit('sex', [{ op: 'set_field', field: 'patient.sex', value: k }]) }, n))),
    h('div', { style: 'margin-top:8px' }, keyboard(complaint)));
}

function tabVitals() {
  const v = state.view;
  const shown = (k) => state.vitals[k] ?? '';
  const [, label, unit] = VITALS.find(([k]) => k === state.vitalField);
  const tiles = h('div', { class: 'tiles', role: 'group', 'aria-label': 'Which vital sign' }, VITALS.map(([k, name, u]) =>
    h('button', { class: 'quiet', 'aria-pressed': String(state.vitalField === k), 'data-vital': k,
      onclick: () => { state.vitalField = k; renderCase(); } }, `${name}: ${shown(k) || '—'} ${u}`)));
  const key = (d) => h('button', { 'aria-label': `Digit ${d}`, onclick: () => {
    const cur = String(state.vitals[state.vitalField] ?? '');
    if (cur.length < 5) state.vitals[state.vitalField] = cur + d;
    renderCase();
  } }, d);
  const pad = h('div', { class: 'pad', role: 'group', 'aria-label': `Keypad for ${label}` },
    ...['1', '2', '3', '4', '5', '6', '7', '8', '9', '.', '0'].map(key),
    h('button', { class: 'quiet', 'aria-label': 'Delete last digit', onclick: () => {
      const cur = String(state.vitals[state.vitalField] ?? '');
      state.vitals[state.vitalField] = cur.slice(0, -1);
      renderCase();
    } }, '⌫'));
  const save = async () => {
    const entry = { op: 'add_vitals' };
    for (const [k] of VITALS) {
      const raw = state.vitals[k];
      if (raw !== undefined && raw !== '') entry[k] = Number(raw);
    }
    if (Object.keys(entry).length === 1) { toast('Enter at least one value first.', true); return; }
    if (await edit('vitals', [entry])) state.vitals = {};
    renderCase();
  };
  return h('div', {},
    h('p', {}, `Entering ${label} (${unit}).`),
    h('div', { class: 'row', style: 'align-items:flex-start' }, h('div', { style: 'flex:1' }, tiles), pad),
    h('div', { class: 'row', style: 'margin-top:12px' },
      h('button', { class: 'ok', id: 'save-vitals', onclick: save }, 'Save vitals'),
      h('button', { class: 'quiet', onclick: () => { state.vitals = {}; renderCase(); } }, 'Clear')),
    h('h2', {}, 'Trend'), trendChart(v.vitals || []),
    vitalsTable(v.vitals || []));
}

function vitalsTable(list) {
  if (!list.length) return h('p', { class: 'muted' }, 'No vitals yet.');
  return h('table', {}, h('caption', { class: 'visually-hidden' }, 'Vitals recorded'),
    h('tr', {}, h('th', {}, 'Time'), VITALS.map(([, n]) => h('th', {}, n))),
    list.slice(-8).map((x) => h('tr', {}, h('td', {}, time(x.taken_at || x.at)), VITALS.map(([k]) => h('td', {}, x[k] ?? '')))));
}

function trendChart(list) {
  const W = 760; const H = 200; const pad = 30;
  const series = [['heart_rate', '#a3121b', 'Heart rate'], ['systolic', '#0b4f9c', 'BP systolic'], ['spo2', '#0a6b2d', 'SpO2']];
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('width', W); svg.setAttribute('height', H);
  svg.setAttribute('class', 'trend');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', list.length ? `Trend of ${list.length} vitals sets: ${series.map(([k, , n]) => `${n} ${list.map((x) => x[k]).filter((x) => x !== undefined).join(', ')}`).join('; ')}` : 'No vitals yet');
  if (list.length) {
    const xs = list.map((x, i) => pad + (list.length === 1 ? (W - 2 * pad) / 2 : (i * (W - 2 * pad)) / (list.length - 1)));
    for (const [k, color] of series) {
      const pts = list.map((x, i) => (x[k] === undefined ? null : [xs[i], H - pad - ((Math.min(Math.max(x[k], 0), 220)) / 220) * (H - 2 * pad)])).filter(Boolean);
      if (!pts.length) continue;
      const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
      line.setAttribute('points', pts.map((p) => p.join(',')).join(' '));
      line.setAttribute('fill', 'none'); line.setAttribute('stroke', color); line.setAttribute('stroke-width', '4');
      svg.append(line);
      for (const [x, y] of pts) {
        const dot = document.createElementNS('http://www.w3.org/2000/svg', 'circle');
        dot.setAttribute('cx', x); dot.setAttribute('cy', y); dot.setAttribute('r', '6'); dot.setAttribute('fill', color);
        svg.append(dot);
      }
    }
  }
  return h('figure', {}, svg, h('figcaption', {}, series.map(([, c, n]) => h('span', { style: `color:${c}; font-weight:bold; margin-right:16px` }, `— ${n}`))));
}

function tabTreatment() {
  const v = state.view;
  return h('div', {},
    h('h2', {}, 'Intervention done'),
    h('div', { class: 'row' }, PROCEDURES.map(([name, code]) => h('button', { class: 'quiet',
      onclick: () => edit(name, [{ op: 'add_procedure', procedure: name, snomed: code, successful: true }]) }, name))),
    h('h2', {}, 'Medication given'),
    h('div', { class: 'row' }, MEDICATIONS.map((m) => h('button', { class: 'quiet',
      onclick: () => edit(`${m.medication} ${m.dose} ${m.unit}`, [{ op: 'add_medication', ...m }]) }, `${m.medication} ${m.dose} ${m.unit} ${m.route}`))),
    h('h2', {}, 'Given so far'),
    h('ul', {}, [...(v.procedures || []), ...(v.medications_given || [])]
      .filter((x) => x.procedure || x.medication)
      .map((x) => h('li', {}, `${time(x.performed_at || x.given_at || x.at)} ${x.procedure || `${x.medication} ${x.dose} ${x.unit} ${x.route}`} (${x.by})`))));
}

function tabNarrative() {
  const v = state.view;
  const area = draft('textarea', 'narrative', 'Narrative', v.narrative || '');
  // Only the part that changed is sent (a splice in code points), so text a doctor or a
  // colleague added meanwhile elsewhere in the narrative stays.
  const save = () => {
    const was = [...(v.narrative || '')];
    const now = [...area.value];
    let start = 0;
    while (start < was.length && start < now.length && was[start] === now[start]) start++;
    let end = 0;
    while (end < was.length - start && end < now.length - start && was[was.length - 1 - end] === now[now.length - 1 - end]) end++;
    const splice = { op: 'edit_narrative', pos: start, delete: was.length - start - end, insert: now.slice(start, now.length - end).join('') };
    delete state.drafts.narrative;
    return edit('narrative', [splice]);
  };
  return h('div', {}, h('label', { for: 'narrative' }, 'What happened, in your words'), area,
    h('button', { class: 'ok', onclick: save }, 'Save narrative'), keyboard(area));
}

// ---- the X-ray workflow ------------------------------------------------------------

async function loadPresets() {
  if (state.xray.presets.length) return;
  try { state.xray.presets = await api('GET', '/xray/presets'); } catch { state.xray.presets = []; }
}

function tabXray() {
  const x = state.xray;
  const wrap = h('div', { id: 'xray' }, h('p', {}, 'Loading the X-ray unit…'));
  (async () => {
    await loadPresets();
    try { x.status = await api('GET', '/xray'); } catch (e) { x.status = null; x.error = e.message; }
    drawXray(wrap);
  })();
  // The unit changes by itself (the technique taken, the tube ready, a fault): its status is
  // read twice a second while this tab is open, and the tab redrawn when it changed, but
  // never while a finger is on the exposure button.
  clearInterval(x.poll);
  x.poll = setInterval(async () => {
    if (state.tab !== 'xray' || !document.contains(wrap)) { clearInterval(x.poll); return; }
    if (x.holding) return;
    const st = await api('GET', '/xray').catch(() => null);
    if (st && !x.holding && (!x.status || st.generation !== x.status.generation)) {
      x.status = st;
      drawXray(wrap);
    }
  }, 500);
  return wrap;
}

function drawXray(wrap) {
  const x = state.xray;
  const st = x.status;
  const parts = [...new Set(x.presets.map((p) => p.body_part))];
  const views = x.presets.filter((p) => p.body_part === x.part);
  const preset = views.find((p) => p.view === x.view);
  if (preset && (!x.technique || x.technique.from !== `${preset.body_part}/${preset.view}`)) {
    x.technique = { kv: preset.kv, mas: preset.mas, ms: preset.ms, from: `${preset.body_part}/${preset.view}` };
  }
  const paired = x.part && !['CHEST', 'PELVIS'].includes(x.part);
  const setSession = async () => {
    const body = { case_id: state.caseId, body_part: x.part, view: x.view, laterality: paired ? x.side : 'U',
      kv: x.technique.kv, mas: x.technique.mas, ms: x.technique.ms };
    const s = await act(`X-ray ${x.part.toLowerCase()} ${x.view}`, () => api('PUT', '/xray/session', body));
    if (s) { x.status = s; drawXray(wrap); }
  };
  const arm = async () => {
    const s = await act('unit armed', () => api('POST', '/xray/arm'));
    if (s) { x.status = s; drawXray(wrap); }
  };
  const disarm = async () => {
    const s = await act('unit disarmed', () => api('POST', '/xray/disarm'));
    if (s) { x.status = s; drawXray(wrap); }
  };
  const ready = st && st.configured && st.armed && st.technique_set && st.session && st.session.case_id === state.caseId;
  const exposeBtn = h('button', { class: 'danger', id: 'expose', style: 'min-width:320px; min-height:120px; font-size:1.4rem',
    disabled: !ready, 'aria-describedby': 'expose-help' }, 'Hold to expose');
  bindHold(exposeBtn, wrap);
  fill(wrap,
    st && !st.configured ? h('p', { class: 'error', role: 'alert' }, 'No X-ray unit is connected to this van.') : null,
    x.error ? h('p', { class: 'error', role: 'alert' }, x.error) : null,
    h('h2', {}, '1. Body part'),
    h('div', { class: 'row' }, parts.map((p) => h('button', { class: 'quiet', 'aria-pressed': String(x.part === p), 'data-part': p,
      onclick: () => { x.part = p; x.view = null; drawXray(wrap); } }, p[0] + p.slice(1).toLowerCase()))),
    x.part ? h('h2', {}, '2. View') : null,
    x.part ? h('div', { class: 'row' }, views.map((p) => h('button', { class: 'quiet', 'aria-pressed': String(x.view === p.view), 'data-view': p.view,
      onclick: () => { x.view = p.view; drawXray(wrap); } }, p.view))) : null,
    paired ? h('div', { class: 'row', role: 'group', 'aria-label': 'Side' }, [['L', 'Left'], ['R', 'Right']].map(([k, n]) =>
      h('button', { class: 'quiet', 'aria-pressed': String(x.side === k), onclick: () => { x.side = k; drawXray(wrap); } }, n))) : null,
    preset ? h('div', { class: 'card', id: 'technique' },
      h('strong', {}, 'Technique: '), `${x.technique.kv} kV, ${x.technique.mas} mAs, ${x.technique.ms} ms`,
      h('div', { class: 'row', style: 'margin-top:8px' },
        h('button', { class: 'quiet', onclick: () => { x.technique.kv = Math.max(40, x.technique.kv - 2); drawXray(wrap); } }, '− kV'),
        h('button', { class: 'quiet', onclick: () => { x.technique.kv = Math.min(150, x.technique.kv + 2); drawXray(wrap); } }, '+ kV'),
        h('button', { id: 'use-technique', onclick: setSession, disabled: paired && !x.side }, paired && !x.side ? '3. Choose the side first' : '3. Use this'))) : null,
    h('h2', {}, '4. Arm, then hold to expose'),
    h('div', { class: 'row' },
      h('button', { id: 'arm', onclick: arm, disabled: !(st && st.technique_set) || (st && st.armed) }, 'Arm'),
      h('button', { class: 'quiet', id: 'disarm', onclick: disarm, disabled: !(st && st.armed) }, 'Disarm'),
      exposeBtn),
    h('p', { id: 'expose-help', class: 'muted' }, 'Keep your finger on the button: the exposure stops the moment you let go.'),
    h('p', { role: 'status', 'aria-live': 'polite', id: 'xray-state' }, st ? xrayWords(st) : ''),
    x.preview && x.previewCase === state.caseId ? h('figure', {}, h('img', { class: 'preview', src: x.preview, alt: `X-ray preview, ${x.previewLabel}`, id: 'xray-preview' }),
      h('figcaption', {}, x.previewLabel, ' ', h('button', { class: 'quiet', onclick: () => { x.preview = null; drawXray(wrap); } }, 'Retake'))) : null);
}

function xrayWords(st) {
  const parts = [`Generator: ${st.generator}`, st.armed ? 'armed' : 'not armed'];
  if (st.message) parts.push(st.message);
  if (st.last_exposure) parts.push(`last: ${st.last_exposure.outcome}${st.last_exposure.dap_mgy_cm2 != null ? `, ${st.last_exposure.dap_mgy_cm2.toFixed(2)} mGy·cm²` : ''}`);
  return parts.join(' · ');
}

// A dead-man control: the press and its heartbeats go to the agent while the finger (or
// the space bar) is down, and stop the moment it lifts. There is one press for the whole
// screen, so no redraw, second finger or quick double tap can leave heartbeats running:
// each heartbeat first checks the finger is still down on a button still on screen, and
// no press outlives HOLD_MAX_MS (longer than any exposure the unit allows).
const HOLD_MAX_MS = 5000;
const press = { active: false, down: false, token: null, exposure: null, beat: null, started: 0 };

function bindHold(btn, wrap) {
  const start = async (ev) => {
    ev.preventDefault();
    if (btn.disabled || press.active) return;
    Object.assign(press, { active: true, down: true, token: null, exposure: null, started: Date.now() });
    state.xray.holding = true;
    if (ev.pointerId !== undefined) { try { btn.setPointerCapture(ev.pointerId); } catch { /* not capturable */ } }
    btn.setAttribute('aria-pressed', 'true');
    let r;
    try {
      r = await api('POST', '/xray/confirm');
    } catch (e) {
      toast(e.message, true);
      endPress(btn);
      return;
    }
    press.token = r.token;
    press.exposure = r.exposure_id;
    press.beat = setInterval(() => {
      if (!press.down || !btn.isConnected || Date.now() - press.started > HOLD_MAX_MS) {
        letGo(btn, wrap);
        return;
      }
      api('POST', `/xray/confirm/${press.token}/hold`).catch(() => {});
    }, 150);
    // Lifted while the press was on its way: release at once.
    if (!press.down) letGo(btn, wrap);
  };
  const lift = () => {
    if (!press.active) return;
    press.down = false;
    if (press.token) letGo(btn, wrap);
  };
  btn.addEventListener('pointerdown', start);
  for (const e of ['pointerup', 'pointercancel', 'pointerleave', 'lostpointercapture', 'blur']) btn.addEventListener(e, lift);
  btn.addEventListener('keydown', (ev) => { if ((ev.key === ' ' || ev.key === 'Enter') && !ev.repeat) start(ev); });
  btn.addEventListener('keyup', (ev) => { if (ev.key === ' ' || ev.key === 'Enter') lift(); });
}

// The screen going away lifts the finger too.
window.addEventListener('blur', () => { press.down = false; });
document.addEventListener('visibilitychange', () => { if (document.hidden) press.down = false; });

function endPress(btn) {
  clearInterval(press.beat);
  Object.assign(press, { active: false, down: false, token: null, beat: null });
  state.xray.holding = false;
  btn.setAttribute('aria-pressed', 'false');
}

async function letGo(btn, wrap) {
  const token = press.token;
  const exposure = press.exposure;
  if (!token) return;
  press.token = null;
  clearInterval(press.beat);
  await api('POST', `/xray/confirm/${token}/release`).catch(() => {});
  endPress(btn);
  await awaitOutcome(exposure, wrap);
}

async function awaitOutcome(exposureId, wrap) {
  const x = state.xray;
  const started = performance.now();
  for (let i = 0; i < 120; i++) {
    const st = await api('GET', '/xray').catch(() => null);
    if (st) x.status = st;
    const last = st && st.last_exposure;
    if (last && last.exposure_id === exposureId) {
      if (last.outcome === 'exposed' && last.preview_sha256) {
        const resp = await fetch(`/api/v1/cases/${last.case_id}/attachments/${last.preview_sha256}`, { headers: { Authorization: `Bearer ${state.token}` } });
        if (resp.ok) {
          x.preview = URL.createObjectURL(await resp.blob());
          x.previewCase = last.case_id;
          x.previewLabel = `${x.part} ${x.view}, ${last.dap_mgy_cm2 != null ? `${last.dap_mgy_cm2.toFixed(2)} mGy·cm²` : 'dose unknown'}`;
          toast('Saved: X-ray image');
          window.medvanImages.push(performance.now() - started);
        }
      } else {
        toast(`No image: ${last.reason || last.outcome}`, true);
      }
      drawXray(wrap);
      return;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  toast('The X-ray unit did not report the exposure. Check the unit.', true);
}

// ---- the doctor ------------------------------------------------------------------------

function tabConsult() {
  const v = state.view;
  const reason = draft('input', 'consult-reason', 'What you want to ask the doctor');
  let urgency = 'urgent';
  const urg = h('div', { class: 'row', role: 'group', 'aria-label': 'How soon' }, [['routine', 'Routine'], ['urgent', 'Urgent'], ['emergent', 'Emergency']].map(([k, n]) =>
    h('button', { class: 'quiet', 'aria-pressed': String(urgency === k), onclick: (ev) => {
      urgency = k;
      for (const b of urg.querySelectorAll('button')) b.setAttribute('aria-pressed', String(b === ev.currentTarget));
    } }, n)));
  const send = () => {
    if (!reason.value.trim()) { toast('Say what you want to ask first.', true); return undefined; }
    delete state.drafts['consult-reason'];
    return edit('consult request', [{ op: 'request_consult', reason: reason.value.trim(), urgency }]);
  };
  const notes = (v.notes || []).map((n) => {
    const fresh = !state.seenNotes.has(n.id);
    state.seenNotes.add(n.id);
    return h('div', { class: fresh ? 'note fresh' : 'note', 'data-note': n.id }, h('strong', {}, `${n.by}, ${time(n.at)}: `), n.text);
  });
  const rx = (v.prescriptions || []).map((p) => h('div', { class: 'note' }, h('strong', {}, `Prescription by ${p.by}: `),
    `${p.medication} ${p.dose} ${p.unit} ${p.route}, ${p.frequency}${p.duration_days ? `, ${p.duration_days} days` : ''}`));
  const chat = (v.chat || []).map((m) => h('div', { class: 'note' }, h('strong', {}, `${m.by}, ${time(m.at)}: `), m.text));
  const reply = draft('input', 'chat-text', 'Message to the doctor');
  const sendChat = () => {
    if (!reply.value.trim()) return undefined;
    const text = reply.value.trim();
    delete state.drafts['chat-text'];
    return edit('message', [{ op: 'add_chat', text }]);
  };
  return h('div', {},
    callSection(),
    h('h2', {}, 'Notes and prescriptions from the doctor'),
    h('div', { id: 'notes', 'aria-live': 'polite' }, notes.length || rx.length ? [...notes, ...rx] : h('p', { class: 'muted' }, 'Nothing from a doctor yet. New notes appear here by themselves.')),
    h('h2', {}, 'Chat'),
    h('div', { id: 'chat', 'aria-live': 'polite' }, chat.length ? chat : h('p', { class: 'muted' }, 'No messages.')),
    h('label', { for: 'chat-text' }, 'Message to the doctor'), reply,
    h('button', { style: 'margin-top:8px', onclick: sendChat }, 'Send message'),
    h('h2', {}, 'Consult requests'),
    h('ul', {}, (v.consults || []).map((c) => h('li', {}, `${time(c.at)} ${c.reason} (${c.urgency || 'routine'})`))),
    h('h2', {}, 'Ask a doctor'),
    h('div', { class: 'row' }, CONSULT_REASONS.map((r) => h('button', { class: 'quiet', onclick: () => { reason.value = r; state.drafts['consult-reason'] = r; } }, r))),
    h('label', { for: 'consult-reason' }, 'Or in your words'), reason, urg,
    h('button', { class: 'ok', id: 'send-consult', style: 'margin-top:8px', onclick: send }, 'Send to a doctor'),
    keyboard(reason));
}

// ---- video consult -----------------------------------------------------------------------

// The van's camera and microphone go to the hub from the agent (WHIP); this screen plays the
// doctors (WHEP, relayed by the agent with the van's ticket). The player outlives redraws:
// the same element is put back each time.
const call = { pc: null, session: null, caseId: null, video: null, words: null, view: null, joining: false };

function callWords(v) {
  if (!v || v.case_id !== state.caseId) return 'No video consult for this case.';
  const kbps = v.sent_kbps ? `, sending ${(v.sent_kbps / 1000).toFixed(1)} Mbit/s` : '';
  const lost = v.fraction_lost > 0.02 ? `, poor link (${Math.round(v.fraction_lost * 100)}% lost)` : '';
  return {
    starting: 'Starting the video consult…',
    live: `Live with the hub${kbps}${lost}. Recorded into the case (${v.segments_sealed} part(s) stored).`,
    stopping: 'Ending the video consult…',
    ended: `Video consult ended. Recording stored in the case (${v.segments_sealed} part(s)).`,
    failed: `No video consult: ${v.error || 'it failed'}`,
    idle: 'No video consult for this case.',
  }[v.state] || v.state;
}

function callLive(v) {
  return v && v.case_id === state.caseId && ['starting', 'live', 'stopping'].includes(v.state);
}

// The player and its status line, made once.
function player() {
  if (!call.video) {
    call.video = h('video', { id: 'call-video', autoplay: true, playsinline: true, 'aria-label': 'The doctors in the call' });
    call.words = h('p', { id: 'call-state', role: 'status' });
  }
  return call.video;
}

function callSection() {
  player();
  const v = call.view;
  call.words.textContent = callWords(v);
  const live = callLive(v);
  // A redraw takes the player out of the page, which pauses it: play on once it is back.
  if (live && call.video.srcObject) setTimeout(() => call.video.play().catch(() => {}), 0);
  return h('section', { class: 'call', 'aria-labelledby': 'call-title' },
    h('h2', { id: 'call-title' }, 'Video consult'),
    live ? call.video : null,
    call.words,
    live
      ? h('button', { class: 'danger', id: 'end-call', onclick: endCall }, 'End video consult')
      : h('button', { class: 'ok', id: 'start-call', onclick: startCall }, 'Start video consult'));
}

async function startCall() {
  const id = state.caseId;
  call.view = { state: 'starting', case_id: id };
  renderCase();
  try {
    call.view = await api('POST', `/cases/${id}/call`);
  } catch (e) {
    call.view = { state: 'failed', case_id: id, error: e.message };
    toast(`No video consult: ${e.message}`, true);
    renderCase();
    return;
  }
  renderCase();
  try {
    await watchCall(id);
  } catch (e) {
    toast(`The doctors cannot be shown: ${e.message}`, true);
  }
}

async function watchCall(id) {
  if (call.joining) return;
  call.joining = true;
  try {
    await joinCall(id);
  } finally {
    call.joining = false;
  }
}

async function joinCall(id) {
  // The call may have been started from another screen before this one showed the tab.
  player();
  const pc = new RTCPeerConnection();
  // A doctor and a specialist: two of each.
  for (let i = 0; i < 2; i++) {
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
  }
  const remote = new MediaStream();
  pc.ontrack = (e) => { remote.addTrack(e.track); call.video.srcObject = remote; };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
    setTimeout(resolve, 2000);
  });
  const resp = await fetch(`/api/v1/cases/${id}/call/watch`, {
    method: 'POST', body: pc.localDescription.sdp,
    headers: { Authorization: `Bearer ${state.token}`, 'Content-Type': 'application/sdp' },
  });
  if (resp.status !== 201) {
    pc.close();
    const text = await resp.text();
    let message = text;
    try { message = JSON.parse(text).message || text; } catch { /* plain text */ }
    throw new ApiError(resp.status, message || `The van answered ${resp.status}.`);
  }
  call.session = resp.headers.get('Location');
  await pc.setRemoteDescription({ type: 'answer', sdp: await resp.text() });
  call.pc = pc;
  call.caseId = id;
}

// What arrived from the doctors, for the end-to-end test's figures.
window.medvanCallStats = async () => {
  if (!call.pc) return null;
  const out = { audioPackets: 0, framesDecoded: 0 };
  (await call.pc.getStats()).forEach((r) => {
    if (r.type !== 'inbound-rtp') return;
    if (r.kind === 'audio') out.audioPackets += r.packetsReceived || 0;
    else out.framesDecoded += r.framesDecoded || 0;
  });
  return out;
};

function stopWatching() {
  if (call.pc) call.pc.close();
  if (call.session) {
    fetch(call.session, { method: 'DELETE', headers: { Authorization: `Bearer ${state.token}` } }).catch(() => {});
  }
  call.pc = null; call.session = null; call.caseId = null;
  if (call.video) call.video.srcObject = null;
}

async function endCall() {
  const id = state.caseId;
  stopWatching();
  call.view = { ...call.view, state: 'stopping' };
  renderCase();
  try {
    call.view = await api('DELETE', `/cases/${id}/call`);
    toast('Video consult ended; its recording is stored in the case.');
  } catch (e) {
    toast(`Could not end the video consult: ${e.message}`, true);
  }
  renderCase();
}

async function pollCall() {
  if (!state.token) return;
  const v = await api('GET', '/call').catch(() => null);
  if (!v) return;
  const was = JSON.stringify(call.view);
  call.view = v;
  if (call.words) call.words.textContent = callWords(v);
  // A call started elsewhere (another screen) or ended: show it, and play it here too.
  if (callLive(v) && v.state === 'live' && !call.pc && !call.joining && state.caseId === v.case_id) {
    watchCall(v.case_id).catch(() => {});
  }
  if (!callLive(v) && call.pc) stopWatching();
  if (state.tab === 'consult' && callLive(JSON.parse(was || 'null')) !== callLive(v)) renderCase();
}

function tabConflicts() {
  const v = state.view;
  if (!v.conflicts.length) return h('p', {}, 'No conflicts: everyone’s entries agree.');
  return h('div', {}, h('p', {}, 'Two people entered different values while apart. Choose the one that is right.'),
    v.conflicts.map((c) => h('div', { class: 'conflict' }, h('strong', {}, c.path),
      h('div', { class: 'row' }, c.values.map((val) => h('button', { class: 'quiet',
        onclick: () => act(`${c.path} resolved`, async () => {
          await api('POST', `/cases/${state.caseId}/conflicts/resolve`, { path: c.path, value: val.value });
          await refreshCase();
        }) }, `${JSON.stringify(val.value)} — ${val.by}, ${time(val.at)}`))))));
}

// ---- start -------------------------------------------------------------------------------

$('logout').addEventListener('click', async () => {
  await api('POST', '/crew/logout').catch(() => {});
  endSession('Logged out.');
});
setInterval(pollSync, 1500);
setInterval(pollCall, 1500);
// The case is read again every 2 s so the doctor's notes appear by themselves; the screen is
// redrawn only when something changed (the X-ray tab keeps its own state and is not).
setInterval(() => { if (state.caseId && state.tab !== 'xray') refreshCase(); }, 2000);
if (state.token) {
  showWho();
  pollSync();
  if (state.caseId) openCase(state.caseId); else renderCases();
} else {
  renderLogin();
}
