// The review queue: filters, list, detail view, keyboard triage and live updates (SSE).
import { ApiError, evidenceUrl, get, post, query } from './api.js';
import { dialog, ref, siteInstant, toast, typeName, when } from './app.js';
import { REASON_CODES, STATUSES, actionName, currentLang, t, tf } from './i18n.js';
import { problemText } from './zones.js';

const IMAGE_KINDS = ['annotated', 'clean', 'latest', 'snapshot', 'first_seen', 'crop'];
// The decisions the API accepts in each status (api/status.py REVIEW); none in the others.
const DECISIONS = {
  new: ['confirm', 'reject', 'return', 'merge'],
  incomplete: ['reject', 'return', 'merge'],
  returned: ['reject', 'merge'],
};
const allowed = (c, decision) => (DECISIONS[c.status] || []).includes(decision);
// Statuses nothing can be merged into (api/status.py FINAL).
const FINAL = ['rejected', 'merged', 'closed'];
// A confirmed case and the stages the platform takes it through (api/status.py VISIBLE).
const HANDED_OVER = [
  'confirmed', 'pulled', 'registered', 'dispatched', 'arrived', 'resolved', 'verified', 'closed',
];
const state = {
  items: [], selected: -1, cursor: null, detail: null, annotated: true, source: null,
  // The last case of the last page read (created_at, id): where the API's cursor sits, also
  // when that case has since left the list.
  boundary: null,
  initialised: false, loadSeq: 0, busy: false,
  // While a load is in flight (null when none is), what this tab heard of cases meanwhile, by
  // id: the page it brings may have been read before (see upToDate, applyMeanwhile). note is
  // the case as learned ({ c, full }: its own decision's answer, or a conflict's lookup, in
  // full; an event's summary otherwise), askAgain a live change to look up once the page lands.
  meanwhile: null,
  queued: new Set(), lookingUp: new Set(), // live changes to look up: see refresh
  missed: false, retries: 0, retryTimer: null, lastId: null, // live updates: see connectEvents
  // The case this tab is deciding (its own answer shows the outcome, not the live event), and
  // whether a live change to it was heard meanwhile (looked up again after the answer).
  deciding: null, recheck: false,
  // The selected case another reviewer decided while it was shown: kept on screen, without
  // its decision buttons, until the reviewer moves on (see applyUpdate, replacePage, select).
  gone: null,
  // The detail pane's case and when it came up: a click meant for the case before (the second
  // click of a double click) must not decide the one that replaced it under the pointer.
  shownId: null, shownAt: 0,
  reloading: false, // a first page (filters changed) is on its way: see load
  frames: new Map(), // frames that did not load, by hash: see frameFailed
  thumbTimers: new Map(), paneTimer: null, // frames tried again: see thumbTimer, paneTimer
  detailSeq: 0, // the detail pane's latest read: an answer to an earlier one is dropped
  // What the reviewer wrote in a decision's dialog, by "<case id> <decision>", until that
  // decision goes through: a failed one (network, 5xx, a refused note) opens with it again.
  drafts: new Map(),
  reviewer: null, // whose drafts they are: the name of the session they were written in
};
// The API's longest note (api/schemas.py Text).
const NOTE_MAX = 10000;
// How long after the detail pane shows another case its buttons ignore clicks.
const SETTLE_MS = 400;
const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c != null));
  return node;
};

// ---- formatting -----------------------------------------------------------------------------

function age(iso) {
  if (!iso) return '';
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} ${t('age.s')}`;
  if (s < 3600) return `${Math.round(s / 60)} ${t('age.m')}`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} ${t('age.h')}`;
  return `${(s / 86400).toFixed(1)} ${t('age.d')}`;
}

function place(c) {
  const loc = c.location || {};
  if (loc.address) return loc.address;
  if (loc.grid_code) return loc.grid_code;
  if (loc.lat != null) return `${Number(loc.lat).toFixed(4)}, ${Number(loc.lon).toFixed(4)}`;
  return '';
}

const sourceId = (c) => (c.source?.camera_id || c.source?.sensor_id || c.source?.type || '');
const cameraId = (c) => c.source?.camera_id || c.camera_id || '';
const sensorId = (c) => c.source?.sensor_id || c.sensor_id || '';

// Frames of a kind accumulate as a detector sends better ones while an episode goes on: show
// the newest (captured last; the later one in the list when the times do not tell), except
// for first_seen, which is the earliest sighting.
function evidenceOf(c, kind) {
  const earliest = kind === 'first_seen';
  let best;
  for (const e of c.evidence || []) {
    if (e.kind !== kind || !e.sha256) continue;
    const at = Date.parse(e.captured_at || '');
    const bestAt = best ? Date.parse(best.captured_at || '') : NaN;
    if (!best) best = e;
    else if (earliest) { if (at < bestAt) best = e; } else if (!(at < bestAt)) best = e;
  }
  return best;
}

// The list's thumbnail: the first frame of IMAGE_KINDS that loads (one may not be uploaded yet,
// not be drawable, or not be had just now). A frame that could not be had is not asked for
// again until its time comes (see frameFailed): when none is left to try, a placeholder says
// why, and a timer of its own tries the frame whose time came first (see thumbTimer).
function thumbnail(c) {
  const all = [...new Set(IMAGE_KINDS.map((kind) => evidenceOf(c, kind)?.sha256).filter(Boolean))];
  if (!all.length) return el('span', { class: 'thumb none' });
  const placeholder = () => {
    const span = el('span', {
      class: 'thumb none', 'data-shas': all.join(' '), title: thumbTitle(all),
    });
    thumbTimer(c, span, all);
    return span;
  };
  const untried = () => all.filter((sha) => frameState(sha) === null);
  let sha = untried()[0];
  if (!sha) return placeholder();
  const img = el('img', { class: 'thumb', src: evidenceUrl(sha), alt: c.type, loading: 'lazy' });
  img.addEventListener('load', () => frameLoaded(sha));
  img.addEventListener('error', () => {
    frameFailed(sha);
    sha = untried()[0];
    if (sha) img.src = evidenceUrl(sha);
    else img.replaceWith(placeholder());
  });
  return img;
}

// A thumbnail placeholder's title: not uploaded only when none of its frames is held, not
// drawable when none can be drawn (or is held), could not be loaded (and is tried again)
// otherwise.
function thumbTitle(shas) {
  const whys = shas.map(frameState);
  if (whys.every((why) => why === 'absent')) return t('d.notuploaded');
  if (whys.every((why) => why === 'absent' || why === 'undrawable')) return t('d.undrawable');
  return t('d.unloaded');
}

// One timer a placeholder (the last one drawn for its case: the list drawn again drops the
// others, see renderList): when the earliest of its failing frames is due, that frame alone is
// tried again. None while the console is logged out (the list is drawn again on logging in),
// nor for a placeholder no longer on the page.
function thumbTimer(c, span, shas) {
  clearTimeout(state.thumbTimers.get(c.id));
  state.thumbTimers.delete(c.id);
  const at = dueAt(shas);
  if (at === null) return;
  state.thumbTimers.set(c.id, setTimeout(() => {
    state.thumbTimers.delete(c.id);
    if (!span.isConnected || !ref.session) return;
    const sha = shas.find(due);
    if (sha) state.frames.get(sha).reason = 'retrying';
    span.replaceWith(thumbnail(c)); // tries that frame, or waits again
  }, Math.max(0, at - Date.now())));
}

