// The one place the console talks to the intake API: cookies, CSRF header, RFC 9457 problems.
import { t } from './i18n.js';

// The session this tab signed in with (name, role, csrf_token): its writes are made as it.
let session = null;

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function setSession(value) { session = value; }

export async function request(path, options = {}, retried = false) {
  const { method = 'GET', body, accept = 'json' } = options;
  if (method !== 'GET' && !session && path !== '/session') {
    // Signed out (the login form is up): a write is not made, even when the browser's cookie
    // is valid again (logged in again in another tab), as the reviewer could not see it.
    throw new ApiError(401, { title: 'Unauthorized', status: 401, detail: t('login.expired') });
  }
  const headers = { Accept: accept === 'json' ? 'application/json' : '*/*' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && session) headers['X-CSRF-Token'] = session.csrf_token;
  const response = await fetch(`/api/v1${path}`, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && path !== '/session') {
    // The session expired or its token was revoked: back to the login form.
    window.dispatchEvent(new CustomEvent('gp:unauthorized'));
  }
  if (!response.ok) {
    let problem;
    try { problem = await response.json(); } catch { problem = { title: response.statusText }; }
    const error = new ApiError(response.status, problem);
    if (!retried && staleCsrf(response.status, method, problem)) {
      await refreshCsrf(error);
      return request(path, options, true);
    }
    throw error;
  }
  if (response.status === 204) return null;
  return accept === 'json' ? response.json() : response.blob();
}

// A write refused for its CSRF token: the session cookie (shared by the browser's tabs) was
// replaced by logging in again in another tab, and carries another token now.
const staleCsrf = (status, method, problem) => status === 403 && method !== 'GET'
  && /X-CSRF-Token/.test(problem.detail || '');

// Take the cookie's current token, but only when the cookie is still this tab's reviewer: one
// signed in as someone else in another tab must not have this tab's decisions recorded as
// theirs (this tab shows the login form, naming who is signed in, and writes nothing).
async function refreshCsrf(refused) {
  let current;
  try {
    current = await request('/session');
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) window.dispatchEvent(new CustomEvent('gp:unauthorized'));
    throw err;
  }
  if (!session || current.name !== session.name || current.role !== session.role) {
    window.dispatchEvent(new CustomEvent('gp:unauthorized', { detail: { other: current } }));
    throw refused;
  }
  session = { ...session, csrf_token: current.csrf_token };
}

export const get = (path) => request(path);
export const post = (path, body) => request(path, { method: 'POST', body });

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v != null) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

export const evidenceUrl = (sha) => `/api/v1/evidence/${sha}`;
