// Console entry: session, navigation, shared reference data, toasts and the modal dialog.
import { ApiError, get, request, setSession } from './api.js';
import { applyStatic, currentLang, setLang, t, tf } from './i18n.js';
import {
  connectEvents, initQueue, showQueue, signedIn, stopEvents,
} from './queue.js';
import { showStats } from './stats.js';
import { showZones } from './zones.js';

// timezone: the site's (IANA name); times are shown and time filters read in it.
export const ref = { types: new Map(), cameras: [], sensors: [], session: null, timezone: undefined };

const $ = (sel) => document.querySelector(sel);

// Times are the site's wall-clock times, wherever the reviewer's browser is.
export const when = (iso) => (iso ? new Date(iso).toLocaleString(undefined, { timeZone: ref.timezone }) : '');

// The instant of a wall-clock time ("YYYY-MM-DDTHH:MM[:SS]", a datetime-local value) in the site's
// zone, as ISO 8601 UTC.
export function siteInstant(local) {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?$/.exec(local);
  if (!ref.timezone || !m) return new Date(local).toISOString();
  const [y, mo, d, h, mi, sec] = m.slice(1).map((x) => Number(x || 0));
  const wall = Date.UTC(y, mo - 1, d, h, mi, sec);
  const fmt = new Intl.DateTimeFormat('en-US', {
    timeZone: ref.timezone, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric',
    hour: 'numeric', minute: 'numeric', second: 'numeric',
  });
  // The zone's offset at an instant: its wall clock then, read as UTC, minus the instant.
  const offset = (at) => {
    const p = Object.fromEntries(fmt.formatToParts(new Date(at)).map((x) => [x.type, x.value]));
    return Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second) - at;
  };
  const guess = wall - offset(wall);
  return new Date(wall - offset(guess)).toISOString(); // again, in case a DST change lies between
}

export function toast(message, isError = false) {
  const el = $('#toast');
  el.textContent = message;
  el.classList.toggle('error', isError);
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 3500);
}

export function typeName(type) {
  const info = ref.types.get(type);
  if (!info) return { main: type, other: '' };
  return currentLang() === 'zh'
    ? { main: info.name_zh, other: info.name_en }
    : { main: info.name_en, other: info.name_zh };
}

// A modal dialog whose body the caller fills; resolves with the form data or null. The form
// data may be { invalid: message } instead: the dialog says so and stays open.
export function dialog(title, fill) {
  const dlg = $('#dlg');
  $('#dlg-title').textContent = title;
  $('#dlg-error').textContent = '';
  const body = $('#dlg-body');
  body.replaceChildren();
  body.onkeydown = null; // a handler an earlier dialog's fill set reads fields this one lacks
  const read = fill(body);
  return new Promise((resolve) => {
    const done = (value) => {
      dlg.removeEventListener('close', onClose);
      $('#dlg-form').removeEventListener('submit', onSubmit);
      $('#dlg-cancel').removeEventListener('click', onCancel);
      if (dlg.open) dlg.close();
      resolve(value);
    };
    const onSubmit = (ev) => {
      ev.preventDefault();
      const value = read();
      if (value?.invalid) $('#dlg-error').textContent = value.invalid;
      else done(value);
    };
    const onCancel = () => done(null);
    // A dialog closed fires its close event a task later: one closed just before this one
    // opened would otherwise cancel this one. Its own close finds it closed.
    const onClose = () => { if (!dlg.open) done(null); };
    $('#dlg-form').addEventListener('submit', onSubmit);
    $('#dlg-cancel').addEventListener('click', onCancel);
    dlg.addEventListener('close', onClose);
    dlg.showModal();
  });
}

async function loadReference() {
  const [types, cameras, sensors, site] = await Promise.all([
    get('/types').catch(() => []),
    get('/cameras').catch(() => []),
    get('/sensors').catch(() => []),
    get('/site').catch(() => null),
  ]);
  ref.types = new Map(types.map((x) => [x.type, x]));
  ref.cameras = cameras;
  ref.sensors = sensors;
  ref.timezone = undefined; // without it (an older API), the browser's zone
  try {
    if (site?.timezone) ref.timezone = new Intl.DateTimeFormat('en', { timeZone: site.timezone }).resolvedOptions().timeZone;
  } catch { /* a zone this browser does not know */ }
}