// ---- frames that did not load ---------------------------------------------------------------

// A frame that did not load is asked for once more, to learn why (an <img> does not tell):
// 404, the API holds no such file (not uploaded yet), is "absent" until the pane shows its case
// again (see showDetail). The store's 503 (with Retry-After), a 429, a proxy's 502 while the API
// restarts, a 408, a lost session (401), the network make it "failing": it says so and is tried
// again, where it is shown, after 1, 2, 5, 10, then every 30 s (or Retry-After when longer),
// no sooner when the pane shows its case again. An answer with the file (that the browser
// cannot draw: a cut JPEG passes the store's check) or any other refusal is "undrawable", for
// good: passed over like an absent one. "asking" while that answer is on its way, "retrying"
// while the frame is tried again.
const FRAME_RETRY_MS = [1000, 2000, 5000, 10000, 30000];
const TRANSIENT = (status) => status >= 500 || [401, 408, 429].includes(status);

// Why a frame is not drawn: 'absent', 'undrawable', 'failing', 'asking', or null (draw it). One
// asked about again after a retry failed still reads as failing meanwhile.
function frameState(sha) {
  const entry = state.frames.get(sha);
  if (!entry || entry.reason === 'retrying') return null;
  return entry.reason === 'asking' && entry.tries > 0 ? 'failing' : entry.reason;
}

// Whether a failing frame's time to be tried again has come; when the earliest of shas comes
// (null: none is failing).
const due = (sha) => {
  const entry = state.frames.get(sha);
  return entry?.reason === 'failing' && entry.until <= Date.now();
};
function dueAt(shas) {
  const times = shas.map((sha) => state.frames.get(sha))
    .filter((entry) => entry?.reason === 'failing').map((entry) => entry.until);
  return times.length ? Math.min(...times) : null;
}

function frameFailed(sha) {
  let entry = state.frames.get(sha);
  if (entry && entry.reason !== 'retrying') return; // known, or being asked
  entry = { reason: 'asking', tries: entry ? entry.tries : 0, until: 0 };
  state.frames.set(sha, entry);
  askWhy(sha, entry);
}

async function askWhy(sha, entry) {
  let response = null;
  let drawable = false;
  try {
    response = await fetch(evidenceUrl(sha), { credentials: 'same-origin' });
    // Served, yet not drawn: drawable now (it failed in between) or not at all.
    if (response.ok) {
      drawable = await createImageBitmap(await response.blob()).then(() => true, () => false);
    }
  } catch { /* the network: failing */ }
  if (state.frames.get(sha) !== entry) return; // loaded meanwhile, or tried afresh
  if (response?.status === 404) {
    entry.reason = 'absent';
  } else if (response && !drawable && !TRANSIENT(response.status)) {
    entry.reason = 'undrawable';
  } else {
    entry.reason = 'failing';
    const after = Number(response?.headers.get('Retry-After')) * 1000 || 0;
    const delay = Math.max(FRAME_RETRY_MS[Math.min(entry.tries, FRAME_RETRY_MS.length - 1)], after);
    entry.tries += 1;
    entry.until = Date.now() + delay;
  }
  framesChanged(sha);
}

function frameLoaded(sha) {
  if (!state.frames.delete(sha)) return;
  framesChanged(sha); // where it could not be loaded it shows now
}

// When the pane shows a case (again): its absent frames may have been uploaded since, and its
// failing ones whose time has come are tried again now; the others wait for their time.
function retryFrames(c) {
  for (const e of c?.evidence || []) {
    const entry = state.frames.get(e.sha256);
    if (entry?.reason === 'absent') state.frames.delete(e.sha256);
    else if (due(e.sha256)) entry.reason = 'retrying';
  }
}

// The pane's timer: the frames it says could not be loaded are tried again when their time
// comes (while logged in).
function paneTimer(shas) {
  clearTimeout(state.paneTimer);
  const at = dueAt(shas);
  if (at === null) return;
  state.paneTimer = setTimeout(() => {
    if (!ref.session) return;
    for (const sha of shas.filter(due)) state.frames.get(sha).reason = 'retrying';
    renderDetail(); // tries those, or waits again
  }, Math.max(0, at - Date.now()));
}

const usesFrame = (c, sha) => Boolean(c?.evidence?.some((e) => e.sha256 === sha));
const placeholders = (sha) => [...document.querySelectorAll('#queue-body span.thumb[data-shas]')]
  .filter((span) => span.dataset.shas.split(' ').includes(sha));

// Show what is known of a frame now: the pane and the thumbnails waiting for it drawn again
// (which asks for no frame before its time).
function framesChanged(sha) {
  if (usesFrame(state.detail, sha)) renderDetail();
  for (const span of placeholders(sha)) {
    const c = state.items.find((x) => x.id === span.closest('tr')?.dataset.id);
    if (c) span.replaceWith(thumbnail(c));
  }
}

const statusBadge = (status) => el('span', { class: `badge s-${status}`, text: t(`s.${status}`) });

// ---- filters and list -----------------------------------------------------------------------

function fillSelect(select, values, label) {
  const current = select.value;
  select.replaceChildren(el('option', { value: '', text: t('f.all') }));
  for (const v of values) select.append(el('option', { value: v, text: label(v) }));
  select.value = current;
}

function fillFilters() {
  for (const input of [$('#f-since'), $('#f-until')]) input.title = ref.timezone || '';
  const status = $('#f-status');
  fillSelect(status, STATUSES, (s) => t(`s.${s}`));
  if (!state.initialised) status.value = 'new';
  fillSelect($('#f-type'), [...ref.types.keys()], (k) => typeName(k).main);
  fillSelect($('#f-camera'), ref.cameras.map((c) => c.id), (id) => {
    const cam = ref.cameras.find((c) => c.id === id);
    return cam?.name ? `${id} ${cam.name}` : id;
  });
  fillSelect($('#f-sensor'), ref.sensors.map((s) => s.id), (id) => id);
}

function filters() {
  const form = new FormData($('#filters'));
  const params = {};
  for (const [k, v] of form.entries()) {
    if (!v) continue;
    params[k] = (k === 'since' || k === 'until') ? siteInstant(v) : v;
  }
  return params;
}

function matches(c) {
  const f = filters();
  if (f.status && c.status !== f.status) return false;
  if (f.type && c.type !== f.type) return false;
  if (f.camera_id && cameraId(c) !== f.camera_id) return false;
  if (f.sensor_id && sensorId(c) !== f.sensor_id) return false;
  // The API filters the time window on when it received the candidate: since <= at < until
  // (a case received at the end instant belongs to the next window, as in the API's list).
  const at = Date.parse(c.created_at || c.occurred_at || '');
  if (f.since && at < Date.parse(f.since)) return false;
  if (f.until && at >= Date.parse(f.until)) return false;
  return true;
}

