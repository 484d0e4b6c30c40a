/* tusserver web UI: formatting (sizes, dates, numbers), file categories and status badges,
 * and sleep().
 */

import { h } from './app-dom.js';
import { state } from './app-state.js';

export function formatBytes(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return '—';
  n = Number(n);
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB', 'TB', 'PB'];
  let i = -1;
  do { n /= 1024; i += 1; } while (n >= 1024 && i < units.length - 1);
  return `${n >= 100 ? n.toFixed(0) : n.toFixed(1)} ${units[i]}`;
}

export const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
export const dayFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
export const hourFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
export const numFmt = new Intl.NumberFormat();

export function formatDate(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : dateFmt.format(d);
}

export function isoDay(d) {
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
}

export const CATEGORY_LABELS = { video: 'Video', audio: 'Audio', image: 'Images', document: 'Documents', other: 'Other files' };
export const STATUS_INFO = {
  received: { label: 'Checking…', cls: 'badge-wait' },
  validating: { label: 'Checking…', cls: 'badge-wait' },
  committed: { label: 'Accepted', cls: 'badge-ok' },
  rejected: { label: 'Rejected', cls: 'badge-bad' },
  failed: { label: 'Failed', cls: 'badge-bad' },
};

export function badge(status) {
  const info = STATUS_INFO[status] || { label: status || 'Unknown', cls: 'badge-neutral' };
  return h('span', { class: `badge ${info.cls}`, dataset: { status: status || '' }, text: info.label });
}

export function categoryOfMime(mime) {
  if (!mime) return 'other';
  const major = mime.split('/', 1)[0];
  if (major === 'video' || major === 'audio' || major === 'image') return major;
  const docs = (state.limits && state.limits.document_types) || [];
  return docs.includes(mime) ? 'document' : 'other';
}

export function fileCategory(f) {
  return f.category || categoryOfMime(f.detected_type || f.declared_type);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
