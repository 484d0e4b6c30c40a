/* tusserver web UI: the hash router. Reads #/name/arg?query, sends signed-out users to sign
 * in, renders the page registered for the route (configureRouter) and updates the top bar.
 */

import { $, $$, h } from './app-dom.js';
import { state } from './app-state.js';
import { errorPanel, notFoundPage } from './app-ui.js';

export const view = () => $('#view');
let renderSeq = 0;
let cleanups = [];
let firstRender = true;

/** What the router renders, set once at start (configureRouter): the views import go() from here. */
const routes = {
  pages: {}, // route name -> async (viewElement, route, ctx) => void
  uploads: null, // the upload page, built once and kept while browsing: { show(), updatePill() }
};

/** Register the pages by route name and the upload page's controller. */
export function configureRouter({ pages, uploads }) {
  routes.pages = pages;
  routes.uploads = uploads;
}

export function currentRoute() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, qs] = raw.split('?');
  const parts = path.split('/').filter(Boolean);
  return { name: parts[0] || '', arg: parts[1] ? decodeURIComponent(parts[1]) : null, query: new URLSearchParams(qs || '') };
}

export function go(hash, { replace = false } = {}) {
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

export async function render() {
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
      routes.uploads.show();
    } catch (e) {
      uploadView.replaceChildren(errorPanel(e));
    }
  } else {
    uploadView.hidden = true;
    v.hidden = false;
    v.replaceChildren(h('p', { class: 'loading', role: 'status', text: 'Loading…' }));
    const page = (Object.hasOwn(routes.pages, r.name) && routes.pages[r.name]) || notFoundPage;
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
  routes.uploads.updatePill();
}