// The first page of the queue (or, with append, the next one). keep holds on to the selected
// case (a reload after lost live updates, or back in the queue, must not move the reviewer).
async function load(append = false, keep = false) {
  if (append && state.reloading) return; // the next page of the list being replaced
  const seq = ++state.loadSeq;
  if (!append) {
    state.reloading = true;
    $('#queue-more').hidden = true;
  }
  state.meanwhile ??= new Map();
  let page;
  try {
    page = await get(`/candidates${query(pageParams(append))}`);
  } catch (err) {
    toast(err.message, true);
    if (seq === state.loadSeq) landed();
    return;
  }
  const kept = keep && !append ? await keptCase(page, seq) : {};
  if (seq !== state.loadSeq) return; // a newer filter change won
  if (kept.failed) { // not known as it is now: the list stays as it is, as when a page fails
    landed();
    return;
  }
  const shown = state.items[state.selected]?.id;
  if (append) appendPage(page);
  else replacePage(page, kept);
  state.cursor = page.next_cursor || null;
  const last = page.items[page.items.length - 1];
  if (last || !append) state.boundary = last ? { created_at: last.created_at, id: last.id } : null;
  landed();
  drained(); // the page listed only cases decided since it was read
  if (!append || state.items[state.selected]?.id !== shown) await showDetail();
}

function pageParams(append) {
  const params = { ...filters(), limit: 50 };
  if (append && state.cursor) params.cursor = state.cursor;
  return params;
}

// The load is over (its page applied, or it failed): what was heard meanwhile applies now.
function landed() {
  state.reloading = false;
  renderList();
  applyMeanwhile();
}

// The case to keep selected across a reload: the one selected when the page lands (the
// reviewer may have decided the one selected when it was asked). One the page does not list
// (decided elsewhere since, or listed on a later page) is looked up, to stay on screen rather
// than be replaced unseen by the next case, which the next key would decide. The answer:
// { id } the page's copy is kept (or none, without an id); { id, c, gone } the copy to keep,
// gone when it left the list (decided elsewhere); { failed: true } when the lookup failed.
async function keptCase(page, seq) {
  let looked = null;
  for (;;) {
    const shown = state.items[state.selected];
    const id = shown?.id;
    if (!id || seq !== state.loadSeq) return { id };
    // Held as decided elsewhere: this tab knows it already (the page may show it later).
    if (state.gone === id) return { id, c: shown, gone: true };
    if (page.items.some((x) => x.id === id)) return { id };
    if (id === state.deciding) { // its answer shows the outcome (see lookUp), not a lookup
      state.recheck = true;
      return { id, c: shown, gone: false };
    }
    if (looked?.id === id) return lookedUp(shown, looked);
    try {
      looked = await get(`/candidates/${id}`);
    } catch (err) {
      toast(err.message, true);
      return { failed: true };
    }
  }
}

// A looked-up case to keep, as this tab knows it now (see upToDate). It left the list when its
// status changed from the one listed (decided elsewhere); one merely outside the filters the
// page was read with (changed since the list was read) is not kept (see replacePage).
function lookedUp(shown, looked) {
  const [c] = upToDate([looked], looked.id);
  return { id: c.id, c, gone: c.status !== shown.status && !matches(c) };
}

function appendPage(page) {
  // A case shown live since the last page, or kept from a later one, may come again in this
  // one; the next page's cases go where the API lists them, newest first (see sortedIndex).
  const listed = new Set(state.items.map((x) => x.id));
  const shown = state.items[state.selected];
  for (const c of upToDate(page.items.filter((x) => !listed.has(x.id)))) {
    state.items.splice(sortedIndex(c), 0, c);
  }
  // The list had drained: the next page's first case is next.
  state.selected = shown ? state.items.indexOf(shown) : (state.items.length ? 0 : -1);
}

// A first page in place of the list. The case kept selected (kept: see keptCase) stays, as the
// page or its lookup shows it; one that left the list stays shown as decided elsewhere, without
// its actions, until the reviewer moves on (see moveOn), as when heard live (see applyUpdate).
// One neither listed nor decided elsewhere (outside the filters now) is not kept.
function replacePage(page, { id, c, gone }) {
  state.items = upToDate(page.items, id, gone ? c : undefined);
  let index = id ? state.items.findIndex((x) => x.id === id) : -1;
  if (index < 0 && c && (gone || matches(c))) {
    index = sortedIndex(c);
    state.items.splice(index, 0, c);
  }
  // Still gone unless the page shows it later than this tab knew it (see upToDate).
  state.gone = gone && state.items[index] === c ? id : null;
  state.selected = index >= 0 ? index : (state.items.length ? 0 : -1);
}

// A case's updated_at as a number, to the microsecond (the API's precision; Date.parse keeps
// milliseconds); NaN without one, which is neither later nor earlier than another.
function stamp(c) {
  const iso = c.updated_at || '';
  const fraction = /\.(\d+)/.exec(iso)?.[1] || '';
  return Date.parse(iso) * 1000 + Number(fraction.padEnd(6, '0').slice(3, 6));
}

// While a load is in flight, what this tab heard of a case meanwhile (see state.meanwhile).
function meanwhileEntry(id) {
  if (!state.meanwhile.has(id)) state.meanwhile.set(id, { note: null, askAgain: false });
  return state.meanwhile.get(id);
}

// Note what this tab learned of a case while a load is in flight (see upToDate).
function noteWhileLoading(c, full) {
  if (!state.meanwhile) return; // no page on its way: the next one is read after this
  const heard = meanwhileEntry(c.id);
  const known = heard.note?.c;
  // The later wins; of two of the same change (this tab's answer and its event) the full one.
  if (!known || stamp(c) > stamp(known) || (full && stamp(c) === stamp(known))) {
    heard.note = { c, full };
  }
}

// A page's cases as this tab knows them now: one changed after the page was read (decided
// here, or heard decided live) is shown as it is now, or left out when the list would not show
// it any more. It must not come back because the page was read before the decision. A case the
// page shows later than that (returned, then completed again) is the page's. Only an event's
// summary is known of a case heard changed: one still listed keeps the page's copy until its
// lookup comes back; so does the case kept selected (keepId), which that lookup shows as
// decided elsewhere rather than replace it unseen. The kept case held as decided elsewhere
// (held) stays so unless the page shows it later still: an event heard since tells too little.
function upToDate(items, keepId, held) {
  return items.flatMap((x) => {
    if (held && x.id === held.id) return [stamp(x) > stamp(held) ? x : held];
    const known = state.meanwhile?.get(x.id)?.note;
    if (!known || !(stamp(known.c) > stamp(x))) return [x];
    if (!matches(known.c) && x.id !== keepId) return [];
    return [known.full ? known.c : x];
  });
}

// Every loaded case is decided but more pages wait: read the next one, as "More" would.
function drained() {
  if (!state.items.length && state.cursor && !state.meanwhile) load(true);
}

