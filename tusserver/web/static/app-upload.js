/* tusserver web UI: the upload page. Uppy's Dashboard and Tus plugin (the vendored bundle,
 * window.Uppy), client-side limit checks, recent uploads followed until they are checked,
 * unfinished uploads that can be resumed, and the progress pill of the top bar.
 */

import { $, h, icon } from './app-dom.js';
import { state, virusScan, RESULTS_KEY } from './app-state.js';
import { CATEGORY_LABELS, categoryOfMime, formatBytes, sleep } from './app-format.js';
import { ApiError, api, csrfToken } from './app-api.js';
import { session, ensureSession } from './app-session.js';
import { toast, errorMessage, pageHeader } from './app-ui.js';
import { currentRoute } from './app-router.js';

const TUS_HEADERS = { 'Tus-Resumable': '1.0.0' };

export const uploads = {
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



function sameOrigin(url) {
  try {
    return new URL(url, location.href).origin === location.origin;
  } catch (_) {
    return false;
  }
}
