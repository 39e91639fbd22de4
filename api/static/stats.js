// Statistics page: renders whatever GET /stats returns — numbers, maps of numbers, maps of rows —
// for a window of the candidates' arrival (since <= received < until), by default the last 30
// days: the page never reads the whole history unless the reviewer clears the window.
import { get, query } from './api.js';
import { ref, siteInstant, toast, typeName, when } from './app.js';
import { STATUSES, t } from './i18n.js';

const LABELS = {
  by_type: 'st.by_type', by_camera: 'st.by_camera', by_status: 'st.by_status', by_day: 'st.by_day',
  counts: 'st.counts', precision: 'st.precision', sla_breaches: 'st.sla',
  total: 'st.total', precision_by_type: 'st.precision_type', precision_by_camera: 'st.precision_camera',
  sla: 'st.sla_summary', minutes: 'st.minutes', breaches: 'st.breaches', confirmed: 's.confirmed',
  false_positive: 'r.false_positive', type: 'col.type', camera_id: 'f.camera', arrive_by: 'd.arrive',
  arrived_at: 'st.arrived_at',
};
const STATUS_KEYS = new Set(STATUSES);
const TIMES = new Set(['arrive_by', 'arrived_at']); // shown as the site's wall-clock time
const label = (key) => (LABELS[key] ? t(LABELS[key]) : key.replaceAll('_', ' '));

function cell(value, column) {
  const td = document.createElement('td');
  if (column) td.dataset.label = label(column); // a phone shows it before the value
  if (column === 'precision' && typeof value === 'number') td.textContent = `${(value * 100).toFixed(1)} %`;
  else if (column === 'type' && value) td.textContent = typeName(value).main;
  else if (TIMES.has(column) && typeof value === 'string') td.textContent = when(value);
  else if (typeof value === 'number' && !Number.isInteger(value)) td.textContent = value.toFixed(3);
  else if (value !== null && typeof value === 'object') td.textContent = JSON.stringify(value);
  else td.textContent = value ?? '';
  return td;
}

function rowName(key) {
  if (STATUS_KEYS.has(key)) return t(`s.${key}`);
  if (LABELS[key]) return label(key);
  const name = typeName(key);
  return name.other ? `${name.main} (${key})` : key;
}

function table(entries) {
  const columns = new Set();
  for (const [, v] of entries) {
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) Object.keys(v).forEach((k) => columns.add(k));
  }
  const tbl = document.createElement('table');
  // A table of more than three columns (the SLA breaches) shows each row as a card on a phone.
  tbl.className = columns.size > 3 ? 'stats-table wide' : 'stats-table';
  const head = tbl.createTHead().insertRow();
  head.append(document.createElement('th'));
  const cols = columns.size ? [...columns] : [''];
  cols.forEach((c) => { const th = document.createElement('th'); th.textContent = label(c); head.append(th); });
  const body = tbl.createTBody();
  for (const [k, v] of entries) {
    const tr = body.insertRow();
    const th = document.createElement('th');
    th.textContent = rowName(k);
    tr.append(th);
    if (columns.size && v !== null && typeof v === 'object' && !Array.isArray(v)) cols.forEach((c) => tr.append(cell(v[c], c)));
    else tr.append(cell(v));
  }
  return tbl;
}

function section(key, value, depth = 0) {
  const box = document.createElement('section');
  box.className = 'stat-block';
  box.dataset.key = key;
  const h = document.createElement(depth ? 'h4' : 'h3');
  h.textContent = label(key);
  box.append(h);
  if (Array.isArray(value) && !value.length) {
    const none = document.createElement('p');
    none.className = 'big muted';
    none.textContent = '0';
    box.append(none);
  } else if (Array.isArray(value)) {
    box.append(table(value.map((item, i) => [item.key ?? item.name ?? item.id ?? String(i), item])));
  } else if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value);
    const nested = entries.some(([, v]) => v !== null && typeof v === 'object'
      && Object.values(v).some((x) => x !== null && typeof x === 'object'));
    if (nested && depth === 0) entries.forEach(([k, v]) => box.append(section(k, v, depth + 1)));
    else box.append(table(entries));
  } else {
    const big = document.createElement('p');
    big.className = 'big';
    big.textContent = typeof value === 'number' && !Number.isInteger(value) ? value.toFixed(3) : String(value);
    box.append(big);
  }
  return box;
}

const DEFAULT_DAYS = 30;
const $ = (sel) => document.querySelector(sel);
let shown = 0; // the latest request: an earlier answer arriving after it is dropped

// The default window's start: midnight (site time) of the day DEFAULT_DAYS - 1 before today,
// so that the window holds the last DEFAULT_DAYS days, today included, as whole days.
function defaultSince() {
  const fmt = new Intl.DateTimeFormat('en-US', {
    timeZone: ref.timezone, year: 'numeric', month: 'numeric', day: 'numeric',
  });
  const p = Object.fromEntries(fmt.formatToParts(new Date()).map((x) => [x.type, x.value]));
  const day = new Date(Date.UTC(+p.year, +p.month - 1, +p.day - (DEFAULT_DAYS - 1)));
  return `${day.toISOString().slice(0, 10)}T00:00`;
}

// The default window as lastDays set it, and the zone it was set in, while the reviewer keeps it.
let defaulted = null;

function lastDays() {
  $('#st-since').value = defaultSince();
  $('#st-until').value = '';
  defaulted = { zone: ref.timezone, since: $('#st-since').value };
}

// The default window set in another zone (the browser's, while the site's was still unknown),
// and kept as set: set again in the site's.
function defaultedElsewhere() {
  return defaulted !== null && defaulted.zone !== ref.timezone
    && $('#st-since').value === defaulted.since && !$('#st-until').value;
}

function period() {
  const params = {};
  for (const [k, v] of new FormData($('#stats-filters')).entries()) if (v) params[k] = siteInstant(v);
  return params;
}

async function load() {
  const body = $('#stats-body');
  const seq = ++shown;
  try {
    const stats = await get(`/stats${query(period())}`);
    if (seq !== shown) return;
    body.replaceChildren(...Object.entries(stats).map(([k, v]) => section(k, v)));
  } catch (err) {
    if (seq === shown) toast(err.message, true);
  }
}

export function showStats() {
  const form = $('#stats-filters');
  for (const input of form.querySelectorAll('input')) input.title = ref.timezone || '';
  if (!form.dataset.ready) { // once: the reviewer's window stays as set when coming back
    form.dataset.ready = '1';
    lastDays();
    form.addEventListener('change', load);
    $('#st-last').addEventListener('click', () => { lastDays(); load(); });
  } else if (defaultedElsewhere()) {
    lastDays();
  }
  return load();
}