function row(c, index) {
  const name = typeName(c.type);
  const tr = el('tr', {
    'data-id': c.id, class: index === state.selected ? 'selected' : '',
    onclick: () => select(index),
  },
  el('td', {}, thumbnail(c)),
  el('td', { class: 'kind' }, el('div', { text: name.main }),
    el('div', { class: 'muted small', text: name.other })),
  el('td', { class: 'mono', text: sourceId(c) }),
  el('td', { class: 'place' }, el('div', { text: place(c), title: place(c) })),
  el('td', { class: 'age', 'data-at': c.occurred_at || '', text: age(c.occurred_at) }),
  el('td', {}, statusBadge(c.status)));
  if (c._fresh) tr.classList.add('fresh');
  if (c.id === state.gone) tr.classList.add('gone');
  return tr;
}

function renderList() {
  const body = $('#queue-body');
  // Every thumbnail is drawn afresh (with timers of its own): a case no longer listed has none.
  for (const timer of state.thumbTimers.values()) clearTimeout(timer);
  state.thumbTimers.clear();
  body.replaceChildren(...state.items.map(row));
  // Nothing listed but a page waits: it is on its way (see drained), not "no matching cases".
  $('#queue-empty').hidden = state.items.length > 0 || Boolean(state.cursor);
  // Its cursor belongs to the list being replaced: a page read with it would mix the two.
  $('#queue-more').hidden = !state.cursor || state.reloading;
  const current = body.querySelector('tr.selected');
  if (current) current.scrollIntoView({ block: 'nearest' });
}

async function select(index) {
  if (state.gone) {
    await moveOn(index);
    return;
  }
  if (index < 0 || index >= state.items.length) return;
  state.selected = index;
  document.querySelectorAll('#queue-body tr').forEach((tr, i) => tr.classList.toggle('selected', i === index));
  document.querySelector('#queue-body tr.selected')?.scrollIntoView({ block: 'nearest' });
  await showDetail();
}

// Away from a case decided elsewhere (see applyUpdate): it leaves the list, and the reviewer
// goes to the case at index as the list was (or the nearest one, past either end).
async function moveOn(index) {
  const gone = state.items.findIndex((x) => x.id === state.gone);
  if (index === gone) return; // the same case: still shown as decided
  const target = state.items[index];
  state.gone = null;
  if (gone >= 0) state.items.splice(gone, 1);
  const at = target ? state.items.indexOf(target) : Math.min(Math.max(index, 0), state.items.length - 1);
  state.selected = state.items.length ? Math.max(at, 0) : -1;
  renderList();
  drained();
  await showDetail();
}

// ---- detail ---------------------------------------------------------------------------------

const closeZoom = () => document.querySelectorAll('.zoom').forEach((z) => z.remove());

function zoom(src) {
  closeZoom();
  const overlay = el('div', { class: 'zoom' });
  let scale = 1;
  const img = el('img', { src, alt: '' });
  overlay.addEventListener('wheel', (ev) => {
    ev.preventDefault();
    scale = Math.min(8, Math.max(0.5, scale * (ev.deltaY < 0 ? 1.2 : 1 / 1.2)));
    img.style.transform = `scale(${scale})`;
  });
  overlay.addEventListener('click', () => overlay.remove());
  overlay.append(img);
  document.body.append(overlay);
}

// A frame that fails to load is asked about (see frameFailed) and the detail drawn again, which
// shows another frame in place of one not uploaded yet or not drawable, or says it is not there
// yet, or cannot be shown, or that it could not be loaded and is tried again.
const FRAME_TEXT = {
  absent: 'd.notuploaded', undrawable: 'd.undrawable', failing: 'd.unloaded',
};

function figure(ev, caption, cls = '') {
  if (!ev) return null;
  const sha = ev.sha256;
  const src = evidenceUrl(sha);
  const why = frameState(sha);
  const frame = why
    ? el('p', { class: `noframe muted ${why}`, text: FRAME_TEXT[why] ? t(FRAME_TEXT[why]) : '' })
    : el('img', {
      src, alt: caption, class: 'evidence', onclick: () => zoom(src),
      onload: () => frameLoaded(sha), onerror: () => frameFailed(sha),
    });
  return el('figure', { class: cls }, frame,
    el('figcaption', { text: `${caption} ${when(ev.captured_at)}` }));
}

function facts(c) {
  const rows = [];
  const add = (key, value) => { if (value !== undefined && value !== null && value !== '') rows.push([t(key), String(value)]); };
  add('d.description', c.description);
  add('d.occurred', when(c.occurred_at));
  add('d.severity', c.severity);
  add('d.urgency', c.urgency);
  const cat = c.category;
  const catName = cat && (currentLang() === 'en' && cat.name_en ? cat.name_en : cat.name_zh);
  add('d.category', cat ? `${cat.code || ''} ${catName || ''}`.trim() : '');
  add('d.unit', c.suggested_unit);
  add('d.hold', when(c.hold_until));
  add('d.arrive', when(c.arrive_by));
  if (c.missing_elements?.length) add('d.missing', c.missing_elements.join(', '));
  // A rejection's reason as the reject dialog names it; where a merged case went, and the
  // cases merged into this one (or that its producer refers to).
  if (c.review?.reason_code) add('d.reason_code', t(`r.${c.review.reason_code}`));
  add('d.reason', c.review?.reason);
  add('d.merged_into', c.merged_into);
  if (c.references?.length) add('d.references', c.references.join(', '));
  const d = c.detection;
  if (d) {
    add('d.model', [d.model, d.model_version].filter(Boolean).join(' '));
    add('d.score', d.score != null ? Number(d.score).toFixed(2) : null);
    add('d.zone', d.zone_id);
    add('d.dwell', d.dwell_s != null ? `${Math.round(d.dwell_s)} ${t('age.s')}` : null);
    add('d.boxes', d.boxes?.length);
    add('d.ended', when(d.ended_at)); // the scene was last seen then: the matter may be over
  }
  const a = c.alarm;
  if (a) {
    add('d.alarm_type', a.alarm_type);
    add('d.count', a.count);
    add('d.first_seen', when(a.first_seen));
    add('d.last_seen', when(a.last_seen));
    add('d.cleared', when(a.cleared_at)); // the device reported the alarm over
  }
  if (c.measurements?.length) {
    add('d.measurements', c.measurements.map((m) => `${m.n ?? ''} ${m.v ?? m.vs ?? m.vb ?? ''} ${m.u ?? ''}`.trim()).join('; '));
  }
  return el('dl', { class: 'facts' }, ...rows.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })]));
}

// Routine updates by one producer fold into one history entry: how many, and the latest's time.
const folded = (h) => tf('d.folded', { n: h.count, at: when(h.last_at) });

function history(c) {
  return el('ol', { class: 'history' }, ...(c.history || []).map((h) => el('li', {},
    el('span', { class: 'muted', text: when(h.at) }), ' ',
    el('strong', { text: actionName(h.action) }), ' ', el('span', { text: h.who || '' }),
    h.count > 1 ? el('span', { class: 'muted', text: ` · ${folded(h)}` }) : null,
    h.reason_code ? el('span', { text: ` · ${t(`r.${h.reason_code}`)}` }) : null,
    h.reason ? el('span', { class: 'muted', text: ` — ${h.reason}` }) : null)));
}