function route() {
  const view = (location.hash.replace(/^#\//, '').split('/')[0]) || 'queue';
  document.querySelectorAll('.view').forEach((el) => { el.hidden = el.id !== `view-${view}`; });
  document.querySelectorAll('nav a').forEach((a) => a.classList.toggle('active', a.dataset.view === view));
  if (view === 'stats') showStats();
  else if (view === 'zones') showZones();
  else showQueue();
}

// While the reference (the site's time zone above all) loads after a login, views are not
// shown: one opened meanwhile (a click on a tab) would read its time filters and show its times
// in the browser's zone. The view asked for meanwhile is shown once it is loaded, or after
// REFERENCE_WAIT_MS from an API slow to answer (in the browser's zone, shown again in the
// site's when the answer comes).
const REFERENCE_WAIT_MS = 5000;
let loading = 0; // the login whose reference is awaited (0: none)
let logins = 0;

function routeWhenLoaded() {
  if (ref.session && !loading) route();
}

async function enter(session) {
  ref.session = session;
  setSession(session);
  signedIn(session.name);
  $('#who').textContent = `${session.name} · ${session.role}`;
  $('#login').hidden = true;
  $('#app').hidden = false;
  const attempt = ++logins;
  loading = attempt;
  const loaded = loadReference();
  const late = await Promise.race([
    loaded.then(() => false),
    new Promise((done) => { setTimeout(() => done(true), REFERENCE_WAIT_MS); }),
  ]);
  if (loading === attempt) loading = 0;
  if (late) loaded.then(() => { if (attempt === logins) routeWhenLoaded(); });
  initQueue();
  connectEvents(); // every time: after a new login the old stream is closed or refused
  route();
}

async function login(ev) {
  ev.preventDefault();
  const token = $('#token').value.trim();
  try {
    const session = await request('/session', { method: 'POST', body: { token } });
    $('#token').value = '';
    $('#login-error').textContent = '';
    await enter(session);
  } catch (err) {
    $('#login-error').textContent = err instanceof ApiError && err.status === 401
      ? t('login.bad') : err.message;
  }
}

// Said on the login form after the reload that follows a logout the server could not record.
const LOGOUT_NOTE = 'gp.logout';

// A logout reloads the console, which shows the login form. One that fails is not passed over:
// the server forgets the cookie even when it cannot record the logout (its 503; a copy of the
// cookie then stays valid until it expires), and the login form says it was not recorded; when
// the browser still holds the session (the network, a proxy's 502) the console stays, saying
// the logout failed.
async function logout() {
  try {
    await request('/session', { method: 'DELETE' });
  } catch (err) {
    if (!(await signedOut())) {
      toast(`${t('logout.failed')}: ${err.message}`, true);
      return;
    }
    sessionStorage.setItem(LOGOUT_NOTE, 'logout.unrecorded');
  }
  location.hash = '';
  location.reload();
}

// Whether this browser holds no session any more (the API answers 401 to it).
async function signedOut() {
  try {
    await get('/session');
    return false;
  } catch (err) {
    return err instanceof ApiError && err.status === 401;
  }
}

function showLogin(message = '') {
  $('#login-error').textContent = message;
  $('#app').hidden = true;
  $('#login').hidden = false;
  $('#token').focus();
}

async function start() {
  applyStatic(document);
  document.querySelectorAll('.lang-toggle').forEach((btn) => btn.addEventListener('click', () => {
    setLang(currentLang() === 'zh' ? 'en' : 'zh');
    routeWhenLoaded();
  }));
  $('#login-form').addEventListener('submit', login);
  // Enter confirms a dialog from its fields (radio buttons and lists do not submit by
  // themselves); on a button it presses that button, so Enter on Cancel cancels.
  $('#dlg-form').addEventListener('keydown', (ev) => {
    if (ev.key !== 'Enter' || ev.target.closest('button')) return;
    ev.preventDefault();
    $('#dlg-form').requestSubmit();
  });
  $('#logout').addEventListener('click', logout);
  window.addEventListener('hashchange', routeWhenLoaded);
  window.addEventListener('gp:unauthorized', (ev) => {
    if (!ref.session) return;
    ref.session = null;
    setSession(null); // nothing is written while signed out
    stopEvents();
    // A decision's dialog is not left over the login form (what was written in it is kept
    // for after logging in again: see decideOn).
    if ($('#dlg').open) $('#dlg').close();
    // The queue keeps its place: after logging in again the same case is selected. Someone
    // else signed in in another tab (the cookie is theirs now) is named.
    const other = ev.detail?.other;
    const who = other && `${other.name} · ${other.role}`;
    showLogin(other ? tf('login.other', { who }) : t('login.expired'));
  });
  const note = sessionStorage.getItem(LOGOUT_NOTE);
  sessionStorage.removeItem(LOGOUT_NOTE);
  try {
    await enter(await get('/session'));
  } catch {
    showLogin(note ? t(note) : '');
  }
}

start();
