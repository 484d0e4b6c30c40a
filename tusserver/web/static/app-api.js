/* tusserver web UI: calls to the JSON API. api() adds the CSRF token, turns failures into
 * ApiError with a message a person can read, and on a 401 asks the session (registered with
 * onUnauthorized) to recover once.
 */

import { state } from './app-state.js';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function cookie(name) {
  for (const part of document.cookie.split(';')) {
    const [k, ...rest] = part.trim().split('=');
    if (k === name) return decodeURIComponent(rest.join('='));
  }
  return '';
}

export const csrfToken = () => cookie('tus_csrf');

const FRIENDLY = {
  0: 'The server cannot be reached. Check your connection and try again.',
  413: 'That is larger than the server accepts.',
  429: 'Too many requests right now. Wait a moment and try again.',
  500: 'The server ran into a problem. Try again in a moment.',
  502: 'The server is not reachable right now (bad gateway). Try again in a moment.',
  503: 'The service is temporarily unavailable. Try again in a moment.',
  504: 'The server took too long to answer. Try again.',
};

async function errorFrom(resp) {
  let code = `http_${resp.status}`;
  let message = '';
  try {
    const text = await resp.text();
    try {
      const data = JSON.parse(text);
      if (data && typeof data === 'object') {
        code = typeof data.error === 'string' ? data.error : code;
        message = typeof data.message === 'string' ? data.message : '';
      }
    } catch (_) {
      message = text.trim().slice(0, 300);
    }
  } catch (_) { /* body unreadable */ }
  if (!message || resp.status >= 500) message = FRIENDLY[resp.status] || message || `The server answered ${resp.status} ${resp.statusText}.`;
  return new ApiError(resp.status, code, message);
}

/** Called on a 401 (once per call): restores the session or throws. Set by the session module. */
let recoverSession = null;

/** Register what api() does on a 401 while signed in (the session: refresh, else sign in again). */
export function onUnauthorized(fn) {
  recoverSession = fn;
}

/** JSON API call. On 401 it tries to restore the session (refresh, then sign-in dialog) once. */
export async function api(path, opts = {}) {
  const { method = 'GET', body, query, recover = true, raw = false, headers: extra } = opts;
  let url = path;
  if (query) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (Array.isArray(v)) v.forEach((x) => qs.append(k, x));
      else if (v !== undefined && v !== null && v !== '') qs.append(k, v);
    }
    const s = qs.toString();
    if (s) url += `?${s}`;
  }
  const headers = { Accept: 'application/json', ...(extra || {}) };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (!['GET', 'HEAD'].includes(method)) {
    const token = csrfToken();
    if (token) headers['X-CSRF-Token'] = token;
  }
  let resp;
  try {
    resp = await fetch(url, {
      method, headers, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (_) {
    throw new ApiError(0, 'network', FRIENDLY[0]);
  }
  if (resp.status === 401 && recover && state.user && recoverSession) {
    await recoverSession();
    return api(path, { ...opts, recover: false });
  }
  if (!resp.ok) throw await errorFrom(resp);
  if (raw) return resp;
  if (resp.status === 204 || method === 'HEAD') return null;
  const text = await resp.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch (_) {
    throw new ApiError(resp.status, 'bad_json', 'The server sent an answer this page does not understand.');
  }
}