function renderDetail() {
  const pane = $('#detail');
  const c = state.detail;
  if (!c) {
    clearTimeout(state.paneTimer);
    pane.replaceChildren(el('p', { class: 'muted', text: t('d.none') }));
    return;
  }
  const name = typeName(c.type);
  // A frame not uploaded yet, or that cannot be drawn, is passed over for the other one (one
  // that could not be loaded just now is not: it says so where it goes, and is tried again).
  const usable = (...kinds) => kinds.map((k) => evidenceOf(c, k))
    .find((e) => e && !['absent', 'undrawable'].includes(frameState(e.sha256)));
  const annotated = usable('annotated');
  const clean = usable('clean', 'snapshot');
  const main = state.annotated ? (annotated || clean) : (clean || annotated);
  const framed = ['annotated', 'clean', 'snapshot'].map((k) => evidenceOf(c, k)).filter(Boolean);
  const noFrame = !framed.length ? 'd.noimage'
    : FRAME_TEXT[framed.some((e) => frameState(e.sha256) === 'absent') ? 'absent' : 'undrawable'];
  const showsAnnotated = main != null && main === annotated;
  const mainKind = showsAnnotated ? t('d.annotated') : t('d.clean');
  // Crops (a scene head trains on them: see docs/scene-heads.md) each in a row of their own;
  // every other file the pane does not draw (earlier frames of a kind, a sensor trace) a link.
  const crops = unique((c.evidence || []).filter((e) => e.kind === 'crop' && e.sha256));
  // (The newest annotated and clean frames count as drawn when not uploaded yet: the pane
  // says so, or shows another in their place.)
  const shown = ['annotated', 'clean', 'first_seen', 'latest'].map((k) => evidenceOf(c, k));
  const drawn = new Set([annotated, clean, ...shown, ...crops].filter(Boolean).map((e) => e.sha256));
  const others = unique((c.evidence || []).filter((e) => e.sha256 && !drawn.has(e.sha256)));
  const gone = state.gone === c.id;
  const action = (decision) => el('button', {
    type: 'button', id: `act-${decision}`, text: t(`d.${decision}`),
    ...(allowed(c, decision) && !gone ? {} : { disabled: '' }), onclick: (ev) => clicked(ev, decision),
  });
  const actions = el('div', { class: settling(c) ? 'actions settling' : 'actions' },
    action('confirm'), action('reject'), action('return'), action('merge'));
  const parts = [
    el('header', { class: 'detail-head' },
      el('h2', {}, `${name.main} `, el('small', { class: 'muted', text: name.other })),
      statusBadge(c.status),
      el('div', { class: 'mono small muted', text: `${c.id} · ${sourceId(c)} · ${place(c)}` })),
    gone ? el('p', { id: 'decided-elsewhere', class: 'notice', role: 'alert', text: decidedElsewhere(c) }) : null,
    actions,
    main
      ? el('div', { class: 'main-evidence' },
        el('div', { class: 'toggle' },
          // The toggle tells which frame is shown; a kind the candidate lacks cannot be picked.
          el('button', {
            type: 'button', id: 'toggle-annotated', class: showsAnnotated ? 'on' : '', text: t('d.annotated'),
            ...(annotated ? {} : { disabled: '' }), onclick: () => toggle(true),
          }),
          el('button', {
            type: 'button', id: 'toggle-clean', class: showsAnnotated ? '' : 'on', text: t('d.clean'),
            ...(clean ? {} : { disabled: '' }), onclick: () => toggle(false),
          })),
        figure(main, mainKind, 'main'))
      : el('p', { class: 'muted noframe', text: t(noFrame) }),
    el('div', { class: 'dwell' }, figure(evidenceOf(c, 'first_seen'), t('d.first')), figure(evidenceOf(c, 'latest'), t('d.latest'))),
    crops.length
      ? el('div', { class: 'crops' }, ...crops.map((e) => figure(e, t('d.crop'))))
      : null,
    others.length
      ? el('p', { class: 'evidence-links' }, `${t('d.evidence')}: `, ...others.flatMap((e, i) => [
        i ? ' ' : null,
        el('a', {
          href: evidenceUrl(e.sha256), target: '_blank', rel: 'noopener', text: e.kind,
          title: when(e.captured_at),
        })]))
      : null,
    el('h3', { text: t('d.facts') }), facts(c),
    el('h3', { text: t('d.history') }), history(c)];
  pane.replaceChildren(...parts.filter((p) => p != null));
  paneTimer([main, evidenceOf(c, 'first_seen'), evidenceOf(c, 'latest'), ...crops]
    .filter(Boolean).map((e) => e.sha256));
}

// Whether the pane has just come to show this case: its buttons ignore clicks a moment, so a
// click aimed at the case before (a double click's second one, say) does not decide this one.
function settling(c) {
  const now = performance.now();
  if (c.id !== state.shownId) {
    state.shownId = c.id;
    state.shownAt = now;
  }
  const left = SETTLE_MS - (now - state.shownAt);
  if (left <= 0) return false;
  setTimeout(() => {
    if (performance.now() - state.shownAt >= SETTLE_MS) $('#detail .actions')?.classList.remove('settling');
  }, left);
  return true;
}

function clicked(ev, decision) {
  if (ev.detail > 1 || performance.now() - state.shownAt < SETTLE_MS) return;
  decide(decision);
}

// The history entries of a decision on a case (a reviewer's, or the policy's automatic one).
const DECIDED = ['confirmed', 'rejected', 'returned', 'merged', 'auto_confirmed'];

// "Decided by <who>: <status>" of a case another reviewer decided while it was shown. The
// decision's entry names them: a later step (the platform pulling a confirmed case, a
// producer's update) is not the decision. A case still undecided left for its last change.
function decidedElsewhere(c) {
  const steps = c.history || [];
  const undecided = DECISIONS[c.status] && c.status !== 'returned';
  const by = (undecided ? undefined : steps.findLast((h) => DECIDED.includes(h.action))) || steps.at(-1);
  return tf('d.elsewhere', { who: by?.who || '?', status: t(`s.${c.status}`) });
}

// Evidence items, each file once (the first item naming it).
const unique = (items) => items.filter(
  (e, i) => items.findIndex((x) => x.sha256 === e.sha256) === i);

function toggle(annotated) {
  state.annotated = annotated;
  renderDetail();
}

// The pane's case, read in full. Reads overlap (a live change shows the case again while an
// earlier read of it is on its way): only the latest read's answer is shown. A list copy older
// than the one shown (a page read before a decision, say) does not replace it; the latest read
// does whatever its stamp, which another API instance's clock may have set behind the shown one.
async function showDetail() {
  const seq = ++state.detailSeq;
  const c = state.items[state.selected];
  retryFrames(c); // a frame uploaded since, or that could not be had then, is tried again
  if (!c) {
    state.detail = null;
    renderDetail();
    return;
  }
  if (!olderThanShown(c)) state.detail = c;
  renderDetail();
  try {
    const full = await get(`/candidates/${c.id}`);
    if (seq !== state.detailSeq) return;
    if (state.items[state.selected]?.id === full.id) {
      state.detail = full;
      renderDetail();
    }
  } catch (err) {
    if (seq === state.detailSeq) toast(err.message, true);
  }
}

