/* tusserver web UI: sign in, upload (Uppy + tus), files, analytics.
 *
 * Plain modern JavaScript, no build step. Every value that comes from the server or a user is
 * put in the page with textContent / DOM properties (the h() helper), never as HTML.
 * Tokens: the access token lives in an HttpOnly cookie; the refresh token only in memory.
 */
'use strict';

(() => {
  // ---------------------------------------------------------------------------------------
  // DOM helpers

  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
  const PROPS = new Set(['value', 'checked', 'disabled', 'hidden', 'selected', 'multiple', 'required', 'readOnly']);
  let uidCounter = 0;
  const uid = (prefix = 'id') => `${prefix}-${++uidCounter}`;

  /** Build an element. props: class, text, dataset, on<Event>, DOM props, else attributes. */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (key === 'class') el.className = v;
      else if (key === 'text') el.textContent = String(v);
      else if (key === 'dataset') Object.assign(el.dataset, v);
      else if (key.startsWith('on') && typeof v === 'function') el.addEventListener(key.slice(2).toLowerCase(), v);
      else if (PROPS.has(key)) el[key] = v;
      else el.setAttribute(key, v === true ? '' : String(v));
    }
    appendAll(el, children);
    return el;
  }

  function appendAll(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  const ICONS = {
    file: 'M6 2h8l6 6v14H6z M14 2v6h6',
    image: 'M4 5h16v14H4z M4 16l5-5 4 4 3-3 4 4 M15.5 9.5a1.5 1.5 0 1 0 0-.01',
    video: 'M3 6h13v12H3z M16 10l5-3v10l-5-3',
    audio: 'M9 18V6l11-2v12 M9 18a3 3 0 1 1-6 0 3 3 0 0 1 6 0z M20 16a3 3 0 1 1-6 0 3 3 0 0 1 6 0z',
    document: 'M6 2h8l6 6v14H6z M14 2v6h6 M9 13h7 M9 17h7',
    folder: 'M3 6h6l2 2h10v11H3z',
    download: 'M12 4v11 M7 10l5 5 5-5 M5 20h14',
    trash: 'M4 7h16 M9 7V4h6v3 M6 7l1 13h10l1-13',
    search: 'M10.5 17a6.5 6.5 0 1 0 0-13 6.5 6.5 0 0 0 0 13z M15.5 15.5 20 20',
    filter: 'M4 5h16l-6 7v6l-4 2v-8z',
    plus: 'M12 5v14 M5 12h14',
    upload: 'M12 20V9 M7 14l5-5 5 5 M5 4h14',
    chevron: 'M9 6l6 6-6 6',
    back: 'M15 6l-6 6 6 6',
    refresh: 'M20 11a8 8 0 1 0-2.3 5.7 M20 5v6h-6',
  };

  function icon(name, cls = 'icon') {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('class', cls);
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    const path = document.createElementNS(SVG_NS, 'path');
    path.setAttribute('d', ICONS[name] || ICONS.file);
    svg.append(path);
    return svg;
  }

  /** A labelled form field; returns the wrapper (the control gets an id and aria links). */
  function field(label, control, { hint, wide } = {}) {
    control.id = control.id || uid('f');
    const wrap = h('div', { class: wide ? 'field field-wide' : 'field' },
      h('label', { for: control.id, text: label }), control);
    if (hint) {
      const hintEl = h('p', { class: 'hint', id: uid('hint'), text: hint });
      control.setAttribute('aria-describedby', hintEl.id);
      wrap.append(hintEl);
    }
    return wrap;
  }

  function select(options, value, props = {}) {
    const el = h('select', props);
    for (const [v, label] of options) el.append(h('option', { value: v, text: label, selected: v === value }));
    return el;
  }

  // ---------------------------------------------------------------------------------------
  // Formatting

  function formatBytes(n) {
    if (n === null || n === undefined || Number.isNaN(Number(n))) return '—';
    n = Number(n);
    if (n < 1024) return `${n} B`;
    const units = ['KB', 'MB', 'GB', 'TB', 'PB'];
    let i = -1;
    do { n /= 1024; i += 1; } while (n >= 1024 && i < units.length - 1);
    return `${n >= 100 ? n.toFixed(0) : n.toFixed(1)} ${units[i]}`;
  }

  const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
  const dayFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
  const hourFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
  const numFmt = new Intl.NumberFormat();

  function formatDate(iso) {
    if (!iso) return '—';
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : dateFmt.format(d);
  }

  function isoDay(d) {
    return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
  }

  const CATEGORY_LABELS = { video: 'Video', audio: 'Audio', image: 'Images', document: 'Documents', other: 'Other files' };
  const STATUS_INFO = {
    received: { label: 'Checking…', cls: 'badge-wait' },
    validating: { label: 'Checking…', cls: 'badge-wait' },
    committed: { label: 'Accepted', cls: 'badge-ok' },
    rejected: { label: 'Rejected', cls: 'badge-bad' },
    failed: { label: 'Failed', cls: 'badge-bad' },
  };

  function badge(status) {
    const info = STATUS_INFO[status] || { label: status || 'Unknown', cls: 'badge-neutral' };
    return h('span', { class: `badge ${info.cls}`, dataset: { status: status || '' }, text: info.label });
  }

  function categoryOfMime(mime) {
    if (!mime) return 'other';
    const major = mime.split('/', 1)[0];
    if (major === 'video' || major === 'audio' || major === 'image') return major;
    const docs = (state.limits && state.limits.document_types) || [];
    return docs.includes(mime) ? 'document' : 'other';
  }

  function fileCategory(f) {
    return f.category || categoryOfMime(f.detected_type || f.declared_type);
  }

  // ---------------------------------------------------------------------------------------
  // State, API and session

  const state = {
    user: null,
    limits: null,
    refreshToken: null, // memory only, never stored
    refreshTimer: null,
    lastFilesHash: '#/files',
    authOff: false,
    ready: false,
  };

  class ApiError extends Error {
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

  const csrfToken = () => cookie('tus_csrf');

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

  /** JSON API call. On 401 it tries to restore the session (refresh, then sign-in dialog) once. */
  async function api(path, opts = {}) {
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
    if (resp.status === 401 && recover && state.user) {
      await session.recover();
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

  const session = {
    recovering: null,

    apply(data) {
      state.user = data.user;
      state.refreshToken = data.refresh_token || null;
      clearTimeout(state.refreshTimer);
      const ttl = Number(data.expires_in) || 900;
      if (state.refreshToken) {
        state.refreshTimer = setTimeout(() => session.refresh().catch(() => {}), Math.max(30, ttl - 60) * 1000);
      }
    },

    async signIn(username, password) {
      const data = await api('/api/v1/auth/login', {
        method: 'POST', body: { username, password, cookie: true }, recover: false,
      });
      session.apply(data);
      return data.user;
    },

    async refresh() {
      if (!state.refreshToken) throw new ApiError(401, 'unauthorized', 'no refresh token');
      const token = state.refreshToken;
      state.refreshToken = null; // refresh tokens are single-use
      const data = await api('/api/v1/auth/refresh', {
        method: 'POST', body: { refresh_token: token, cookie: true }, recover: false,
      });
      session.apply(data);
    },

    /** After a 401: refresh silently if possible, else ask for the password in a dialog. */
    recover() {
      if (!this.recovering) {
        this.recovering = (async () => {
          try {
            await session.refresh();
            return;
          } catch (_) { /* fall through to the dialog */ }
          await reauthDialog();
        })().finally(() => { this.recovering = null; });
      }
      return this.recovering;
    },

    async signOut() {
      const uppy = uploads.uppy;
      if (uppy && uploads.active() > 0) {
        const ok = await confirmDialog({
          title: 'Sign out now?',
          message: 'Uploads are still running. They stop now and can be resumed after you sign in again.',
          confirmLabel: 'Sign out',
        });
        if (!ok) return;
      }
      if (uppy) uppy.pauseAll();
      try {
        await api('/api/v1/auth/logout', { method: 'POST', recover: false });
      } catch (_) { /* signed out locally anyway */ }
      forgetLocal();
      // A fresh page: nothing of the previous user stays in memory.
      reloadAt('#/signin?notice=signedout');
    },
  };

  /** A fresh page load at another route (same path and query, so page options are kept). */
  function reloadAt(hash) {
    history.replaceState(null, '', location.pathname + location.search + hash);
    location.reload();
  }

  let sessionCheck = null;

  /** Resolves when the session is good (after a refresh or the sign-in dialog if needed). */
  function ensureSession() {
    if (!sessionCheck) {
      sessionCheck = api('/api/v1/auth/me').finally(() => {
        setTimeout(() => { sessionCheck = null; }, 5000);
      });
    }
    return sessionCheck;
  }

  function forgetLocal() {
    state.user = null;
    state.refreshToken = null;
    clearTimeout(state.refreshTimer);
    try { sessionStorage.removeItem(RESULTS_KEY); } catch (_) { /* storage off */ }
  }

  // ---------------------------------------------------------------------------------------
  // Notifications and dialogs

  function toast(message, kind = 'info', timeout) {
    const box = $('#toasts');
    const close = h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss notification' }, '×');
    const el = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' },
      h('span', { class: 'toast-msg', text: message }), close);
    close.addEventListener('click', () => el.remove());
    box.append(el);
    while (box.children.length > 4) box.firstElementChild.remove();
    setTimeout(() => el.remove(), timeout || (kind === 'error' ? 10000 : 5000));
  }

  function errorMessage(err) {
    if (err instanceof ApiError) return err.message;
    return (err && err.message) || 'Something went wrong.';
  }

  function openDialog(dlg) {
    document.body.append(dlg);
    dlg.addEventListener('close', () => setTimeout(() => dlg.remove(), 0));
    dlg.showModal();
    return dlg;
  }

  function confirmDialog({ title, message, confirmLabel = 'OK', danger = false }) {
    return new Promise((resolve) => {
      const titleId = uid('dlg');
      const ok = h('button', { type: 'submit', class: danger ? 'btn btn-danger' : 'btn btn-primary', value: 'ok', text: confirmLabel });
      const cancel = h('button', { type: 'submit', class: 'btn', value: 'cancel', text: 'Cancel', formnovalidate: true });
      const dlg = h('dialog', { class: 'dialog', 'aria-labelledby': titleId },
        h('form', { method: 'dialog' },
          h('h2', { id: titleId, text: title }),
          h('p', { class: 'dialog-text', text: message }),
          h('div', { class: 'dialog-actions' }, cancel, ok)));
      dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok'));
      openDialog(dlg);
      cancel.focus();
    });
  }

  /** A dialog with a form; onSubmit(values) may throw to show the error and keep it open. */
  function formDialog({ title, description, fields, submitLabel = 'Save', onSubmit }) {
    return new Promise((resolve) => {
      const titleId = uid('dlg');
      const err = h('p', { class: 'form-error', role: 'alert', hidden: true });
      const submit = h('button', { type: 'submit', class: 'btn btn-primary', text: submitLabel });
      const cancel = h('button', { type: 'button', class: 'btn', text: 'Cancel' });
      const controls = {};
      const form = h('form', { novalidate: true },
        h('h2', { id: titleId, text: title }),
        description ? h('p', { class: 'dialog-text', text: description }) : null,
        err,
        fields.map((f) => {
          const control = f.control || h('input', { type: f.type || 'text', value: f.value || '', required: f.required, autocomplete: 'off', placeholder: f.placeholder });
          controls[f.name] = control;
          return field(f.label, control, { hint: f.hint });
        }),
        h('div', { class: 'dialog-actions' }, cancel, submit));
      const dlg = h('dialog', { class: 'dialog', 'aria-labelledby': titleId }, form);
      let result = null;
      cancel.addEventListener('click', () => dlg.close());
      dlg.addEventListener('close', () => resolve(result));
      form.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        err.hidden = true;
        const values = Object.fromEntries(Object.entries(controls).map(([k, c]) => [k, c.value]));
        submit.disabled = true;
        try {
          result = await onSubmit(values);
          if (result === undefined) result = true;
          dlg.close();
        } catch (e) {
          err.textContent = errorMessage(e);
          err.hidden = false;
        } finally {
          submit.disabled = false;
        }
      });
      openDialog(dlg);
      const first = Object.values(controls)[0];
      if (first) { first.focus(); if (first.select) first.select(); }
    });
  }

  /** Shown on a 401 inside the app: sign in again without leaving the page (uploads wait). */
  function reauthDialog() {
    return new Promise((resolve, reject) => {
      const titleId = uid('dlg');
      const err = h('p', { class: 'form-error', role: 'alert', hidden: true });
      const user = h('input', { type: 'text', name: 'username', autocomplete: 'username', required: true, value: (state.user && state.user.username) || '' });
      const pass = h('input', { type: 'password', name: 'password', autocomplete: 'current-password', required: true });
      const submit = h('button', { type: 'submit', class: 'btn btn-primary', text: 'Sign in' });
      const leave = h('button', { type: 'button', class: 'btn', text: 'Sign out' });
      const form = h('form', { novalidate: true },
        h('h2', { id: titleId, text: 'Your session has expired' }),
        h('p', { class: 'dialog-text', text: 'Sign in again to continue. Nothing is lost: uploads wait and continue where they stopped.' }),
        err, field('Username', user), field('Password', pass),
        h('div', { class: 'dialog-actions' }, leave, submit));
      const dlg = h('dialog', { class: 'dialog', id: 'reauth-dialog', 'aria-labelledby': titleId }, form);
      dlg.addEventListener('cancel', (ev) => ev.preventDefault()); // a choice is needed
      leave.addEventListener('click', () => {
        dlg.close();
        forgetLocal();
        reject(new ApiError(401, 'unauthorized', 'Signed out.'));
        reloadAt('#/signin?notice=signedout');
      });
      form.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        err.hidden = true;
        if (!user.value.trim() || !pass.value) {
          err.textContent = 'Enter your username and password.';
          err.hidden = false;
          return;
        }
        const previous = state.user && state.user.id;
        submit.disabled = true;
        try {
          const signedIn = await session.signIn(user.value.trim(), pass.value);
          dlg.close();
          if (previous && signedIn.id !== previous) {
            // Someone else: start clean rather than mix two users' data.
            reloadAt('#/upload');
            return;
          }
          toast('Signed in again. Continuing.', 'success');
          resolve();
        } catch (e) {
          err.textContent = errorMessage(e);
          err.hidden = false;
          pass.select();
        } finally {
          submit.disabled = false;
        }
      });
      openDialog(dlg);
      (user.value ? pass : user).focus();
    });
  }

  // ---------------------------------------------------------------------------------------
  // Router

  const view = () => $('#view');
  let renderSeq = 0;
  let cleanups = [];
  let firstRender = true;

  function currentRoute() {
    const raw = location.hash.replace(/^#\/?/, '');
    const [path, qs] = raw.split('?');
    const parts = path.split('/').filter(Boolean);
    return { name: parts[0] || '', arg: parts[1] ? decodeURIComponent(parts[1]) : null, query: new URLSearchParams(qs || '') };
  }

  function go(hash, { replace = false } = {}) {
    if (replace) {
      history.replaceState(null, '', hash);
      render();
    } else if (location.hash === hash) {
      render();
    } else {
      location.hash = hash;
    }
  }

  const PUBLIC = new Set(['signin', 'signup']);
  const TITLES = { signin: 'Sign in', signup: 'Create account', upload: 'Upload', files: 'Files', file: 'File', analytics: 'Analytics' };

  async function render() {
    if (!state.ready || location.hash === '#main') return;
    const r = currentRoute();
    const seq = ++renderSeq;
    cleanups.forEach((fn) => { try { fn(); } catch (_) { /* ignore */ } });
    cleanups = [];
    if (!r.name) return go(state.user ? '#/upload' : '#/signin', { replace: true });
    if (!PUBLIC.has(r.name) && !state.user) {
      return go(`#/signin?next=${encodeURIComponent(location.hash)}`, { replace: true });
    }
    if (PUBLIC.has(r.name) && state.user) return go('#/upload', { replace: true });
    updateChrome(r);
    document.title = `${TITLES[r.name] || 'Not found'} · tusserver`;
    const ctx = {
      alive: () => seq === renderSeq,
      onCleanup: (fn) => cleanups.push(fn),
    };
    const uploadView = $('#upload-view');
    const v = view();
    let target = v;
    if (r.name === 'upload') {
      v.hidden = true;
      v.replaceChildren();
      uploadView.hidden = false;
      target = uploadView;
      try {
        uploads.show();
      } catch (e) {
        uploadView.replaceChildren(errorPanel(e));
      }
    } else {
      uploadView.hidden = true;
      v.hidden = false;
      v.replaceChildren(h('p', { class: 'loading', role: 'status', text: 'Loading…' }));
      const page = PAGES[r.name] || notFoundPage;
      try {
        await page(v, r, ctx);
      } catch (e) {
        if (ctx.alive()) v.replaceChildren(errorPanel(e, () => render()));
      }
    }
    if (!ctx.alive()) return;
    if (!firstRender) {
      const heading = $('h1', target);
      if (heading) {
        heading.tabIndex = -1;
        heading.focus({ preventScroll: true });
      }
      window.scrollTo(0, 0);
    }
    firstRender = false;
  }

  function updateChrome(r) {
    const signedIn = !!state.user && !PUBLIC.has(r.name);
    $('#topbar').hidden = !signedIn;
    document.body.classList.toggle('is-auth-page', PUBLIC.has(r.name));
    const active = r.name === 'file' ? 'files' : r.name;
    for (const a of $$('[data-nav]')) {
      if (a.dataset.nav === active) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    const name = $('#account-name');
    name.textContent = state.user ? (state.user.username || 'operator') : '';
    $('#signout').hidden = state.authOff;
    uploads.updatePill();
  }

  function errorPanel(err, retry) {
    return h('div', { class: 'card error-panel', role: 'alert' },
      h('h1', { text: 'Something went wrong' }),
      h('p', { text: errorMessage(err) }),
      retry ? h('button', { type: 'button', class: 'btn btn-primary', onclick: retry, text: 'Try again' }) : null);
  }

  function notFoundPage(v) {
    v.replaceChildren(h('div', { class: 'card empty' },
      h('h1', { text: 'Page not found' }),
      h('p', {}, 'There is nothing at this address. ', h('a', { href: '#/files', text: 'Go to your files' }), '.')));
  }

  function pageHeader(title, subtitle, ...actions) {
    return h('div', { class: 'page-header' },
      h('div', { class: 'page-title' }, h('h1', { text: title }), subtitle ? h('p', { class: 'lead', text: subtitle }) : null),
      actions.length ? h('div', { class: 'page-actions' }, actions) : null);
  }

  // ---------------------------------------------------------------------------------------
  // Sign in / sign up

  /** Whether the server scans files for viruses (clamd configured): only then do we say so. */
  function virusScan() {
    return Boolean(state.limits && state.limits.virus_scan);
  }

  function authShell(...content) {
    return h('div', { class: 'auth-wrap' },
      h('div', { class: 'auth-brand' }, brandMark(), h('span', { text: 'tusserver' })),
      h('div', { class: 'card auth-card' }, content),
      h('p', { class: 'auth-foot', text: virusScan() ? 'Resumable uploads · virus-checked · yours only' : 'Resumable uploads · yours only' }));
  }

  function brandMark() {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 32 32');
    svg.setAttribute('class', 'brand-mark');
    svg.setAttribute('aria-hidden', 'true');
    const rect = document.createElementNS(SVG_NS, 'rect');
    rect.setAttribute('width', '32'); rect.setAttribute('height', '32'); rect.setAttribute('rx', '8');
    rect.setAttribute('fill', 'currentColor');
    const path = document.createElementNS(SVG_NS, 'path');
    path.setAttribute('d', 'M16 8l-7 7h4.5v8h5v-8H23z');
    path.setAttribute('fill', '#fff');
    svg.append(rect, path);
    return svg;
  }

  const NOTICES = {
    signedout: 'You are signed out.',
    expired: 'Your session has expired. Sign in again.',
  };

  function signinPage(v, r) {
    const next = r.query.get('next');
    const notice = NOTICES[r.query.get('notice')];
    const err = h('p', { class: 'form-error', role: 'alert', hidden: true });
    const user = h('input', { type: 'text', name: 'username', autocomplete: 'username', required: true, autocapitalize: 'none', spellcheck: 'false', value: r.query.get('username') || '' });
    const pass = h('input', { type: 'password', name: 'password', autocomplete: 'current-password', required: true });
    const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-block', text: 'Sign in' });
    const regOpen = !state.limits || state.limits.registration_enabled !== false;
    const form = h('form', { novalidate: true, class: 'auth-form', 'aria-labelledby': 'signin-title' },
      h('h1', { id: 'signin-title', text: 'Sign in' }),
      h('p', { class: 'muted', text: 'Upload, organise and share your media.' }),
      notice ? h('p', { class: 'notice', role: 'status', text: notice }) : null,
      err, field('Username', user), field('Password', pass), submit,
      regOpen ? h('p', { class: 'auth-switch' }, 'New here? ', h('a', { href: '#/signup', text: 'Create an account' })) : null);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      err.hidden = true;
      if (!user.value.trim() || !pass.value) {
        err.textContent = 'Enter your username and password.';
        err.hidden = false;
        (user.value.trim() ? pass : user).focus();
        return;
      }
      submit.disabled = true;
      submit.textContent = 'Signing in…';
      try {
        await session.signIn(user.value.trim(), pass.value);
        go(next && next.startsWith('#/') && !next.startsWith('#/sign') ? next : '#/upload', { replace: true });
      } catch (e) {
        err.textContent = errorMessage(e);
        err.hidden = false;
        pass.focus();
        pass.select();
      } finally {
        submit.disabled = false;
        submit.textContent = 'Sign in';
      }
    });
    v.replaceChildren(authShell(form));
    (user.value ? pass : user).focus();
  }

  function signupPage(v) {
    const err = h('p', { class: 'form-error', role: 'alert', hidden: true });
    const user = h('input', { type: 'text', name: 'username', autocomplete: 'username', required: true, autocapitalize: 'none', spellcheck: 'false', maxlength: '64', pattern: '[A-Za-z0-9._@-]+' });
    const pass = h('input', { type: 'password', name: 'new-password', autocomplete: 'new-password', required: true, minlength: '8' });
    const pass2 = h('input', { type: 'password', name: 'confirm-password', autocomplete: 'new-password', required: true, minlength: '8' });
    const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-block', text: 'Create account' });
    const form = h('form', { novalidate: true, class: 'auth-form', 'aria-labelledby': 'signup-title' },
      h('h1', { id: 'signup-title', text: 'Create your account' }),
      h('p', { class: 'muted', text: 'It takes ten seconds. No email needed.' }),
      err,
      field('Username', user, { hint: 'Letters, digits and . _ @ - (up to 64).' }),
      field('Password', pass, { hint: 'At least 8 characters.' }),
      field('Repeat password', pass2),
      submit,
      h('p', { class: 'auth-switch' }, 'Already have an account? ', h('a', { href: '#/signin', text: 'Sign in' })));
    const fail = (message, focus) => {
      err.textContent = message;
      err.hidden = false;
      if (focus) focus.focus();
    };
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      err.hidden = true;
      const name = user.value.trim();
      if (!/^[A-Za-z0-9._@-]{1,64}$/.test(name)) return fail('Choose a username of letters, digits and . _ @ - only.', user);
      if (pass.value.length < 8) return fail('The password needs at least 8 characters.', pass);
      if (pass.value !== pass2.value) return fail('The two passwords are not the same.', pass2);
      submit.disabled = true;
      submit.textContent = 'Creating account…';
      try {
        await api('/api/v1/auth/register', { method: 'POST', body: { username: name, password: pass.value }, recover: false });
        await session.signIn(name, pass.value);
        toast(`Welcome, ${name}! Your account is ready.`, 'success');
        go('#/upload', { replace: true });
      } catch (e) {
        fail(errorMessage(e), e.status === 409 ? user : null);
      } finally {
        submit.disabled = false;
        submit.textContent = 'Create account';
      }
    });
    v.replaceChildren(authShell(form));
    user.focus();
  }

  // ---------------------------------------------------------------------------------------
  // Uploads (Uppy Dashboard + Tus); the view is built once and kept while browsing

  const RESULTS_KEY = 'tusserver.recent-uploads';
  const TUS_HEADERS = { 'Tus-Resumable': '1.0.0' };

  const uploads = {
    uppy: null,
    built: false,
    results: [],
    els: {},
    folder: '/',

    chunkSize() {
      const raw = new URLSearchParams(location.search).get('chunk_size');
      const n = raw ? parseInt(raw, 10) : NaN;
      return Number.isFinite(n) && n >= 64 * 1024 ? n : 32 * 1024 * 1024;
    },

    active() {
      if (!this.uppy) return 0;
      return this.uppy.getFiles().filter((f) => f.progress && f.progress.uploadStarted && !f.progress.uploadComplete && !f.error).length;
    },

    show() {
      if (!this.built) this.build();
      this.refreshFolders();
      this.refreshResumables();
    },

    limitsNote() {
      const l = state.limits || {};
      const cats = (l.allowed_categories || []).map((c) => CATEGORY_LABELS[c] || c);
      const size = l.max_size ? `Up to ${formatBytes(l.max_size)} per file` : 'No size limit';
      return `${size} · ${cats.length ? cats.join(', ') : 'Any type'}`;
    },

    build() {
      this.built = true;
      const root = $('#upload-view');
      const folderSel = h('select', { id: 'upload-folder' }, h('option', { value: '/', text: 'Home (/)' }));
      folderSel.addEventListener('change', () => { this.folder = folderSel.value; });
      const resumables = h('div', { class: 'resumables', id: 'resumables', hidden: true });
      const dash = h('div', { id: 'uppy-dashboard', class: 'dashboard-wrap' });
      const list = h('ul', { class: 'results', id: 'upload-results', 'aria-live': 'polite' });
      const empty = h('p', { class: 'muted results-empty', text: virusScan() ? 'Finished uploads appear here while they are checked for viruses and file type.' : 'Finished uploads appear here while their file type is checked.' });
      const clear = h('button', { type: 'button', class: 'btn btn-ghost btn-sm', text: 'Clear list', hidden: true });
      clear.addEventListener('click', () => {
        this.results = this.results.filter((r) => !r.final);
        this.saveResults();
        this.renderResults();
      });
      this.els = { root, folderSel, resumables, dash, list, empty, clear };
      const l = state.limits || {};
      const limitChips = h('ul', { class: 'chips', 'aria-label': 'Upload limits' },
        h('li', { class: 'chip', text: l.max_size ? `Max ${formatBytes(l.max_size)} per file` : 'No size limit' }),
        (l.allowed_categories || []).map((c) => {
          const max = l.max_size_per_category && l.max_size_per_category[c];
          return h('li', { class: 'chip', text: max ? `${CATEGORY_LABELS[c] || c} ≤ ${formatBytes(max)}` : (CATEGORY_LABELS[c] || c) });
        }));
      root.replaceChildren(
        pageHeader('Upload files', 'Drop files or browse. Large files go up in pieces and resume after a lost connection or a reload.'),
        h('div', { class: 'upload-toolbar' },
          h('div', { class: 'field field-inline' }, h('label', { for: 'upload-folder', text: 'Save to folder' }), folderSel),
          limitChips),
        resumables,
        dash,
        h('section', { class: 'card results-card', 'aria-labelledby': 'results-title' },
          h('div', { class: 'section-head' }, h('h2', { id: 'results-title', text: 'Recent uploads' }), clear),
          empty, list));
      this.loadResults();
      this.renderResults();
      this.results.filter((r) => !r.final).forEach((r) => this.track(r));
      if (!window.Uppy || !window.Uppy.Uppy) {
        dash.replaceChildren(h('div', { class: 'callout callout-error', role: 'alert' },
          h('strong', { text: 'The upload component could not be loaded.' }),
          h('p', { text: 'The server is missing its third-party files (Uppy). Ask the administrator to run “npm ci” on the server, then reload this page.' })));
        return;
      }
      this.createUppy();
    },

    createUppy() {
      const U = window.Uppy;
      const l = state.limits || {};
      const owner = String((state.user && state.user.id) || 'anonymous').replace(/[^A-Za-z0-9_-]/g, '').slice(0, 40);
      const uppy = new U.Uppy({
        id: `u${owner}`,
        autoProceed: false,
        allowMultipleUploadBatches: true,
        restrictions: { maxFileSize: l.max_size || null },
        onBeforeFileAdded: (file) => this.check(file),
      });
      this.uppy = uppy;
      uppy.use(U.Dashboard, {
        target: '#uppy-dashboard',
        inline: true,
        width: '100%',
        height: window.matchMedia('(max-width: 720px)').matches ? 340 : 420,
        theme: 'light',
        note: this.limitsNote(),
        proudlyDisplayPoweredByUppy: false,
        showProgressDetails: true,
        showRemoveButtonAfterComplete: true,
        fileManagerSelectionType: 'files',
      });
      uppy.use(U.Tus, {
        endpoint: l.tus_endpoint || '/uploads/',
        chunkSize: this.chunkSize(),
        retryDelays: [0, 1000, 3000, 5000, 10000],
        removeFingerprintOnSuccess: true,
        limit: 4,
        allowedMetaFields: ['name', 'type', 'folder'],
        onBeforeRequest: async (req) => {
          // tus-js-client forgets an upload whose HEAD gets a 4xx (a 401 too) and starts it
          // again from zero: make sure the session is good before resuming.
          if (req.getMethod() === 'HEAD') await ensureSession();
          const token = csrfToken();
          if (token) req.setHeader('X-CSRF-Token', token);
        },
        onShouldRetry: (err, attempt, opts, next) => {
          const status = err && err.originalResponse ? err.originalResponse.getStatus() : 0;
          if (status === 401 || status === 403) return false; // handled in upload-error
          return next(err);
        },
      });
      // Before a batch starts: a session that expired while the page sat idle is renewed first.
      uppy.addPreProcessor(() => ensureSession());
      uppy.on('file-added', (file) => uppy.setFileMeta(file.id, { folder: this.folder }));
      uppy.on('upload-success', (file, response) => {
        this.addResult({ name: file.name, size: file.size, uploadURL: response && response.uploadURL, folder: file.meta.folder || '/' });
        this.refreshResumables();
      });
      uppy.on('upload-error', (file, error, response) => this.onError(file, error, response));
      uppy.on('progress', () => this.updatePill());
      uppy.on('complete', () => this.updatePill());
      window.addEventListener('beforeunload', (ev) => {
        if (this.active() > 0) {
          ev.preventDefault();
          ev.returnValue = '';
        }
      });
    },

    check(file) {
      const l = state.limits || {};
      const cat = categoryOfMime(file.type);
      const allowed = l.allowed_categories || [];
      if (allowed.length && !allowed.includes(cat)) {
        this.uppy.info(`“${file.name}” was not added: ${(CATEGORY_LABELS[cat] || cat).toLowerCase()} are not accepted here.`, 'error', 7000);
        return false;
      }
      const max = l.max_size_per_category && l.max_size_per_category[cat];
      if (max && file.size > max) {
        this.uppy.info(`“${file.name}” was not added: ${CATEGORY_LABELS[cat] || cat} may be at most ${formatBytes(max)}.`, 'error', 7000);
        return false;
      }
      return true;
    },

    onError(file, error, response) {
      const status = (response && response.status) || statusFromTusError(error);
      if (status === 401 || (status === 403 && /csrf/i.test(serverText(error, response)))) {
        session.recover().then(() => {
          if (this.uppy.getFile(file.id)) this.uppy.retryUpload(file.id);
        }).catch(() => {});
        return;
      }
      const text = serverText(error, response);
      const message = status === 415 ? `Not accepted: ${text || 'this type of file is not allowed.'}`
        : status === 413 ? `Too large: ${text || 'the file is larger than the server accepts.'}`
          : status === 0 ? 'The connection was lost. Press retry to continue where it stopped.'
            : text || errorMessage(error);
      this.addResult({ name: file.name, size: file.size, state: 'error', reason: message, final: true });
    },

    addResult(r) {
      const entry = { key: r.uploadURL || `${Date.now()}-${Math.random()}`, state: 'checking', final: false, fileId: null, reason: '', at: Date.now(), ...r };
      this.results = [entry, ...this.results.filter((x) => x.key !== entry.key)].slice(0, 50);
      this.saveResults();
      this.renderResults();
      if (!entry.final) this.track(entry);
    },

    loadResults() {
      try {
        const saved = JSON.parse(sessionStorage.getItem(RESULTS_KEY) || '[]');
        this.results = Array.isArray(saved) ? saved.filter((r) => r && typeof r.name === 'string') : [];
      } catch (_) {
        this.results = [];
      }
    },

    saveResults() {
      try { sessionStorage.setItem(RESULTS_KEY, JSON.stringify(this.results)); } catch (_) { /* storage off */ }
    },

    renderResults() {
      const { list, empty, clear } = this.els;
      if (!list) return;
      list.replaceChildren(...this.results.map((r) => this.resultItem(r)));
      empty.hidden = this.results.length > 0;
      clear.hidden = !this.results.some((r) => r.final);
    },

    resultItem(r) {
      const labels = {
        checking: ['Checking…', 'badge-wait'],
        committed: ['Accepted', 'badge-ok'],
        rejected: ['Rejected', 'badge-bad'],
        failed: ['Failed', 'badge-bad'],
        error: ['Upload failed', 'badge-bad'],
        unknown: ['Still checking', 'badge-neutral'],
      };
      const [label, cls] = labels[r.state] || labels.unknown;
      const cat = categoryOfMime(r.type);
      return h('li', { class: `result result-${r.state}`, dataset: { state: r.state } },
        h('span', { class: `file-icon cat-${cat}` }, icon(cat === 'other' ? 'file' : cat)),
        h('div', { class: 'result-main' },
          r.fileId ? h('a', { class: 'result-name', href: `#/file/${encodeURIComponent(r.fileId)}`, text: r.name })
            : h('span', { class: 'result-name', text: r.name }),
          h('span', { class: 'result-meta', text: [formatBytes(r.size), r.folder && r.folder !== '/' ? `in ${r.folder}` : ''].filter(Boolean).join(' · ') }),
          r.reason ? h('span', { class: 'result-reason', text: r.reason }) : null),
        h('span', { class: `badge ${cls}`, text: label }));
    },

    async track(entry) {
      let delay = 600;
      const deadline = Date.now() + 15 * 60 * 1000;
      while (!entry.final && Date.now() < deadline) {
        if (!this.results.includes(entry)) return;
        try {
          if (!entry.fileId && entry.uploadURL) {
            const resp = await fetch(entry.uploadURL, { method: 'HEAD', headers: TUS_HEADERS, credentials: 'same-origin' });
            if (resp.status === 401) { await session.recover(); continue; }
            if (resp.ok) {
              entry.fileId = resp.headers.get('X-File-Id');
              const st = resp.headers.get('X-File-Status');
              if (st) entry.state = st === 'received' || st === 'validating' ? 'checking' : st;
            } else if (resp.status === 404 || resp.status === 410) {
              entry.state = 'unknown';
              entry.final = true;
            }
          }
          if (entry.fileId) {
            if (entry.folder && entry.folder !== '/' && !entry.moved) {
              await api(`/api/v1/file/${encodeURIComponent(entry.fileId)}`, { method: 'PATCH', body: { folder: entry.folder } });
              entry.moved = true;
            }
            const f = await api(`/api/v1/file/${encodeURIComponent(entry.fileId)}`);
            entry.state = ['committed', 'rejected', 'failed'].includes(f.status) ? f.status : 'checking';
            entry.reason = f.status === 'committed' ? (f.reason || '') : (f.reason || '');
            entry.type = f.detected_type || f.declared_type || entry.type;
            entry.final = entry.state !== 'checking';
          }
        } catch (e) {
          if (e instanceof ApiError && e.status === 404) {
            entry.state = 'unknown';
            entry.reason = 'The file is gone (deleted?).';
            entry.final = true;
          }
        }
        this.saveResults();
        this.renderResults();
        if (entry.final) {
          if (entry.state === 'rejected') toast(`“${entry.name}” was rejected: ${entry.reason || 'no reason given'}`, 'error');
          return;
        }
        await sleep(delay);
        delay = Math.min(delay * 1.5, 4000);
      }
      if (!entry.final) {
        entry.state = 'unknown';
        entry.reason = 'Still being checked. Look in Files later.';
        this.saveResults();
        this.renderResults();
      }
    },

    async refreshFolders() {
      const sel = this.els.folderSel;
      if (!sel) return;
      try {
        const data = await api('/api/v1/folders');
        const current = this.folder;
        sel.replaceChildren(...(data.folders || ['/']).map((p) => h('option', { value: p, text: p === '/' ? 'Home (/)' : p, selected: p === current })));
        if (!(data.folders || []).includes(current)) this.folder = sel.value;
      } catch (_) { /* the select keeps Home */ }
    },

    /** Unfinished uploads of this user that tus-js-client remembers (localStorage). */
    async refreshResumables() {
      const box = this.els.resumables;
      if (!box || !this.uppy) return;
      const prefix = `tus::tus-${this.uppy.getID()}-`;
      const entries = [];
      try {
        for (let i = 0; i < localStorage.length; i += 1) {
          const key = localStorage.key(i);
          if (!key || !key.startsWith(prefix)) continue;
          try {
            const value = JSON.parse(localStorage.getItem(key));
            if (value && typeof value.uploadUrl === 'string' && sameOrigin(value.uploadUrl)) entries.push({ key, ...value });
          } catch (_) { localStorage.removeItem(key); }
        }
      } catch (_) { return; }
      const busy = new Set(this.uppy.getFiles().map((f) => f.tus && f.tus.uploadUrl).filter(Boolean));
      const items = [];
      for (const e of entries) {
        if (busy.has(e.uploadUrl)) continue;
        try {
          const resp = await fetch(e.uploadUrl, { method: 'HEAD', headers: TUS_HEADERS, credentials: 'same-origin' });
          if ([403, 404, 410].includes(resp.status)) { localStorage.removeItem(e.key); continue; }
          if (!resp.ok) continue;
          const offset = Number(resp.headers.get('Upload-Offset') || 0);
          const length = Number(resp.headers.get('Upload-Length') || e.size || 0);
          if (length && offset >= length) { localStorage.removeItem(e.key); continue; }
          items.push({ ...e, offset, length });
        } catch (_) { /* offline: skip */ }
      }
      if (!items.length) {
        box.hidden = true;
        box.replaceChildren();
        return;
      }
      box.replaceChildren(
        h('div', { class: 'callout callout-info', role: 'region', 'aria-labelledby': 'resumables-title' },
          h('h2', { id: 'resumables-title', text: items.length === 1 ? 'One upload can be resumed' : `${items.length} uploads can be resumed` }),
          h('p', { text: 'Add the same file again below and press Upload: it continues where it stopped.' }),
          h('ul', { class: 'resumable-list' }, items.map((it) => {
            const name = (it.metadata && (it.metadata.filename || it.metadata.name)) || 'file';
            const pct = it.length ? Math.floor((it.offset / it.length) * 100) : 0;
            const discard = h('button', { type: 'button', class: 'btn btn-ghost btn-sm', text: 'Discard', 'aria-label': `Discard the unfinished upload of ${name}` });
            discard.addEventListener('click', async () => {
              discard.disabled = true;
              try {
                await fetch(it.uploadUrl, { method: 'DELETE', headers: { ...TUS_HEADERS, 'X-CSRF-Token': csrfToken() }, credentials: 'same-origin' });
              } catch (_) { /* forget it locally anyway */ }
              localStorage.removeItem(it.key);
              this.refreshResumables();
            });
            return h('li', { class: 'resumable', dataset: { name } },
              h('span', { class: 'resumable-name', text: name }),
              h('span', { class: 'resumable-progress' },
                h('progress', { max: '100', value: String(pct), 'aria-label': `${name}: ${pct}% uploaded` }),
                h('span', { text: `${pct}% of ${formatBytes(it.length)}` })),
              discard);
          }))));
      box.hidden = false;
    },

    updatePill() {
      const pill = $('#upload-pill');
      if (!pill) return;
      const n = this.active();
      const onUpload = currentRoute().name === 'upload';
      if (!n || onUpload || !this.uppy) {
        pill.hidden = true;
        return;
      }
      const pct = this.uppy.getState().totalProgress || 0;
      pill.textContent = `Uploading ${n} · ${pct}%`;
      pill.hidden = false;
    },
  };

  function statusFromTusError(error) {
    try {
      if (error && error.originalResponse) return error.originalResponse.getStatus();
    } catch (_) { /* not a tus error */ }
    const m = /response code: (\d{3})/.exec(String(error && error.message));
    return m ? Number(m[1]) : 0;
  }

  /** The server's own words from a failed tus request (its body is plain text). */
  function serverText(error, response) {
    try {
      if (error && error.originalResponse) {
        const t = error.originalResponse.getBody();
        if (t) return String(t).trim().slice(0, 300);
      }
    } catch (_) { /* ignore */ }
    try {
      const xhr = response && response.body && response.body.xhr;
      if (xhr && xhr.responseText) return String(xhr.responseText).trim().slice(0, 300);
    } catch (_) { /* ignore */ }
    const m = /response text: (.*?)(, request id|\)$)/s.exec(String(error && error.message));
    return m ? m[1].trim().slice(0, 300) : '';
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  function sameOrigin(url) {
    try {
      return new URL(url, location.href).origin === location.origin;
    } catch (_) {
      return false;
    }
  }

  // ---------------------------------------------------------------------------------------
  // Files

  const SORTS = [
    ['-date', 'Newest first'], ['date', 'Oldest first'], ['name', 'Name A–Z'], ['-name', 'Name Z–A'],
    ['-size', 'Largest first'], ['size', 'Smallest first'],
  ];
  const FILTER_KEYS = ['q', 'category', 'type', 'status', 'min', 'max', 'from', 'to', 'tag'];
  const MB = 1024 * 1024;

  function filesHash(params) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v) qs.set(k, v);
    const s = qs.toString();
    return s ? `#/files?${s}` : '#/files';
  }

  function parentFolder(path) {
    const parts = path.split('/').filter(Boolean);
    parts.pop();
    return parts.length ? `/${parts.join('/')}/` : '/';
  }

  function folderName(path) {
    const parts = path.split('/').filter(Boolean);
    return parts.length ? parts[parts.length - 1] : 'Home';
  }

  async function filesPage(v, r, ctx) {
    const p = Object.fromEntries(r.query.entries());
    const folder = p.folder || '/';
    const searching = FILTER_KEYS.some((k) => p[k]);
    const inFolderOnly = p.scope === 'folder';
    state.lastFilesHash = location.hash || '#/files';

    // toolbar ------------------------------------------------------------------------------
    const q = h('input', { type: 'search', name: 'q', value: p.q || '', placeholder: 'Search by file name', autocomplete: 'off', 'aria-label': 'Search files by name' });
    const filterCount = FILTER_KEYS.filter((k) => k !== 'q' && p[k]).length;
    const panelId = uid('filters');
    const toggle = h('button', { type: 'button', class: 'btn', 'aria-expanded': filterCount ? 'true' : 'false', 'aria-controls': panelId },
      icon('filter'), h('span', { text: filterCount ? `Filters (${filterCount})` : 'Filters' }));
    const sortSel = select(SORTS, p.sort || '-date', { 'aria-label': 'Sort files' });
    const searchForm = h('form', { class: 'searchbar', role: 'search' },
      h('div', { class: 'search-input' }, icon('search'), q),
      h('button', { type: 'submit', class: 'btn btn-primary', text: 'Search' }),
      toggle);

    const cat = select([['', 'Any category'], ...Object.entries(CATEGORY_LABELS)], p.category || '', { name: 'category' });
    const mime = h('input', { type: 'text', name: 'type', value: p.type || '', placeholder: 'e.g. image/png or video/*', autocomplete: 'off' });
    const status = select([['', 'Any status'], ['committed', 'Accepted'], ['validating', 'Checking'], ['rejected', 'Rejected'], ['failed', 'Failed']], p.status || '', { name: 'status' });
    const minS = h('input', { type: 'number', name: 'min', min: '0', step: 'any', value: p.min || '', inputmode: 'decimal' });
    const maxS = h('input', { type: 'number', name: 'max', min: '0', step: 'any', value: p.max || '', inputmode: 'decimal' });
    const from = h('input', { type: 'date', name: 'from', value: p.from || '' });
    const to = h('input', { type: 'date', name: 'to', value: p.to || '' });
    const tag = h('input', { type: 'text', name: 'tag', value: p.tag || '', autocomplete: 'off', placeholder: 'e.g. holiday' });
    const scope = h('input', { type: 'checkbox', name: 'scope', checked: inFolderOnly, id: uid('scope') });
    const clearBtn = h('button', { type: 'button', class: 'btn btn-ghost', text: 'Clear filters' });
    const panel = h('form', { class: 'filters card', id: panelId, hidden: !filterCount, 'aria-label': 'Filters' },
      h('div', { class: 'filters-grid' },
        field('Category', cat), field('Type (MIME)', mime), field('Status', status),
        field('Size from (MB)', minS), field('Size to (MB)', maxS),
        field('Uploaded from', from), field('Uploaded until', to), field('Tag', tag)),
      h('div', { class: 'filters-foot' },
        h('label', { class: 'check', for: scope.id }, scope, h('span', { text: `Only in ${folder === '/' ? 'Home' : folder}` })),
        h('div', { class: 'filters-buttons' }, clearBtn, h('button', { type: 'submit', class: 'btn btn-primary', text: 'Apply filters' }))));
    toggle.addEventListener('click', () => {
      panel.hidden = !panel.hidden;
      toggle.setAttribute('aria-expanded', String(!panel.hidden));
      if (!panel.hidden) cat.focus();
    });

    const apply = () => {
      const next = {
        folder: folder !== '/' ? folder : '', q: q.value.trim(), category: cat.value, type: mime.value.trim(), status: status.value,
        min: minS.value, max: maxS.value, from: from.value, to: to.value, tag: tag.value.trim(),
        sort: sortSel.value !== '-date' ? sortSel.value : '', scope: scope.checked ? 'folder' : '',
      };
      go(filesHash(next));
    };
    searchForm.addEventListener('submit', (ev) => { ev.preventDefault(); apply(); });
    panel.addEventListener('submit', (ev) => { ev.preventDefault(); apply(); });
    sortSel.addEventListener('change', apply);
    clearBtn.addEventListener('click', () => go(filesHash({ folder: folder !== '/' ? folder : '', sort: p.sort })));

    // breadcrumb ---------------------------------------------------------------------------
    const crumbs = h('ol', { class: 'breadcrumb' });
    const parts = folder.split('/').filter(Boolean);
    const crumbTarget = (i) => (i < 0 ? '/' : `/${parts.slice(0, i + 1).join('/')}/`);
    for (let i = -1; i < parts.length; i += 1) {
      const name = i < 0 ? 'Home' : parts[i];
      const isLast = i === parts.length - 1;
      crumbs.append(h('li', {}, isLast && !searching
        ? h('span', { 'aria-current': 'location', text: name })
        : h('a', { href: filesHash({ folder: crumbTarget(i) === '/' ? '' : crumbTarget(i), sort: p.sort }), text: name })));
    }
    const newFolder = h('button', { type: 'button', class: 'btn btn-sm' }, icon('plus'), h('span', { text: 'New folder' }));
    newFolder.addEventListener('click', async () => {
      const created = await formDialog({
        title: 'New folder',
        description: `Create a folder inside ${folder === '/' ? 'Home' : folder}.`,
        fields: [{ name: 'name', label: 'Folder name', required: true }],
        submitLabel: 'Create folder',
        onSubmit: async ({ name }) => {
          const clean = name.trim().replace(/^\/+|\/+$/g, '');
          if (!clean) throw new Error('Enter a folder name.');
          const res = await api('/api/v1/folders', { method: 'POST', body: { path: folder + clean + '/' } });
          return res.path;
        },
      });
      if (created) {
        toast(`Folder ${created} created.`, 'success');
        go(filesHash({ folder: created }));
      }
    });
    const delFolder = folder !== '/' ? h('button', { type: 'button', class: 'btn btn-sm btn-ghost danger-text' }, icon('trash'), h('span', { text: 'Delete folder' })) : null;
    if (delFolder) {
      delFolder.addEventListener('click', async () => {
        const ok = await confirmDialog({ title: 'Delete this folder?', message: `“${folder}” is removed. Only empty folders can be deleted.`, confirmLabel: 'Delete folder', danger: true });
        if (!ok) return;
        try {
          await api('/api/v1/folders', { method: 'DELETE', query: { path: folder } });
          toast(`Folder ${folder} deleted.`, 'success');
          go(filesHash({ folder: parentFolder(folder) === '/' ? '' : parentFolder(folder) }));
        } catch (e) {
          toast(e.status === 409 ? 'The folder is not empty: move or delete its files first.' : errorMessage(e), 'error');
        }
      });
    }

    // results ------------------------------------------------------------------------------
    const summary = h('p', { class: 'results-summary', role: 'status' });
    const folderList = h('ul', { class: 'folder-grid', 'aria-label': 'Folders' });
    const tbody = h('tbody');
    const table = h('table', { class: 'table files-table' },
      h('caption', { class: 'sr-only', text: 'Files' }),
      h('thead', {}, h('tr', {},
        h('th', { scope: 'col', text: 'Name' }), h('th', { scope: 'col', text: 'Size' }), h('th', { scope: 'col', text: 'Type' }),
        h('th', { scope: 'col', text: 'Status' }), h('th', { scope: 'col', text: 'Uploaded' }), h('th', { scope: 'col' }, h('span', { class: 'sr-only', text: 'Actions' })))),
      tbody);
    const more = h('button', { type: 'button', class: 'btn', hidden: true, text: 'Load more' });
    const emptyState = h('div', { class: 'empty', hidden: true });

    const tableWrap = h('div', { class: 'table-wrap' }, table);
    v.replaceChildren(
      pageHeader('Files', null, h('a', { class: 'btn btn-primary', href: '#/upload' }, icon('upload'), h('span', { text: 'Upload' }))),
      searchForm, panel,
      h('div', { class: 'files-bar' },
        h('nav', { 'aria-label': 'Folder' }, crumbs),
        h('div', { class: 'files-bar-actions' }, newFolder, delFolder, sortSel,
          window.tusMedia ? window.tusMedia.viewToggle(tableWrap) : null)),
      summary, folderList,
      tableWrap,
      emptyState,
      h('div', { class: 'load-more' }, more));

    // data ---------------------------------------------------------------------------------
    const query = {
      q: p.q, category: p.category, type: p.type, status: p.status, tag: p.tag,
      min_size: p.min ? Math.floor(Number(p.min) * MB) : undefined,
      max_size: p.max ? Math.ceil(Number(p.max) * MB) : undefined,
      from: p.from, to: p.to ? isoDay(new Date(new Date(`${p.to}T00:00:00`).getTime() + 86400000)) : undefined,
      sort: p.sort || '-date', limit: 50,
      folder: !searching || inFolderOnly ? folder : undefined,
    };
    let foldersData;
    let first;
    try {
      [foldersData, first] = await Promise.all([
        api('/api/v1/folders').catch(() => ({ folders: ['/'] })),
        api('/api/v1/files', { query }),
      ]);
    } catch (e) {
      if (!ctx.alive()) return;
      // Keep the search form so a bad filter can be fixed; say what the server said.
      table.hidden = true;
      summary.replaceChildren();
      emptyState.hidden = false;
      emptyState.replaceChildren(h('div', { class: 'callout callout-error', role: 'alert' },
        h('strong', { text: 'The files could not be listed.' }), h('p', { text: errorMessage(e) })));
      return;
    }
    if (!ctx.alive()) return;

    const subfolders = searching ? [] : (foldersData.folders || []).filter((f) => f !== folder && f.startsWith(folder) && f.slice(folder.length).split('/').filter(Boolean).length === 1);
    folderList.replaceChildren(...subfolders.map((f) => h('li', {},
      h('a', { class: 'folder-card', href: filesHash({ folder: f, sort: p.sort }) }, icon('folder'), h('span', { text: folderName(f) })))));
    folderList.hidden = !subfolders.length;

    let items = [];
    let cursor = null;
    const show = (batch, next) => {
      items = items.concat(batch);
      cursor = next;
      tbody.append(...batch.map((f) => fileRow(f, () => {
        items = items.filter((x) => x.id !== f.id);
        updateSummary();
      })));
      more.hidden = !cursor;
      updateSummary();
    };
    const updateSummary = () => {
      const n = items.length;
      const what = searching ? `${n}${cursor ? '+' : ''} matching file${n === 1 ? '' : 's'}${inFolderOnly || !searching ? ` in ${folder === '/' ? 'Home' : folder}` : ' in all folders'}`
        : `${n}${cursor ? '+' : ''} file${n === 1 ? '' : 's'}${subfolders.length ? `, ${subfolders.length} folder${subfolders.length === 1 ? '' : 's'}` : ''}`;
      summary.textContent = what;
      if (delFolder) delFolder.hidden = searching || n > 0 || subfolders.length > 0; // only empty folders go
      table.hidden = n === 0;
      emptyState.hidden = n > 0 || subfolders.length > 0;
      emptyState.replaceChildren(searching
        ? h('div', {}, h('h2', { text: 'No files match' }), h('p', { class: 'muted', text: 'Try other words or fewer filters.' }))
        : h('div', {}, h('h2', { text: 'No files here yet' }), h('p', { class: 'muted' }, 'Upload something and it shows up here. ', h('a', { href: '#/upload', text: 'Upload files' }))));
    };
    show(first.files || [], first.next_cursor);
    more.addEventListener('click', async () => {
      more.disabled = true;
      more.textContent = 'Loading…';
      try {
        const page = await api('/api/v1/files', { query: { ...query, cursor } });
        if (!ctx.alive()) return;
        show(page.files || [], page.next_cursor);
      } catch (e) {
        toast(errorMessage(e), 'error');
      } finally {
        more.disabled = false;
        more.textContent = 'Load more';
      }
    });
  }

  function contentUrl(f) {
    return `/api/v1/file/${encodeURIComponent(f.id)}/content`;
  }

  function fileRow(f, onDeleted) {
    const cat = fileCategory(f);
    const typeIcon = h('span', { class: `file-icon cat-${cat}` }, icon(cat === 'other' ? 'file' : cat));
    const link = h('a', { class: 'file-link', href: `#/file/${encodeURIComponent(f.id)}` },
      (window.tusMedia && window.tusMedia.thumb(f, typeIcon)) || typeIcon,
      h('span', { class: 'file-name', text: f.name }));
    const actions = h('td', { class: 'actions' });
    if (f.status === 'committed') {
      actions.append(h('a', { class: 'btn btn-icon', href: contentUrl(f), download: f.name, title: 'Download', 'aria-label': `Download ${f.name}` }, icon('download')));
    }
    const del = h('button', { type: 'button', class: 'btn btn-icon', title: 'Delete', 'aria-label': `Delete ${f.name}` }, icon('trash'));
    actions.append(del);
    const row = h('tr', { dataset: { id: f.id } },
      h('td', { class: 'cell-name' }, link,
        f.tags && f.tags.length ? h('span', { class: 'row-tags' }, f.tags.slice(0, 4).map((t) => h('span', { class: 'tag', text: t }))) : null),
      h('td', { class: 'cell-size', 'data-label': 'Size', text: formatBytes(f.size) }),
      h('td', { class: 'cell-type', 'data-label': 'Type', text: f.type || '—' }),
      h('td', { class: 'cell-status', 'data-label': 'Status' }, badge(f.status)),
      h('td', { class: 'cell-date', 'data-label': 'Uploaded' }, h('time', { datetime: f.created_at, text: formatDate(f.created_at) })),
      actions);
    del.addEventListener('click', async () => {
      if (await deleteFile(f)) {
        row.remove();
        onDeleted();
      }
    });
    return row;
  }

  async function deleteFile(f) {
    const ok = await confirmDialog({
      title: 'Delete this file?',
      message: `“${f.name}” is deleted for good. This cannot be undone.`,
      confirmLabel: 'Delete', danger: true,
    });
    if (!ok) return false;
    try {
      await api(`/api/v1/file/${encodeURIComponent(f.id)}`, { method: 'DELETE' });
      toast(`Deleted “${f.name}”.`, 'success');
      return true;
    } catch (e) {
      toast(errorMessage(e), 'error');
      return false;
    }
  }

  // ---------------------------------------------------------------------------------------
  // File detail

  const TEXT_PREVIEW_MAX = 64 * 1024;

  function isTextual(mime) {
    return !!mime && (mime.startsWith('text/') || ['application/json', 'application/xml', 'application/x-ndjson'].includes(mime));
  }

  async function filePage(v, r, ctx) {
    const id = r.arg || '';
    let f;
    try {
      f = await api(`/api/v1/file/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e.status !== 404) throw e;
      v.replaceChildren(h('div', { class: 'card empty' },
        h('h1', { text: 'File not found' }),
        h('p', { class: 'muted', text: 'It may have been deleted, or the link is wrong.' }),
        h('a', { class: 'btn btn-primary', href: state.lastFilesHash || '#/files', text: 'Back to files' })));
      return;
    }
    if (!ctx.alive()) return;

    const draw = () => {
      const cat = fileCategory(f);
      const mime = f.detected_type || f.declared_type || '';
      const backHref = state.lastFilesHash || '#/files';
      const title = h('h1', { class: 'file-title', text: f.name });
      const callouts = [];
      if (f.status === 'rejected' || f.status === 'failed') {
        callouts.push(h('div', { class: 'callout callout-error', role: 'alert' },
          h('strong', { text: f.status === 'rejected' ? 'This file was rejected.' : 'This file could not be stored.' }),
          h('p', { class: 'reason', text: f.reason || 'No reason was given.' })));
      } else if (f.status !== 'committed') {
        callouts.push(h('div', { class: 'callout callout-info', role: 'status' },
          h('strong', { text: 'Checking this file…' }),
          h('p', { text: virusScan() ? 'It is being scanned for viruses and its type verified. This page updates by itself.' : 'Its type is being verified. This page updates by itself.' })));
      } else if (f.reason) {
        callouts.push(h('div', { class: 'callout callout-info' }, h('p', { text: f.reason })));
      }
      const mismatch = f.type_mismatch && categoryOfMime(f.declared_type) !== categoryOfMime(f.detected_type);
      if (mismatch) {
        callouts.push(h('div', { class: 'callout callout-warn' },
          h('p', { text: `The file claims to be ${f.declared_type || 'unknown'} but looks like ${f.detected_type || 'something else'}.` })));
      }

      const download = f.status === 'committed'
        ? h('a', { class: 'btn btn-primary', href: contentUrl(f), download: f.name, id: 'download-link' }, icon('download'), h('span', { text: 'Download' }))
        : null;
      const rename = h('button', { type: 'button', class: 'btn', text: 'Rename' });
      const move = h('button', { type: 'button', class: 'btn', text: 'Move' });
      const tags = h('button', { type: 'button', class: 'btn', text: 'Edit tags' });
      const del = h('button', { type: 'button', class: 'btn btn-danger-outline' }, icon('trash'), h('span', { text: 'Delete' }));

      const patch = async (body) => {
        f = await api(`/api/v1/file/${encodeURIComponent(f.id)}`, { method: 'PATCH', body });
        draw();
      };
      rename.addEventListener('click', () => formDialog({
        title: 'Rename file', fields: [{ name: 'name', label: 'New name', value: f.name, required: true }],
        submitLabel: 'Rename',
        onSubmit: async ({ name }) => {
          if (!name.trim()) throw new Error('Enter a name.');
          await patch({ name: name.trim() });
          toast('Renamed.', 'success');
        },
      }));
      move.addEventListener('click', async () => {
        let folders = ['/'];
        try { folders = (await api('/api/v1/folders')).folders || ['/']; } catch (_) { /* just Home */ }
        const sel = select(folders.map((x) => [x, x === '/' ? 'Home (/)' : x]), f.folder);
        const other = h('input', { type: 'text', placeholder: '/new/folder/', autocomplete: 'off' });
        await formDialog({
          title: 'Move file', description: `Currently in ${f.folder === '/' ? 'Home' : f.folder}.`,
          fields: [{ name: 'folder', label: 'Folder', control: sel }, { name: 'other', label: 'Or a new folder path', control: other, hint: 'Leave empty to use the folder above.' }],
          submitLabel: 'Move',
          onSubmit: async (vals) => {
            await patch({ folder: vals.other.trim() || vals.folder });
            toast(`Moved to ${f.folder}.`, 'success');
          },
        });
      });
      tags.addEventListener('click', () => formDialog({
        title: 'Edit tags', fields: [{ name: 'tags', label: 'Tags', value: (f.tags || []).join(', '), hint: 'Separate tags with commas. Letters, digits, space . : - _' }],
        onSubmit: async (vals) => {
          const list = vals.tags.split(',').map((t) => t.trim()).filter(Boolean);
          await patch({ tags: list });
          toast('Tags saved.', 'success');
        },
      }));
      del.addEventListener('click', async () => {
        if (await deleteFile(f)) go(backHref);
      });

      const folderLink = h('a', { href: filesHash({ folder: f.folder === '/' ? '' : f.folder }), text: f.folder === '/' ? 'Home' : f.folder });
      const tagList = (f.tags || []).length
        ? h('span', { class: 'tag-list' }, f.tags.map((t) => h('a', { class: 'tag', href: filesHash({ tag: t }), text: t })))
        : h('span', { class: 'muted', text: 'none' });
      const rows = [
        ['Name', h('span', { class: 'break', text: f.name })],
        ['Folder', folderLink],
        ['Size', `${formatBytes(f.size)} (${numFmt.format(f.size)} bytes)`],
        ['Status', badge(f.status)],
        f.reason ? ['Reason', h('span', { class: 'reason break', text: f.reason })] : null,
        ['Detected type', f.detected_type || '—'],
        ['Declared type', f.type_mismatch && f.declared_type
          ? h('span', {}, f.declared_type, ' ', h('span', { class: 'muted', text: '(differs from the detected type)' }))
          : (f.declared_type || '—')],
        ['Category', CATEGORY_LABELS[f.category] || f.category || '—'],
        ['Tags', tagList],
        ...(window.tusMedia ? window.tusMedia.factRows(f) : []),
        ['Uploaded', h('time', { datetime: f.created_at, text: formatDate(f.created_at) })],
        ['Stored', f.committed_at ? h('time', { datetime: f.committed_at, text: formatDate(f.committed_at) }) : '—'],
        ['SHA-256', h('code', { class: 'hash', text: f.sha256 || '—' })],
        ['File ID', h('code', { class: 'hash', text: f.id })],
      ].filter(Boolean);
      const meta = h('dl', { class: 'meta' }, rows.map(([k, val]) => [h('dt', { text: k }), h('dd', {}, val)]));
      const extra = f.metadata && Object.keys(f.metadata).length
        ? h('details', { class: 'raw-meta' }, h('summary', { text: 'Upload metadata' }),
          h('dl', { class: 'meta meta-small' }, Object.entries(f.metadata).map(([k, val]) => [h('dt', { text: k }), h('dd', { class: 'break', text: String(val) })])))
        : null;

      v.replaceChildren(
        h('nav', { class: 'backnav', 'aria-label': 'Breadcrumb' }, h('a', { href: backHref }, icon('back'), h('span', { text: 'Back to files' }))),
        h('div', { class: 'page-header file-header' },
          h('div', { class: 'page-title' }, title, h('p', { class: 'lead' }, badge(f.status), ' ', `${CATEGORY_LABELS[cat] || cat} · ${formatBytes(f.size)}`)),
          h('div', { class: 'page-actions' }, download, rename, move, tags, del)),
        ...callouts,
        h('div', { class: 'detail-grid' },
          h('section', { class: 'card preview-card', 'aria-label': 'Preview' }, preview(f, cat, mime, ctx)),
          h('section', { class: 'card', 'aria-labelledby': 'details-title' }, h('h2', { id: 'details-title', text: 'Details' }), meta, extra)));
    };
    draw();

    if (!['committed', 'rejected', 'failed'].includes(f.status)) {
      let stop = false;
      ctx.onCleanup(() => { stop = true; });
      (async () => {
        let delay = 1000;
        while (!stop && ctx.alive()) {
          await sleep(delay);
          delay = Math.min(delay * 1.5, 5000);
          if (stop || !ctx.alive()) return;
          try {
            const fresh = await api(`/api/v1/file/${encodeURIComponent(id)}`);
            if (stop || !ctx.alive()) return;
            if (fresh.status !== f.status) {
              f = fresh;
              draw();
            }
            if (['committed', 'rejected', 'failed'].includes(fresh.status)) return;
          } catch (_) { /* keep trying */ }
        }
      })();
    }
  }

  function preview(f, cat, mime, ctx) {
    if (f.status !== 'committed') {
      return h('div', { class: 'preview-empty' }, icon(cat === 'other' ? 'file' : cat, 'icon icon-xl'),
        h('p', { class: 'muted', text: f.status === 'rejected' || f.status === 'failed' ? 'No preview: the file was not accepted.' : 'The preview appears once the file is accepted.' }));
    }
    // A preview, not a download (the server does not count it as one).
    const src = window.tusMedia ? window.tusMedia.previewUrl(f) : contentUrl(f);
    const fallback = (text) => h('div', { class: 'preview-empty' }, icon(cat === 'other' ? 'file' : cat, 'icon icon-xl'), h('p', { class: 'muted', text }));
    if (cat === 'image') {
      const img = h('img', { class: 'preview-media', src, alt: `Preview of ${f.name}`, decoding: 'async' });
      img.addEventListener('error', () => img.replaceWith(fallback('This image cannot be shown in the browser.')));
      return img;
    }
    if (cat === 'audio') {
      return h('div', { class: 'preview-audio' }, icon('audio', 'icon icon-xl'),
        h('audio', { class: 'preview-media', controls: true, preload: 'metadata', src, 'aria-label': `Play ${f.name}` }));
    }
    if (cat === 'video') {
      return h('video', { class: 'preview-media', controls: true, preload: 'metadata', playsinline: true, src, poster: window.tusMedia && window.tusMedia.poster(f), 'aria-label': `Play ${f.name}` });
    }
    if (isTextual(mime)) {
      const pre = h('pre', { class: 'preview-text', tabindex: '0', 'aria-label': `Beginning of ${f.name}`, text: 'Loading preview…' });
      (async () => {
        try {
          const resp = await api(contentUrl(f), { raw: true, headers: { Range: `bytes=0-${TEXT_PREVIEW_MAX - 1}`, Accept: '*/*' } });
          const buf = await resp.arrayBuffer();
          if (!ctx.alive()) return;
          const text = new TextDecoder('utf-8', { fatal: false }).decode(buf);
          pre.textContent = f.size > TEXT_PREVIEW_MAX ? `${text}\n…` : text;
        } catch (e) {
          pre.textContent = `Preview not available: ${errorMessage(e)}`;
        }
      })();
      return pre;
    }
    return fallback('No preview for this type of file. Download it to open it.');
  }

  // ---------------------------------------------------------------------------------------
  // Analytics

  const COLORS = {
    blue: '#2f54eb', green: '#15803d', red: '#c62828', amber: '#b45309', purple: '#7c3aed', teal: '#0f766e', slate: '#64748b',
  };
  const PALETTE = [COLORS.blue, COLORS.teal, COLORS.purple, COLORS.amber, COLORS.green, COLORS.red, COLORS.slate, '#db2777', '#0369a1', '#65a30d'];

  async function analyticsPage(v, r, ctx) {
    const p = Object.fromEntries(r.query.entries());
    const days = ['7', '30', '90', 'custom'].includes(p.range) ? p.range : '30';
    const isAdmin = state.user && state.user.role === 'admin';
    const scopeVal = isAdmin ? (p.scope || 'service') : 'me';

    const rangeSel = select([['7', 'Last 7 days'], ['30', 'Last 30 days'], ['90', 'Last 90 days'], ['custom', 'Custom range']], days);
    const gran = select([['day', 'Per day'], ['hour', 'Per hour']], p.granularity === 'hour' ? 'hour' : 'day');
    const from = h('input', { type: 'date', value: p.from || '' });
    const to = h('input', { type: 'date', value: p.to || '' });
    const customBox = h('div', { class: 'custom-range', hidden: days !== 'custom' }, field('From', from), field('To', to));
    const scopeSel = isAdmin ? select([['service', 'Whole service'], ['me', 'Only me'], ['user', 'One user…']], scopeVal) : null;
    const userId = isAdmin ? h('input', { type: 'text', value: p.user || '', placeholder: 'user id', autocomplete: 'off' }) : null;
    const userBox = isAdmin ? h('div', { hidden: scopeVal !== 'user' }, field('User ID', userId)) : null;
    const form = h('form', { class: 'card analytics-controls', 'aria-label': 'Analytics period' },
      field('Period', rangeSel), customBox, field('Detail', gran),
      isAdmin ? field('Scope', scopeSel) : null, userBox,
      h('div', { class: 'field field-button' }, h('button', { type: 'submit', class: 'btn btn-primary', text: 'Show' })));
    rangeSel.addEventListener('change', () => { customBox.hidden = rangeSel.value !== 'custom'; if (rangeSel.value !== 'custom') form.requestSubmit(); });
    gran.addEventListener('change', () => form.requestSubmit());
    if (scopeSel) scopeSel.addEventListener('change', () => { userBox.hidden = scopeSel.value !== 'user'; if (scopeSel.value !== 'user') form.requestSubmit(); });
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const qs = new URLSearchParams();
      if (rangeSel.value !== '30') qs.set('range', rangeSel.value);
      if (rangeSel.value === 'custom') { if (from.value) qs.set('from', from.value); if (to.value) qs.set('to', to.value); }
      if (gran.value === 'hour') qs.set('granularity', 'hour');
      if (scopeSel && scopeSel.value !== 'service') qs.set('scope', scopeSel.value);
      if (scopeSel && scopeSel.value === 'user' && userId.value.trim()) qs.set('user', userId.value.trim());
      const s = qs.toString();
      go(s ? `#/analytics?${s}` : '#/analytics');
    });

    // query
    const now = new Date();
    const query = { granularity: gran.value };
    if (days === 'custom') {
      if (p.from) query.from = p.from;
      if (p.to) query.to = isoDay(new Date(new Date(`${p.to}T00:00:00`).getTime() + 86400000));
    } else {
      const start = new Date(now.getTime() - (Number(days) - 1) * 86400000);
      query.from = gran.value === 'hour' ? new Date(now.getTime() - Number(days) * 86400000).toISOString() : isoDay(start);
      query.to = new Date(now.getTime() + 3600000).toISOString();
    }
    if (isAdmin && scopeVal === 'me') query.user = state.user.id;
    if (isAdmin && scopeVal === 'user' && p.user) query.user = p.user;

    const scopeText = isAdmin ? (scopeVal === 'service' ? 'Whole service' : scopeVal === 'me' ? 'Your files' : `User ${p.user || '?'}`) : 'Your files';
    v.replaceChildren(pageHeader('Analytics', `${scopeText} · uploads, downloads and rejections`), form,
      h('p', { class: 'loading', role: 'status', text: 'Loading numbers…' }));

    let data;
    try {
      data = await api('/api/v1/analytics', { query });
    } catch (e) {
      if (!ctx.alive()) return;
      v.replaceChildren(pageHeader('Analytics', scopeText), form,
        h('div', { class: 'callout callout-error', role: 'alert' },
          h('strong', { text: 'The numbers could not be loaded.' }), h('p', { text: errorMessage(e) })));
      return;
    }
    if (!ctx.alive()) return;
    const t = data.totals || {};
    const count = (k) => (t[k] ? t[k].count : 0);
    const bytes = (k) => (t[k] ? t[k].bytes : 0);
    const kpis = [
      ['upload.started', 'Uploads started', numFmt.format(count('upload.started')), null],
      ['upload.finished', 'Uploads finished', numFmt.format(count('upload.finished')), formatBytes(data.bytes_in ?? bytes('upload.finished'))],
      ['file.committed', 'Files accepted', numFmt.format(count('file.committed')), formatBytes(bytes('file.committed'))],
      ['file.rejected', 'Files rejected', numFmt.format(count('file.rejected')), null],
      ['file.downloaded', 'Downloads', numFmt.format(count('file.downloaded')), formatBytes(data.bytes_out ?? bytes('file.downloaded'))],
      ['file.deleted', 'Files deleted', numFmt.format(count('file.deleted')), null],
    ];
    const kpiGrid = h('ul', { class: 'kpis', 'aria-label': 'Totals' }, kpis.map(([key, label, value, sub]) => h('li', { class: 'kpi', dataset: { kpi: key } },
      h('span', { class: 'kpi-label', text: label }),
      h('span', { class: 'kpi-value', text: value }),
      sub ? h('span', { class: 'kpi-sub', text: sub }) : null)));

    const series = data.series || [];
    const labels = series.map((b) => {
      const d = new Date(b.bucket.length === 10 ? `${b.bucket}T00:00:00` : b.bucket);
      return Number.isNaN(d.getTime()) ? b.bucket : (data.granularity === 'hour' ? hourFmt.format(d) : dayFmt.format(d));
    });
    const col = (kind, what) => series.map((b) => (b[kind] ? b[kind][what] : 0));
    const charts = [];
    const hasChart = typeof window.Chart === 'function';

    const chartCard = (id, title, desc, config, table, { wide = false, empty = false } = {}) => {
      const body = [];
      if (empty) body.push(h('p', { class: 'muted chart-empty', text: 'No data for this period.' }));
      else if (hasChart) {
        const canvas = h('canvas', { id, role: 'img', 'aria-label': `${title}: ${desc}` });
        body.push(h('div', { class: 'chart-box' }, canvas));
        charts.push([canvas, config]);
      } else {
        body.push(h('p', { class: 'muted', text: 'Charts are unavailable (the chart library did not load); the numbers are below.' }));
      }
      if (!empty && table) body.push(h('details', { class: 'chart-data', open: !hasChart }, h('summary', { text: 'Show as table' }), table));
      return h('section', { class: `card chart-card${wide ? ' chart-wide' : ''}`, 'aria-labelledby': `${id}-title` },
        h('h2', { id: `${id}-title`, text: title }), h('p', { class: 'muted chart-desc', text: desc }), body);
    };
    const dataTable = (headers, rows) => h('div', { class: 'table-wrap' }, h('table', { class: 'table table-compact' },
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col', text: x })))),
      h('tbody', {}, rows.map((row) => h('tr', {}, row.map((c, i) => (i === 0 ? h('th', { scope: 'row', text: c }) : h('td', { text: c }))))))));
    const seriesRows = (cols) => series.map((b, i) => [labels[i], ...cols.map((fn) => fn(b))]).filter((row) => row.slice(1).some((x) => x && x !== '0' && x !== '0 B'));
    const bytesAxis = { ticks: { callback: (val) => formatBytes(val) }, beginAtZero: true };
    const countAxis = { beginAtZero: true, ticks: { precision: 0 } };
    const anyIn = (kinds) => series.some((b) => kinds.some((k) => b[k] && (b[k].count || b[k].bytes)));

    const uploadsCfg = {
      type: 'bar',
      data: {
        labels,
        datasets: [
          { label: 'Finished', data: col('upload.finished', 'count'), backgroundColor: COLORS.blue, maxBarThickness: 18, borderRadius: 3 },
          { label: 'Accepted', data: col('file.committed', 'count'), backgroundColor: COLORS.green, maxBarThickness: 18, borderRadius: 3 },
          { label: 'Rejected', data: col('file.rejected', 'count'), backgroundColor: COLORS.red, maxBarThickness: 18, borderRadius: 3 },
        ],
      },
      options: { scales: { y: countAxis } },
    };
    const bytesCfg = {
      type: 'line',
      data: {
        labels,
        datasets: [
          { label: 'Uploaded', data: col('upload.finished', 'bytes'), borderColor: COLORS.blue, backgroundColor: 'rgba(47,84,235,.12)', fill: true, tension: 0.25, pointRadius: 0, pointHoverRadius: 4, borderWidth: 2 },
          { label: 'Downloaded', data: col('file.downloaded', 'bytes'), borderColor: COLORS.teal, backgroundColor: 'rgba(15,118,110,.10)', fill: true, tension: 0.25, pointRadius: 0, pointHoverRadius: 4, borderWidth: 2 },
        ],
      },
      options: { scales: { y: bytesAxis }, plugins: { tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${formatBytes(c.parsed.y)}` } } } },
    };
    const dlCfg = {
      type: 'bar',
      data: { labels, datasets: [{ label: 'Downloads', data: col('file.downloaded', 'count'), backgroundColor: COLORS.teal, maxBarThickness: 24, borderRadius: 3 }] },
      options: { scales: { y: countAxis }, plugins: { legend: { display: false } } },
    };
    const types = data.top_types || [];
    const typesCfg = {
      type: 'bar',
      data: { labels: types.map((x) => x.key || 'unknown'), datasets: [{ label: 'Files', data: types.map((x) => x.count), backgroundColor: types.map((_, i) => PALETTE[i % PALETTE.length]), maxBarThickness: 28, borderRadius: 3 }] },
      options: { indexAxis: 'y', scales: { x: countAxis }, plugins: { legend: { display: false } } },
    };
    const reasons = data.rejects_by_reason || [];
    const short = (s) => (s.length > 42 ? `${s.slice(0, 40)}…` : s);
    const reasonsCfg = {
      type: 'bar',
      data: { labels: reasons.map((x) => short(x.key || 'unknown')), datasets: [{ label: 'Rejected files', data: reasons.map((x) => x.count), backgroundColor: COLORS.red, maxBarThickness: 28, borderRadius: 3 }] },
      options: { indexAxis: 'y', scales: { x: countAxis }, plugins: { legend: { display: false } } },
    };

    const topFiles = data.top_files || [];
    const topTable = h('tbody');
    const topCard = h('section', { class: 'card chart-card', 'aria-labelledby': 'top-files-title' },
      h('h2', { id: 'top-files-title', text: 'Most downloaded files' }),
      topFiles.length
        ? h('div', { class: 'table-wrap' }, h('table', { class: 'table table-compact' },
          h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'File' }), h('th', { scope: 'col', text: 'Downloads' }), h('th', { scope: 'col', text: 'Bytes' }))),
          topTable))
        : h('p', { class: 'muted chart-empty', text: 'No downloads in this period.' }));
    for (const tf of topFiles) {
      const nameCell = h('td', {}, h('span', { class: 'muted', text: tf.key }));
      topTable.append(h('tr', {}, nameCell, h('td', { text: numFmt.format(tf.count) }), h('td', { text: formatBytes(tf.bytes) })));
      api(`/api/v1/file/${encodeURIComponent(tf.key)}`, { recover: false }).then((ff) => {
        nameCell.replaceChildren(h('a', { href: `#/file/${encodeURIComponent(ff.id)}`, text: ff.name }));
      }).catch(() => {
        nameCell.replaceChildren(h('span', { class: 'muted', text: `${tf.key.slice(0, 12)}… (deleted or not yours)` }));
      });
    }

    const unit = data.granularity === 'hour' ? 'hour' : 'day';
    v.replaceChildren(
      pageHeader('Analytics', `${scopeText} · ${labels[0] || ''} – ${labels[labels.length - 1] || ''}`),
      form, kpiGrid,
      h('div', { class: 'chart-grid' },
        chartCard('chart-uploads', 'Uploads', `Finished uploads, accepted and rejected files per ${unit}`, uploadsCfg,
          dataTable(['Period', 'Finished', 'Accepted', 'Rejected'], seriesRows([(b) => String(b['upload.finished'].count), (b) => String(b['file.committed'].count), (b) => String(b['file.rejected'].count)])),
          { wide: true, empty: !anyIn(['upload.finished', 'file.committed', 'file.rejected']) }),
        chartCard('chart-bytes', 'Data transferred', `Bytes uploaded and downloaded per ${unit}`, bytesCfg,
          dataTable(['Period', 'Uploaded', 'Downloaded'], seriesRows([(b) => formatBytes(b['upload.finished'].bytes), (b) => formatBytes(b['file.downloaded'].bytes)])),
          { empty: !anyIn(['upload.finished', 'file.downloaded']) }),
        chartCard('chart-downloads', 'Downloads', `Downloads per ${unit}`, dlCfg,
          dataTable(['Period', 'Downloads'], seriesRows([(b) => String(b['file.downloaded'].count)])),
          { empty: !anyIn(['file.downloaded']) }),
        chartCard('chart-types', 'Top file types', 'Accepted files by detected type', typesCfg,
          dataTable(['Type', 'Files', 'Bytes'], types.map((x) => [x.key || 'unknown', String(x.count), formatBytes(x.bytes)])),
          { empty: !types.length }),
        chartCard('chart-reasons', 'Rejections by reason', 'Why files were refused', reasonsCfg,
          dataTable(['Reason', 'Files'], reasons.map((x) => [x.key || 'unknown', String(x.count)])),
          { empty: !reasons.length }),
        topCard));

    if (hasChart) {
      const Chart = window.Chart;
      Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
      Chart.defaults.color = '#475069';
      const reduce = window.matchMedia && window.matchMedia('(prefers-reduced-motion: reduce)').matches;
      const made = charts.map(([canvas, cfg]) => new Chart(canvas, {
        ...cfg,
        options: {
          responsive: true, maintainAspectRatio: false, animation: reduce ? false : { duration: 300 },
          ...cfg.options,
          plugins: { legend: { position: 'bottom', labels: { boxWidth: 12 } }, ...(cfg.options.plugins || {}) },
        },
      }));
      ctx.onCleanup(() => made.forEach((c) => c.destroy()));
    }
  }

  const PAGES = { signin: signinPage, signup: signupPage, files: filesPage, file: filePage, analytics: analyticsPage };

  // ---------------------------------------------------------------------------------------
  // Start

  function init() {
    $('#signout').addEventListener('click', () => session.signOut());
    $('#skip-link').addEventListener('click', (ev) => {
      ev.preventDefault();
      const target = $('#upload-view').hidden ? $('#view') : $('#upload-view');
      const heading = $('h1', target) || $('#main');
      heading.tabIndex = -1;
      heading.focus();
    });
    window.addEventListener('unhandledrejection', (ev) => {
      const reason = ev.reason;
      if (reason instanceof ApiError && reason.status === 401) return;
      toast(`Something went wrong: ${errorMessage(reason)}`, 'error');
    });
    window.addEventListener('error', (ev) => {
      if (ev.message) toast(`Something went wrong: ${ev.message}`, 'error');
    });
    window.addEventListener('hashchange', render);
    boot();
  }

  async function boot() {
    view().replaceChildren(h('p', { class: 'loading', role: 'status', text: 'Loading…' }));
    try {
      state.limits = await api('/api/v1/limits', { recover: false });
    } catch (_) {
      state.limits = { allowed_categories: [], max_size: null, max_size_per_category: {}, document_types: [], tus_endpoint: '/uploads/' };
    }
    state.authOff = state.limits.auth === 'none';
    for (;;) {
      try {
        // 200 whether signed in or not: no failed request in the console before sign-in.
        const session = await api('/api/v1/auth/session', { recover: false });
        const me = session && session.authenticated ? session.user : null;
        state.user = me && me.id === null ? { id: null, username: 'operator', role: 'admin' } : me;
        break;
      } catch (e) {
        if (e.status === 401 || e.status === 403) {
          state.user = null;
          break;
        }
        // The server is down or failing: say so, and offer to try again.
        view().replaceChildren(errorPanel(e, () => boot()));
        return;
      }
    }
    state.ready = true;
    render();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
