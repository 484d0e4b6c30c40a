/* tusserver web UI: the page of one file. Details, rename / move / tags / delete, a preview
 * (image, audio, video, the beginning of a text) and polling until the checks are done.
 */

import { h, icon, select } from './app-dom.js';
import { state, virusScan } from './app-state.js';
import { CATEGORY_LABELS, badge, categoryOfMime, fileCategory, formatBytes, formatDate, numFmt, sleep } from './app-format.js';
import { api } from './app-api.js';
import { toast, errorMessage, formDialog } from './app-ui.js';
import { go } from './app-router.js';
import { filesHash, contentUrl, deleteFile } from './app-files.js';
import * as media from './media.js';

const TEXT_PREVIEW_MAX = 64 * 1024;

function isTextual(mime) {
  return !!mime && (mime.startsWith('text/') || ['application/json', 'application/xml', 'application/x-ndjson'].includes(mime));
}

export async function filePage(v, r, ctx) {
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
      ...media.factRows(f),
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
  const src = media.previewUrl(f);
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
    return h('video', { class: 'preview-media', controls: true, preload: 'metadata', playsinline: true, src, poster: media.poster(f), 'aria-label': `Play ${f.name}` });
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