// Whether the pane shows this case changed later than copy c (see stamp).
const olderThanShown = (c) => state.detail?.id === c.id && stamp(state.detail) > stamp(c);

// ---- triage ---------------------------------------------------------------------------------

// A decision's note, holding what was written for it before (draft).
const noteInput = (placeholder, draft) => el('input', {
  type: 'text', name: 'reason', placeholder, maxlength: String(NOTE_MAX),
  value: draft?.reason || '',
});

const reasonPicker = (draft) => (body) => {
  const list = el('div', { class: 'reasons' });
  const picked = draft?.reason_code || REASON_CODES[0];
  REASON_CODES.forEach((code, i) => {
    const checked = code === picked ? { checked: '' } : {};
    list.append(el('label', {},
      el('input', { type: 'radio', name: 'reason_code', value: code, ...checked }),
      ` ${i + 1} ${t(`r.${code}`)}`));
  });
  const note = noteInput(t('dlg.reason'), draft);
  body.append(list, note);
  body.onkeydown = (ev) => {
    const n = Number(ev.key);
    if (ev.target === note || !(n >= 1 && n <= REASON_CODES.length)) return;
    body.querySelectorAll('input[name=reason_code]')[n - 1].checked = true;
  };
  setTimeout(() => body.querySelector('input[name=reason_code]:checked').focus(), 0);
  return () => {
    const code = body.querySelector('input[name=reason_code]:checked').value;
    const reason = note.value.trim();
    // "Other" says nothing by itself: its note is the reason.
    if (code === 'other' && !reason) return { invalid: t('dlg.needreason') };
    return { reason_code: code, reason: reason || undefined };
  };
};

// The producer (or whoever completes the case) learns from the note what to add.
const returnNote = (draft) => (body) => {
  const note = noteInput(t('dlg.reasonreq'), draft);
  body.append(note);
  setTimeout(() => note.focus(), 0);
  return () => {
    const reason = note.value.trim();
    return reason ? { reason } : { invalid: t('dlg.needreason') };
  };
};

// A case id in any spelling the API takes for merge_into (a UUID: hyphenated or not, in braces,
// as a URN), in the stored form (hyphenated, lower case); null when it is none of them.
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
function caseId(text) {
  const bare = text.trim().toLowerCase().replace(/^urn:uuid:/, '').replace(/^\{(.*)\}$/, '$1');
  const id = /^[0-9a-f]{32}$/.test(bare)
    ? [bare.slice(0, 8), bare.slice(8, 12), bare.slice(12, 16), bare.slice(16, 20), bare.slice(20)].join('-')
    : bare;
  return UUID.test(id) ? id : null;
}

// The merge dialog offers the open cases of the same type and camera or sensor that occurred
// within a day (asked of the API, loaded or not), and any open case whose id is pasted.
function mergePicker(draft, current) {
  return (body) => {
    const search = el('input', {
      type: 'text', name: 'merge_id', placeholder: t('dlg.mergeid'), autocomplete: 'off',
      value: draft?.merge_into || '', // the case chosen before: looked up below, as if pasted
    });
    const select = el('select', { name: 'merge_into', size: '8', hidden: '' });
    const note = el('p', { class: 'muted', text: t('dlg.mergeloading') });
    // Pasted ids that name no case to merge into (none, itself, a final one). A lookup that
    // failed otherwise (a network error, a 500) refuses nothing: the API judges the id on OK.
    const refused = new Set();
    const offer = (c, first) => {
      if (c.id === current.id || FINAL.includes(c.status) || select.querySelector(`option[value="${c.id}"]`)) return;
      const option = el('option', { value: c.id, text: `${typeName(c.type).main} · ${sourceId(c)} · ${age(c.occurred_at)} · ${c.id.slice(0, 8)}` });
      if (first) select.prepend(option); else select.append(option);
      select.hidden = false;
      note.hidden = true;
    };
    body.append(search, select, note);
    // Whichever control was used last names the case: choosing in the list drops a pasted id.
    select.addEventListener('change', () => { search.value = ''; });
    get(`/candidates${query({ near: current.id, open: true })}`).then((page) => {
      page.items.forEach((c) => offer(c, false));
      if (select.selectedIndex < 0 && select.options.length) select.selectedIndex = 0;
      note.textContent = t('dlg.nomerge');
    }, (err) => { note.textContent = err.message; });
    search.addEventListener('input', async () => {
      const id = caseId(search.value);
      if (!id) return;
      let c;
      try { c = await get(`/candidates/${id}`); } catch (err) {
        if (err instanceof ApiError && err.status === 404) refused.add(id);
        if (caseId(search.value) === id) toast(err.message, true);
        return;
      }
      if (c.id === current.id || FINAL.includes(c.status)) refused.add(id);
      if (caseId(search.value) !== id) return; // another id was pasted meanwhile
      if (refused.has(id)) {
        toast(`${t('dlg.mergefinal')} (${t(`s.${c.status}`)})`, true);
        return;
      }
      offer(c, true);
      select.value = c.id;
    });
    if (search.value) search.dispatchEvent(new Event('input'));
    setTimeout(() => search.focus(), 0);
    return () => {
      // A pasted id (still in the box, so not chosen over in the list since) wins, also when
      // Enter came before its case was shown.
      const typed = caseId(search.value);
      if (search.value.trim() && !typed) return { invalid: t('dlg.badid') };
      if (typed) return refused.has(typed) ? { invalid: t('dlg.mergefinal') } : { merge_into: typed };
      return select.value ? { merge_into: select.value } : { invalid: t('dlg.pickmerge') };
    };
  };
}

async function decide(decision) {
  const c = state.items[state.selected];
  if (!c || state.busy) return; // one decision at a time: a double press must not hit the next case
  if (state.gone === c.id) { // decided elsewhere while shown: the reviewer moves on first
    toast(decidedElsewhere(c), true);
    return;
  }
  // The case as the reviewer sees it: the pane's copy (read in full after the list's, and
  // what its buttons are judged on) when it shows this case.
  const shown = state.detail?.id === c.id ? state.detail : c;
  const seen = { status: shown.status, updated_at: shown.updated_at };
  if (!allowed(seen, decision)) {
    toast(`${t('err.notallowed')} (${t(`s.${seen.status}`)})`, true);
    return;
  }
  state.busy = true;
  try {
    await decideOn(c, decision, seen);
  } finally {
    state.busy = false;
  }
}

// The dialogs asking what a decision needs; confirm needs nothing.
const ASK = { reject: reasonPicker, return: returnNote, merge: mergePicker };

