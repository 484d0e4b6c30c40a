/* tusserver web UI: the files page. Search and filters, folders (breadcrumb, create,
 * delete), the list with paging, and deleting a file.
 */

import { h, icon, field, select, uid } from './app-dom.js';
import { state } from './app-state.js';
import { CATEGORY_LABELS, badge, fileCategory, formatBytes, formatDate, isoDay } from './app-format.js';
import { api } from './app-api.js';
import { toast, errorMessage, confirmDialog, formDialog, pageHeader } from './app-ui.js';
import { go } from './app-router.js';
import * as media from './media.js';

const SORTS = [
  ['-date', 'Newest first'], ['date', 'Oldest first'], ['name', 'Name A–Z'], ['-name', 'Name Z–A'],
  ['-size', 'Largest first'], ['size', 'Smallest first'],
];
const FILTER_KEYS = ['q', 'category', 'type', 'status', 'min', 'max', 'from', 'to', 'tag'];
const MB = 1024 * 1024;

export function filesHash(params) {
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

export async function filesPage(v, r, ctx) {
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
        media.viewToggle(tableWrap))),
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

export function contentUrl(f) {
  return `/api/v1/file/${encodeURIComponent(f.id)}/content`;
}

function fileRow(f, onDeleted) {
  const cat = fileCategory(f);
  const typeIcon = h('span', { class: `file-icon cat-${cat}` }, icon(cat === 'other' ? 'file' : cat));
  const link = h('a', { class: 'file-link', href: `#/file/${encodeURIComponent(f.id)}` },
    media.thumb(f, typeIcon) || typeIcon,
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

export async function deleteFile(f) {
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
