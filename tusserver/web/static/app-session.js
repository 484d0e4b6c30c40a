/* tusserver web UI: the session. Sign in, refresh (the access token is an HttpOnly cookie,
 * the refresh token stays in memory), recover after a 401 (refresh, else the sign-in dialog),
 * sign out.
 */

import { h, uid, field } from './app-dom.js';
import { state, RESULTS_KEY } from './app-state.js';
import { ApiError, api, onUnauthorized } from './app-api.js';
import { toast, errorMessage, openDialog, confirmDialog } from './app-ui.js';

export const session = {
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

  /** uploads: the upload page's controller (running uploads are confirmed, then paused). */
  async signOut(uploads) {
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
export function reloadAt(hash) {
  history.replaceState(null, '', location.pathname + location.search + hash);
  location.reload();
}

let sessionCheck = null;

/** Resolves when the session is good (after a refresh or the sign-in dialog if needed). */
export function ensureSession() {
  if (!sessionCheck) {
    sessionCheck = api('/api/v1/auth/me').finally(() => {
      setTimeout(() => { sessionCheck = null; }, 5000);
    });
  }
  return sessionCheck;
}

export function forgetLocal() {
  state.user = null;
  state.refreshToken = null;
  clearTimeout(state.refreshTimer);
  try { sessionStorage.removeItem(RESULTS_KEY); } catch (_) { /* storage off */ }
}

/** Shown on a 401 inside the app: sign in again without leaving the page (uploads wait). */
export function reauthDialog() {
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

onUnauthorized(() => session.recover());
