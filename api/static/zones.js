// Zone editor: a camera's snapshot on a canvas, polygons in normalized coordinates, the rules
// of each zone from the site schema, and the validated YAML of the camera's `zones`.
import { ApiError, get, post, request } from './api.js';
import { ref, toast, typeName } from './app.js';
import { t } from './i18n.js';

const DAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];
const COLORS = ['#e4572e', '#29a3a3', '#f3a712', '#7768ae', '#4caf50', '#d81b60'];
const HIT = 9; // px: how close a click must be to grab a vertex
const state = {
  camera: null, image: null, zones: [], sel: -1, vsel: -1, drag: false, schema: null,
  bound: false, snapSeq: 0, edits: 0,
};
const $ = (sel) => document.querySelector(sel);

// ---- geometry (normalized 0..1) ---------------------------------------------------------------

const round = (v) => Math.round(Math.min(1, Math.max(0, v)) * 1000) / 1000;

function toNorm(ev) {
  const canvas = $('#z-canvas');
  const r = canvas.getBoundingClientRect();
  return [round((ev.clientX - r.left) / r.width), round((ev.clientY - r.top) / r.height)];
}

function pxDist(a, b) {
  const canvas = $('#z-canvas');
  const r = canvas.getBoundingClientRect();
  return Math.hypot((a[0] - b[0]) * r.width, (a[1] - b[1]) * r.height);
}

// Insert where the polygon's perimeter grows least, so a click near an edge splits that edge.
function insertAt(polygon, p) {
  if (polygon.length < 3) return polygon.length;
  let best = polygon.length;
  let bestCost = Infinity;
  for (let i = 0; i < polygon.length; i++) {
    const a = polygon[i];
    const b = polygon[(i + 1) % polygon.length];
    const cost = Math.hypot(p[0] - a[0], p[1] - a[1]) + Math.hypot(p[0] - b[0], p[1] - b[1])
      - Math.hypot(b[0] - a[0], b[1] - a[1]);
    if (cost < bestCost) { bestCost = cost; best = i + 1; }
  }
  return best;
}

// ---- drawing --------------------------------------------------------------------------------

function draw() {
  const canvas = $('#z-canvas');
  const ctx = canvas.getContext('2d');
  const w = canvas.width;
  const h = canvas.height;
  if (state.image) ctx.drawImage(state.image, 0, 0, w, h);
  else {
    ctx.fillStyle = '#3a3f47';
    ctx.fillRect(0, 0, w, h);
  }
  state.zones.forEach((zone, zi) => {
    const color = COLORS[zi % COLORS.length];
    const pts = zone.polygon.map(([x, y]) => [x * w, y * h]);
    if (!pts.length) return;
    ctx.beginPath();
    pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    if (pts.length > 2) ctx.closePath();
    ctx.lineWidth = zi === state.sel ? 3 : 1.5;
    ctx.strokeStyle = color;
    ctx.stroke();
    if (pts.length > 2) {
      ctx.globalAlpha = zi === state.sel ? 0.25 : 0.12;
      ctx.fillStyle = color;
      ctx.fill();
      ctx.globalAlpha = 1;
    }
    pts.forEach(([x, y], vi) => {
      const on = zi === state.sel && vi === state.vsel;
      ctx.fillStyle = on ? '#fff' : color;
      ctx.fillRect(x - 4, y - 4, 8, 8);
    });
    ctx.font = '14px sans-serif';
    ctx.fillStyle = '#fff';
    ctx.fillText(zone.id, pts[0][0] + 6, pts[0][1] - 6);
  });
}

// ---- canvas interaction -----------------------------------------------------------------------

function grab(p) {
  const order = [state.sel, ...state.zones.keys()].filter((i) => i >= 0);
  for (const zi of order) {
    const vi = state.zones[zi]?.polygon.findIndex((v) => pxDist(v, p) <= HIT);
    if (vi >= 0) return [zi, vi];
  }
  return null;
}

function newZone() {
  const ids = new Set(state.zones.map((z) => z.id));
  let n = state.zones.length + 1;
  while (ids.has(`zone-${n}`)) n += 1;
  state.zones.push({ id: `zone-${n}`, polygon: [], schedule: null, rules: {} });
  state.sel = state.zones.length - 1;
  state.vsel = -1;
}

