/* tusserver web UI: notifications (toasts), dialogs (confirm, form), the error panel and
 * page headers shared by the views.
 */

import { h, uid, field, $ } from './app-dom.js';
import { ApiError } from './app-api.js';

export function toast(message, kind = 'info', timeout) {
  const box = $('#toasts');
  const close = h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss notification' }, '×');
  const el = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' },
    h('span', { class: 'toast-msg', text: message }), close);
  close.addEventListener('click', () => el.remove());
  box.append(el);
  while (box.children.length > 4) box.firstElementChild.remove();
  setTimeout(() => el.remove(), timeout || (kind === 'error' ? 10000 : 5000));
}

export function errorMessage(err) {
  if (err instanceof ApiError) return err.message;
  return (err && err.message) || 'Something went wrong.';
}

export function openDialog(dlg) {
  document.body.append(dlg);
  dlg.addEventListener('close', () => setTimeout(() => dlg.remove(), 0));
  dlg.showModal();
  return dlg;
}

export function confirmDialog({ title, message, confirmLabel = 'OK', danger = false }) {
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
export function formDialog({ title, description, fields, submitLabel = 'Save', onSubmit }) {
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

export function errorPanel(err, retry) {
  return h('div', { class: 'card error-panel', role: 'alert' },
    h('h1', { text: 'Something went wrong' }),
    h('p', { text: errorMessage(err) }),
    retry ? h('button', { type: 'button', class: 'btn btn-primary', onclick: retry, text: 'Try again' }) : null);
}

export function notFoundPage(v) {
  v.replaceChildren(h('div', { class: 'card empty' },
    h('h1', { text: 'Page not found' }),
    h('p', {}, 'There is nothing at this address. ', h('a', { href: '#/files', text: 'Go to your files' }), '.')));
}

export function pageHeader(title, subtitle, ...actions) {
  return h('div', { class: 'page-header' },
    h('div', { class: 'page-title' }, h('h1', { text: title }), subtitle ? h('p', { class: 'lead', text: subtitle }) : null),
    actions.length ? h('div', { class: 'page-actions' }, actions) : null);
}
