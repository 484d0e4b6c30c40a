/* tusserver web UI: sign in, upload (Uppy + tus), files, analytics. The entry module.
 *
 * Native ES modules, no build step: each app-*.js file holds one concern (its header says
 * which); this one wires the pages to the router and starts the page. Every value that comes
 * from the server or a user is put in the page with textContent / DOM properties (the h()
 * helper), never as HTML. Tokens: the access token lives in an HttpOnly cookie; the refresh
 * token only in memory. Uppy and Chart.js are vendored classic scripts (window.Uppy,
 * window.Chart) that the page loads before this module.
 */

import { $, h } from './app-dom.js';
import { state } from './app-state.js';
import { ApiError, api } from './app-api.js';
import { session } from './app-session.js';
import { toast, errorMessage, errorPanel } from './app-ui.js';
import { configureRouter, render, view } from './app-router.js';
import { signinPage, signupPage } from './app-auth.js';
import { uploads } from './app-upload.js';
import { filesPage } from './app-files.js';
import { filePage } from './app-file.js';
import { analyticsPage } from './app-analytics.js';

const PAGES = { signin: signinPage, signup: signupPage, files: filesPage, file: filePage, analytics: analyticsPage };
configureRouter({ pages: PAGES, uploads });

function init() {
  $('#signout').addEventListener('click', () => session.signOut(uploads));
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