function onDown(ev) {
  const p = toNorm(ev);
  const hit = grab(p);
  if (hit) {
    const changed = hit[0] !== state.sel;
    [state.sel, state.vsel] = hit;
    state.drag = true;
    if (changed) renderSide();
    draw();
    return;
  }
  // Zones overlap, so a click always adds to the selected zone; others are picked from the
  // list or by grabbing one of their points.
  const current = state.zones[state.sel];
  if (!current) newZone();
  const zone = state.zones[state.sel];
  const at = insertAt(zone.polygon, p);
  zone.polygon.splice(at, 0, p);
  state.vsel = at;
  edited();
  renderSide();
  draw();
}

function onMove(ev) {
  if (!state.drag) return;
  const zone = state.zones[state.sel];
  zone.polygon[state.vsel] = toNorm(ev);
  edited();
  draw();
}

function onUp() {
  if (state.drag) renderSide();
  state.drag = false;
}

function onKey(ev) {
  if ($('#view-zones').hidden || ev.target.closest('input, select, textarea')) return;
  if ((ev.key === 'Delete' || ev.key === 'Backspace') && state.vsel >= 0) {
    ev.preventDefault();
    state.zones[state.sel].polygon.splice(state.vsel, 1);
    state.vsel = -1;
    edited();
    renderSide();
    draw();
  }
}

// ---- side panel: zone list, id, schedule, rules and their parameters -------------------------

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (v !== false && v != null) node.setAttribute(k, v === true ? '' : v);
  }
  node.append(...children.filter((c) => c != null));
  return node;
}

// The value a number left out stands for. One derived from another field (learn_s from dwell_s:
// max(at_least, per × dwell_s)) follows that field as typed, or its default when it is empty;
// the schema's own default is derived from the default dwell only.
function defaultShown(box, rule, prop, props) {
  const derived = prop['x-derived'];
  if (!derived) return prop.default;
  const typed = box.querySelector(`input[name="${rule}.${derived.from}"]`)?.value.trim();
  const from = typed ? Number(typed) : props[derived.from]?.default;
  if (!Number.isFinite(from) || from < 0) return prop.default;  // the API refuses such a dwell
  return Math.max(derived.at_least, derived.per * from);
}

// The placeholders of the rule's derived fields (those derived from `from` only, when given).
function showDerived(box, rule, props, from = null) {
  for (const [name, prop] of Object.entries(props)) {
    const derived = prop['x-derived'];
    if (!derived || (from != null && derived.from !== from)) continue;
    const field = box.querySelector(`input[name="${rule}.${name}"]`);
    if (field) field.placeholder = String(defaultShown(box, rule, prop, props) ?? '');
  }
}

function paramInput(zone, rule, name, prop, props) {
  const value = zone.rules[rule]?.[name];
  const kind = prop.type || (prop.anyOf || []).map((x) => x.type).find((x) => x !== 'null');
  const isList = kind === 'array';
  const isText = isList || kind === 'string';
  // An integer's field is invalid at a fraction (step 1); its value goes to the API as typed,
  // which refuses a fraction, rather than cut to the integer before it.
  const input = h('input', {
    type: isText ? 'text' : 'number', step: !isText && (kind === 'integer' ? 1 : 'any'),
    name: `${rule}.${name}`,
    placeholder: isList ? (prop.default || []).join(', ') : String(prop.default ?? ''),
    value: value == null ? '' : (isList ? value.join(', ') : String(value)),
    // Fields derived from this one show the value they now stand for, while it is typed.
    oninput: (ev) => showDerived(ev.target.closest('.params'), rule, props, name),
    onchange: (ev) => {
      edited();
      const raw = ev.target.value.trim();
      if (!raw) delete zone.rules[rule][name];
      else if (isList) zone.rules[rule][name] = raw.split(',').map((s) => s.trim()).filter(Boolean);
      else if (isText) zone.rules[rule][name] = raw;
      else zone.rules[rule][name] = Number(raw);
    },
  });
  return h('label', { class: 'param', title: prop.description || '' }, h('span', { text: name }), input);
}

