// The one place the console talks to the intake API: cookies, CSRF header, RFC 9457 problems.
let csrfToken = null;

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function setCsrf(token) { csrfToken = token; }

export async function request(path, options = {}, retried = false) {
  const { method = 'GET', body, accept = 'json' } = options;
  const headers = { Accept: accept === 'json' ? 'application/json' : '*/*' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && csrfToken) headers['X-CSRF-Token'] = csrfToken;
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
    if (!retried && staleCsrf(response.status, method, problem)) {
      await refreshCsrf();
      return request(path, options, true);
    }
    throw new ApiError(response.status, problem);
  }
  if (response.status === 204) return null;
  return accept === 'json' ? response.json() : response.blob();
}

// A write refused for its CSRF token: the session cookie (shared by the browser's tabs) was
// replaced by logging in again in another tab, and carries another token now.
const staleCsrf = (status, method, problem) => status === 403 && method !== 'GET'
  && /X-CSRF-Token/.test(problem.detail || '');

async function refreshCsrf() {
  try {
    setCsrf((await request('/session')).csrf_token);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) window.dispatchEvent(new CustomEvent('gp:unauthorized'));
    throw err;
  }
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
