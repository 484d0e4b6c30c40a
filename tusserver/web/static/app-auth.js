/* tusserver web UI: the sign-in and sign-up pages. */

import { h, field, SVG_NS } from './app-dom.js';
import { state, virusScan } from './app-state.js';
import { api } from './app-api.js';
import { session } from './app-session.js';
import { toast, errorMessage } from './app-ui.js';
import { go } from './app-router.js';

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

export function signinPage(v, r) {
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

export function signupPage(v) {
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