// Decide c. A decision that fails (the network, a 5xx, a note refused) opens its dialog again,
// with what was written and why it failed, until it goes through or the reviewer cancels; the
// note is kept for the case until then (a lost session: the dialog after logging in again).
// seen: the status and updated_at of the case the reviewer decided on, which the decision is
// sent on the condition of.
async function decideOn(c, decision, seen) {
  // The title names the case: the one decided is the one the dialog was opened for.
  const title = `${t(`dlg.${decision}`)} · ${c.id.slice(0, 8)}`;
  const key = `${c.id} ${decision}`;
  let failed = '';
  for (;;) {
    let extra = {};
    if (ASK[decision]) {
      const fill = ASK[decision](state.drafts.get(key), c);
      let read = null;
      const answer = dialog(title, (body) => (read = fill(body)));
      $('#dlg-error').textContent = failed;
      // The dialog's close event comes a task after it closed: one opened again before that
      // would take it as its own closing (a Cancel) and close at once.
      const closed = new Promise((done) => {
        $('#dlg').addEventListener('close', done, { once: true });
      });
      extra = await answer;
      if (extra === null) {
        // Closed as the session was lost (the login form is up): what was written is kept
        // for this case, for the dialog after logging in again.
        const written = ref.session ? null : read?.();
        if (written && !written.invalid) state.drafts.set(key, written);
        return;
      }
      state.drafts.set(key, extra);
      await closed;
    }
    if (state.gone === c.id) { // decided elsewhere while the dialog was open: nothing is sent
      toast(decidedElsewhere(state.items.find((x) => x.id === c.id) || c), true);
      return;
    }
    failed = await send(c, decision, extra, seen);
    if (failed === null) return;
    // No dialog to show it in, no session to send it with (the login form is up), or no
    // decision left to make (the case was decided elsewhere meanwhile).
    if (!ASK[decision] || !ref.session || state.gone === c.id) {
      toast(failed, true);
      return;
    }
  }
}

// Send a decision: null when it was made (told by its answer, or by the case read again when
// the answer was lost), or refused as the case changed elsewhere (shown so); what went wrong
// otherwise. It is made only on the case still as seen (expected_status, and expected_updated_at
// for what else it judged: its type and evidence, a detector's routine updates aside): one
// changed meanwhile unheard (a live event missed, or not come yet) is refused with 409, not
// decided over what another reviewer did (a return and its note to the producer, say) or on
// a type and evidence the reviewer never saw.
async function send(c, decision, extra, seen) {
  state.deciding = c.id;
  const body = {
    decision, ...extra, expected_status: seen.status, expected_updated_at: seen.updated_at,
  };
  try {
    made(c, decision, await post(`/candidates/${c.id}/review`, body));
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 409)) {
      const current = lostAnswer(err) ? await recorded(c, decision) : null;
      if (!current) return problemText(err);
      made(c, decision, current);
      return null;
    }
    // Someone else decided first (or the case changed meanwhile): say what the API said and
    // show the case as it is now, so its badge and buttons tell what is still possible. It
    // changed elsewhere: one that left the list stays shown until the reviewer moves on.
    let current;
    try { current = await get(`/candidates/${c.id}`); } catch { current = null; }
    // The API names the case's updated_at when the case is what changed since it was read.
    const changed = err.problem?.updated_at !== undefined;
    if (decision === 'merge' && !changed && current?.status === seen.status
        && allowed(current, 'merge')) {
      // The case was not what changed: the case to merge into became final meanwhile. The
      // dialog opens again saying so, for another one to be chosen.
      const key = `${c.id} ${decision}`;
      state.drafts.set(key, { ...state.drafts.get(key), merge_into: undefined });
      applyUpdate(current, false, true);
      return err.message;
    }
    // Changed otherwise than in its status (another type or evidence, say): what the reviewer
    // judged is not what is there, which the case shown again tells.
    toast(changed ? t('err.changed') : `${t('err.conflict')}: ${err.message}`, true);
    if (current) applyUpdate(current, false, true);
  } finally {
    state.deciding = null;
    if (state.recheck) { // a live change heard meanwhile was left to the answer: see lookUp
      state.recheck = false;
      refresh(c.id);
    }
  }
  return null;
}

function made(c, decision, updated) {
  state.drafts.delete(`${c.id} ${decision}`);
  toast(`${t(`ok.${decision}`)} · ${c.id.slice(0, 8)}`);
  applyUpdate(updated, true);
}

// The status each decision leads to (api/status.py REVIEW), which its history entry names.
const OUTCOME = { confirm: 'confirmed', reject: 'rejected', return: 'returned', merge: 'merged' };

// A failure after which the decision may have been made all the same: the network dropped
// the answer, or a proxy answered 502/504 for an API that committed. The API's own refusals
// (4xx) made nothing.
const lostAnswer = (err) => !(err instanceof ApiError) || err.status >= 500;

// The case read again, when it records the decision as made: its last decision this reviewer's
// making it, and the case in the status it leads to, or for a confirmation any later stage (the
// platform may have pulled it, or registered it, before the case was read again; see
// decidedElsewhere); null otherwise (or when it cannot be read).
async function recorded(c, decision) {
  let current;
  try { current = await get(`/candidates/${c.id}`); } catch { return null; }
  const last = current.history?.findLast((h) => DECIDED.includes(h.action));
  const outcome = OUTCOME[decision];
  const mine = last?.action === outcome && last.who === ref.session?.name;
  const reached = decision === 'confirm'
    ? HANDED_OVER.includes(current.status)
    : current.status === outcome;
  return reached && mine ? current : null;
}

// Replace or drop a changed candidate; after the reviewer's own decision move on to the next.
// The selected case changed live (elsewhere) so that it leaves the list stays shown, marked as
// decided and without its decisions, until the reviewer moves on: the next key press must not
// act on a case that took its place unseen.
function applyUpdate(updated, advance, live = false) {
  noteWhileLoading(updated, true);
  const index = state.items.findIndex((x) => x.id === updated.id);
  if (index < 0) return;
  const wasSelected = index === state.selected;
  if (matches(updated)) {
    state.items[index] = updated;
    if (state.gone === updated.id) state.gone = null;
    if (wasSelected && advance && index + 1 < state.items.length) state.selected = index + 1;
  } else if (live && wasSelected) {
    state.items[index] = updated;
    state.gone = updated.id;
  } else {
    state.items.splice(index, 1);
    if (state.gone === updated.id) state.gone = null;
    if (index < state.selected || state.selected >= state.items.length) state.selected -= 1;
    if (state.selected < 0 && state.items.length) state.selected = 0;
  }
  renderList();
  drained();
  if (wasSelected || advance) showDetail();
}