function rulesForm(zone) {
  const box = h('fieldset', {}, h('legend', { text: t('z.rules') }));
  for (const [rule, schema] of Object.entries(state.schema || {})) {
    const on = rule in zone.rules;
    const check = h('input', {
      type: 'checkbox', name: `rule-${rule}`, checked: on,
      onchange: (ev) => {
        edited();
        if (ev.target.checked) zone.rules[rule] = {};
        else delete zone.rules[rule];
        renderSide();
      },
    });
    const name = typeName(rule);
    const item = h('div', { class: 'rule' }, h('label', { title: schema.description || '' }, check, ` ${name.main} `, h('small', { class: 'muted', text: rule })));
    if (on) {
      const params = h('div', { class: 'params' });
      const props = schema.properties || {};
      for (const [pname, prop] of Object.entries(props)) {
        params.append(paramInput(zone, rule, pname, prop, props));
      }
      showDerived(params, rule, props);  // once every field is in place: dwell_s may follow
      item.append(params);
    }
    box.append(item);
  }
  return box;
}

function scheduleForm(zone) {
  const on = zone.schedule != null;
  const box = h('fieldset', {}, h('legend', {}, h('label', {}, h('input', {
    type: 'checkbox', name: 'schedule', checked: on,
    onchange: (ev) => {
      edited();
      zone.schedule = ev.target.checked ? { days: [...DAYS], from: '06:00', to: '23:00' } : null;
      renderSide();
    },
  }), ` ${t('z.schedule')}`)));
  if (!on) return box;
  const s = zone.schedule;
  const days = h('div', { class: 'days' }, ...DAYS.map((d) => h('label', {}, h('input', {
    type: 'checkbox', checked: s.days.includes(d),
    onchange: (ev) => {
      edited();
      s.days = ev.target.checked ? DAYS.filter((x) => x === d || s.days.includes(x)) : s.days.filter((x) => x !== d);
    },
  }), d)));
  const time = (key) => h('input', { type: 'time', value: s[key], onchange: (ev) => { edited(); s[key] = ev.target.value; } });
  box.append(days, h('div', {}, time('from'), ' – ', time('to')));
  return box;
}

function renderSide() {
  const list = $('#z-list');
  list.replaceChildren(...state.zones.map((z, i) => h('li', {
    class: i === state.sel ? 'on' : '',
    onclick: () => { state.sel = i; state.vsel = -1; renderSide(); draw(); },
  }, h('strong', { text: z.id }), ` · ${z.polygon.length} ${t('z.points')} · ${Object.keys(z.rules).join(', ')}`)));
  const form = $('#z-form');
  const zone = state.zones[state.sel];
  if (!zone) {
    form.replaceChildren();
    return;
  }
  const id = h('input', {
    type: 'text', name: 'zone-id', value: zone.id,
    onchange: (ev) => { edited(); zone.id = ev.target.value.trim(); renderSide(); draw(); },
  });
  form.replaceChildren(h('label', {}, h('span', { text: t('z.id') }), id), scheduleForm(zone), rulesForm(zone));
}

// ---- camera, snapshot, YAML -------------------------------------------------------------------

function loadCamera(id) {
  const cam = ref.cameras.find((c) => c.id === id);
  state.camera = cam || null;
  state.image = null;
  delete $('#z-canvas').dataset.snapshot;
  state.zones = (cam?.zones || []).map((z) => ({
    id: z.id, polygon: z.polygon.map((p) => [...p]),
    schedule: z.schedule ? { ...z.schedule, days: [...z.schedule.days] } : null,
    rules: JSON.parse(JSON.stringify(z.rules || {})),
  }));
  state.sel = state.zones.length ? 0 : -1;
  state.vsel = -1;
  state.snapSeq += 1; // a snapshot still on its way is another camera's
  state.edits += 1; // ... and so is a validation
  showYaml('');
  $('#z-errors').textContent = '';
  renderSide();
  draw();
}

// The YAML of the last validation; empty (and the buttons off) once the zones change after it.
function showYaml(text, valid) {
  const area = $('#z-yaml');
  area.value = text;
  if (valid === undefined) delete area.dataset.valid;
  else area.dataset.valid = String(valid);
  $('#z-copy').disabled = !text;
  $('#z-download').disabled = !text;
}

// Any change of the zones: the YAML validated before no longer describes them, and they are
// not validated (data-valid is gone: neither true nor the false of a refusal).
function edited() {
  state.edits += 1;
  if ($('#z-yaml').value || $('#z-yaml').dataset.valid) showYaml('');
}

