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

export async function request(path, { method = 'GET', body, accept = 'json' } = {}) {
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
    throw new ApiError(response.status, problem);
  }
  if (response.status === 204) return null;
  return accept === 'json' ? response.json() : response.blob();
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