function onKey(ev) {
  if ($('#view-queue').hidden || $('#dlg').open) return;
  if (ev.target.closest('input, select, textarea') || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const actions = {
    j: () => select(state.selected + 1), k: () => select(state.selected - 1),
    c: () => decide('confirm'), r: () => decide('reject'), i: () => decide('return'),
    m: () => decide('merge'), a: () => toggle(!state.annotated),
  };
  const action = actions[ev.key];
  if (document.querySelector('.zoom') && (action || ev.key === 'Escape')) {
    // The zoomed frame covers the list: Escape or a triage key closes it and does nothing else.
    ev.preventDefault();
    closeZoom();
    return;
  }
  // Signed out, the login form is up and the case out of sight: a key pressed on the form
  // must not decide it (nor open its dialog over the form) once the cookie is valid again.
  if (!action || !ref.session) return;
  ev.preventDefault();
  // A held key repeats: j/k keep moving, but a decision (or the a toggle) is one press each,
  // so holding c does not confirm the next cases too.
  if (ev.repeat && ev.key !== 'j' && ev.key !== 'k') return;
  action();
}

// ---- live updates ---------------------------------------------------------------------------

// At most this many cases are looked up at once: a replay of hundreds of events must not open
// hundreds of requests.
const LOOKUPS = 6;

function onEvent(message) {
  if (message.lastEventId) state.lastId = message.lastEventId;
  let data;
  try { data = JSON.parse(message.data); } catch { return; }
  const listed = state.items.find((x) => x.id === data.id);
  const seen = { ...data, source: { camera_id: data.camera_id, sensor_id: data.sensor_id } };
  noteWhileLoading(seen, false);
  if (listed) {
    if (listed.updated_at === data.updated_at) return; // shown as it is (a replay's margin)
  } else if (!state.meanwhile) {
    // Decided from the event where it can be: a case this list would not show, or one that
    // belongs to a later page, is not looked up. (A page on its way may list it: then it is.)
    if (!matches(seen) || (data.created_at && !beforeNextPage(data))) return;
  }
  refresh(data.id);
}

// Show a case as it is now: replace it in the list, drop it, or list it when it is new to it.
// Ids wait in state.queued (once each, however many events name them) for a free lookup.
function refresh(id) {
  if (state.meanwhile) { // the page on its way may not know of the change: apply it there
    meanwhileEntry(id).askAgain = true;
    return;
  }
  state.queued.add(id);
  lookUpQueued();
}

function lookUpQueued() {
  for (const id of state.queued) {
    if (state.lookingUp.size >= LOOKUPS) return;
    if (state.lookingUp.has(id)) continue; // changed again meanwhile: asked again after this
    state.queued.delete(id);
    state.lookingUp.add(id);
    lookUp(id).finally(() => {
      state.lookingUp.delete(id);
      lookUpQueued();
    });
  }
}

async function lookUp(id) {
  let full;
  try { full = await get(`/candidates/${id}`); } catch { return; }
  if (state.meanwhile) {
    meanwhileEntry(id).askAgain = true;
  } else if (full.id === state.deciding) {
    // This tab's decision on it is in flight: a success shows its outcome by its answer, a
    // conflict the case as decided elsewhere. Either way it is looked up again after the answer
    // (a failure shows it as this change left it).
    state.recheck = true;
  } else if (state.items.some((x) => x.id === full.id)) {
    applyUpdate(full, false, true);
  } else if (matches(full) && beforeNextPage(full)) {
    insert(full);
  }
}

// List a case where the API would (newest first by created_at, then id), whichever lookup
// came back first.
function insert(c) {
  c._fresh = true;
  const index = sortedIndex(c);
  state.items.splice(index, 0, c);
  if (state.selected < 0) state.selected = index;
  else if (index <= state.selected) state.selected += 1;
  renderList();
  if (state.selected === index) showDetail();
}

// Where the list has a case (newest first by created_at, then id).
function sortedIndex(c) {
  const at = Date.parse(c.created_at);
  const index = state.items.findIndex((x) => {
    const xAt = Date.parse(x.created_at);
    return xAt < at || (xAt === at && x.id < c.id);
  });
  return index < 0 ? state.items.length : index;
}

// The list is newest first (by when the API received a case, then by id): a case after the
// last one of the pages read (where the API's cursor sits, even when that case has left the
// list since) belongs to a later page, which lists it when the reviewer asks for more.
function beforeNextPage(c) {
  const b = state.boundary;
  if (!state.cursor || !b) return true;
  // Within the boundary's millisecond it is listed now: the next page leaves out a case
  // already listed, so nothing shows twice.
  return Date.parse(c.created_at) >= Date.parse(b.created_at);
}

function applyMeanwhile() {
  const heard = state.meanwhile || new Map();
  state.meanwhile = null;
  for (const [id, { askAgain }] of heard) if (askAgain) refresh(id);
}

// Each event's id is "<updated_at>|<case id>". After a break the browser reconnects by itself
// and sends the last one (Last-Event-ID), and the API replays what changed since; the console's
// own reconnect passes it as ?since=. Only without one (no event heard yet) is the list loaded
// again; a reset event (too much to replay, or this stream fell behind) reconnects afresh and
// loads the list. The browser gives up for good on an answer other than 200 (a 401 after an API
// restart, a proxy's 502 or 503): then the console reconnects, with backoff, or shows the login
// form when the session is gone.
const RETRY_MS = [1000, 2000, 5000, 10000, 30000];

export function connectEvents() {
  stopEvents();
  state.missed = false; // (re)entering the console loads the list anyway
  const since = state.lastId ? `?since=${encodeURIComponent(state.lastId)}` : '';
  const source = new EventSource(`/api/v1/events${since}`, { withCredentials: true });
  const live = $('#live');
  source.onopen = () => {
    live.className = 'live on';
    state.retries = 0;
    if (state.missed && !state.lastId) {
      state.missed = false;
      load(false, true);
    }
  };
  source.onerror = () => {
    live.className = 'live off';
    state.missed = true;
    if (source.readyState === EventSource.CLOSED && state.source === source) retryEvents();
  };
  source.addEventListener('candidate.created', onEvent);
  source.addEventListener('candidate.changed', onEvent);
  source.addEventListener('reset', () => {
    if (state.source !== source) return;
    // Subscribed before the list is read again (on open): nothing falls between the two.
    state.lastId = null;
    connectEvents();
    state.missed = true;
  });
  state.source = source;
}

function retryEvents() {
  clearTimeout(state.retryTimer);
  const delay = RETRY_MS[Math.min(state.retries, RETRY_MS.length - 1)];
  state.retries += 1;
  state.retryTimer = setTimeout(async () => {
    state.retryTimer = null;
    try {
      await get('/session');
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        // The session is gone (e.g. a new session secret after a restart): log in again;
        // entering the console connects the events again.
        stopEvents();
        window.dispatchEvent(new CustomEvent('gp:unauthorized'));
      } else {
        retryEvents(); // the API is still down or unreachable
      }
      return;
    }
    const missed = state.missed;
    connectEvents();
    state.missed = missed;
  }, delay);
}

export function stopEvents() {
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  if (state.source) state.source.close();
  state.source = null;
  $('#live').className = 'live off';
}

// ---- entry points ---------------------------------------------------------------------------

// A note is its writer's: another reviewer signing in on this tab is not offered it. Called
// as the login is taken, before it reads the site and the lists: a key pressed meanwhile
// already opens a dialog.
export function signedIn(name) {
  if (name !== state.reviewer) state.drafts.clear();
  state.reviewer = name;
}

export function initQueue() {
  if (state.initialised) return;
  fillFilters();
  state.initialised = true;
  $('#filters').addEventListener('change', () => load());
  $('#f-reset').addEventListener('click', () => {
    $('#filters').reset();
    $('#f-status').value = 'new';
    load();
  });
  $('#queue-more').addEventListener('click', () => load(true));
  document.addEventListener('keydown', onKey);
  setInterval(() => {
    document.querySelectorAll('#queue-body td.age').forEach((td) => { td.textContent = age(td.dataset.at); });
  }, 15000);
}

// Back in the queue (from another view, or after logging in again mid-decision): the case
// the reviewer was on stays selected when it is still listed.
export function showQueue() {
  fillFilters();
  load(false, true);
}