async function snapshot() {
  const camera = state.camera;
  if (!camera) return;
  const seq = ++state.snapSeq;
  const canvas = $('#z-canvas');
  let shown = false;
  try {
    const blob = await request(`/cameras/${camera.id}/snapshot`, { method: 'POST', accept: 'image' });
    const img = new Image();
    img.src = URL.createObjectURL(blob);
    await img.decode();
    // The reviewer may have picked another camera (or asked again) meanwhile: a frame of
    // this request would then be drawn behind another camera's zones.
    if (seq !== state.snapSeq) return;
    canvas.width = 960;
    canvas.height = Math.round((960 * img.naturalHeight) / img.naturalWidth);
    state.image = img;
    canvas.dataset.snapshot = 'ok';
    shown = true;
    draw();
  } catch (err) {
    if (seq === state.snapSeq) toast(`${t('z.nosnap')}: ${err.message}`, true);
  } finally {
    // Tells whoever waits (the browser tests) that this request is over, shown or dropped.
    canvas.dispatchEvent(new CustomEvent('snapshot', { detail: { camera: camera.id, shown } }));
  }
}

function zonesBody() {
  return state.zones.map((z) => {
    const out = { id: z.id, polygon: z.polygon, rules: z.rules };
    if (z.schedule) out.schedule = z.schedule;
    return out;
  });
}

async function validate() {
  if (!state.camera) return;
  const camera = state.camera;
  const edits = state.edits;
  const current = () => state.camera === camera && state.edits === edits;
  const errors = $('#z-errors');
  errors.textContent = '';
  try {
    const result = await post(`/cameras/${state.camera.id}/zones/validate`, { zones: zonesBody() });
    if (!current()) return; // edited, or another camera, while the API was checking
    showYaml(result.yaml, true);
    toast(t('z.valid'));
  } catch (err) {
    if (!current()) return;
    showYaml('', false); // never leave an older, now stale, YAML to be copied
    errors.textContent = problemText(err);
  }
}

// What a failed request says: a refused schema's errors one a line ("loc: msg"), else its
// message.
export function problemText(err) {
  const list = err instanceof ApiError ? err.problem.errors : null;
  if (!list?.length) return err.message;
  return list.map((e) => (typeof e === 'string' ? e : `${(e.loc || []).join('.')}: ${e.msg}`))
    .join('\n');
}

function download() {
  const text = $('#z-yaml').value;
  if (!text || !state.camera) return;
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([text], { type: 'application/yaml' }));
  a.download = `${state.camera.id}-zones.yaml`;
  a.click();
  URL.revokeObjectURL(a.href);
}

async function copy() {
  const area = $('#z-yaml');
  try {
    await navigator.clipboard.writeText(area.value);
  } catch {
    area.select();
    document.execCommand('copy');
  }
  toast(t('z.copied'));
}

function bind() {
  const canvas = $('#z-canvas');
  canvas.addEventListener('mousedown', onDown);
  window.addEventListener('mousemove', onMove);
  window.addEventListener('mouseup', onUp);
  document.addEventListener('keydown', onKey);
  $('#z-camera').addEventListener('change', (ev) => loadCamera(ev.target.value));
  $('#z-snapshot').addEventListener('click', snapshot);
  $('#z-new').addEventListener('click', () => { newZone(); edited(); renderSide(); draw(); });
  $('#z-delete').addEventListener('click', () => {
    if (state.sel < 0) return;
    edited();
    state.zones.splice(state.sel, 1);
    state.sel = state.zones.length - 1;
    state.vsel = -1;
    renderSide();
    draw();
  });
  $('#z-validate').addEventListener('click', validate);
  $('#z-copy').addEventListener('click', copy);
  $('#z-download').addEventListener('click', download);
  state.bound = true;
}

export async function showZones() {
  if (!state.bound) bind();
  if (!state.schema) {
    try { state.schema = await get('/cameras/rule-schema'); } catch (err) { toast(err.message, true); }
  }
  const select = $('#z-camera');
  const previous = select.value;
  select.replaceChildren(...ref.cameras.map((c) => h('option', { value: c.id, text: c.name ? `${c.id} ${c.name}` : c.id })));
  if (previous) select.value = previous;
  if (!state.camera || state.camera.id !== select.value) loadCamera(select.value);
  else { renderSide(); draw(); }
}
