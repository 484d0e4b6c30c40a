/* tusserver web UI: DOM helpers. $ / $$ queries, h() to build elements (values go in as
 * text or DOM properties, never as HTML), icons, labelled form fields and selects.
 */

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const PROPS = new Set(['value', 'checked', 'disabled', 'hidden', 'selected', 'multiple', 'required', 'readOnly']);
let uidCounter = 0;
export const uid = (prefix = 'id') => `${prefix}-${++uidCounter}`;

/** Build an element. props: class, text, dataset, on<Event>, DOM props, else attributes. */
export function h(tag, props, ...children) {
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

export function appendAll(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const SVG_NS = 'http://www.w3.org/2000/svg';
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

export function icon(name, cls = 'icon') {
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
export function field(label, control, { hint, wide } = {}) {
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

export function select(options, value, props = {}) {
  const el = h('select', props);
  for (const [v, label] of options) el.append(h('option', { value: v, text: label, selected: v === value }));
  return el;
}
