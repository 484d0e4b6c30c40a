/* tusserver web UI: media (ES module). Thumbnails in the files list, the grid view, the
 * media facts of the details page and the URLs of previews (not counted as downloads).
 *
 * Imported by the files list (app-files.js) and the file page (app-file.js). Every value from
 * the server goes into the page as text or a DOM property, never as HTML.
 */

const GRID_KEY = 'tusserver.filesView';

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = String(value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

/** The URL of a file's WebP thumbnail (256 or 1024 px), or null when it has none. */
export function thumbnailUrl(f, size = 256) {
  if (!f || !f.thumbnail_url || !(f.thumbnail_sizes || []).includes(size)) return null;
  return `/api/v1/file/${encodeURIComponent(f.id)}/thumbnail?size=${size}`;
}

/** The bytes for the page's own viewer: a preview, not a download. */
export function previewUrl(f) {
  return `/api/v1/file/${encodeURIComponent(f.id)}/content?preview=1`;
}

/** A lazy-loaded thumbnail in the place of the type icon, or null (app.js keeps its icon). */
export function thumb(f, fallback) {
  const src = thumbnailUrl(f, 256);
  if (!src) return null;
  const img = el('img', {
    class: 'file-thumb', src, alt: '', loading: 'lazy', decoding: 'async', width: '34', height: '34',
  });
  if (fallback) img.addEventListener('error', () => img.replaceWith(fallback));
  return img;
}

function pad(n) {
  return String(n).padStart(2, '0');
}

export function formatDuration(seconds) {
  if (typeof seconds !== 'number' || !Number.isFinite(seconds)) return '—';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

/** [label, text] rows of the details page for the file's media facts. */
export function factRows(f) {
  const m = f && f.media;
  if (!m) return [];
  const rows = [];
  if (m.width && m.height) rows.push(['Dimensions', `${m.width} × ${m.height} px`]);
  if (m.kind === 'image') {
    rows.push(['Format', String(m.format || '').toUpperCase() || '—']);
    if (m.orientation && m.orientation !== 1) rows.push(['EXIF orientation', String(m.orientation)]);
  } else {
    rows.push(['Duration', formatDuration(m.duration)]);
    rows.push(['Container', m.container || '—']);
    if (m.kind === 'video') {
      rows.push(['Video codec', m.video_codec || '—']);
      if (m.frame_rate) rows.push(['Frame rate', `${m.frame_rate} fps`]);
    }
    rows.push(['Audio codec', m.audio_codec || 'none']);
    if (m.sample_rate) rows.push(['Sample rate', `${m.sample_rate} Hz`]);
    if (m.channels) rows.push(['Channels', String(m.channels)]);
  }
  if (f.location_stripped) rows.push(['Location', 'removed before storing']);
  return rows;
}

/** The poster of a video player (the 1024 px thumbnail), or null. */
export function poster(f) {
  return thumbnailUrl(f, 1024);
}

function savedView() {
  try {
    return localStorage.getItem(GRID_KEY) === 'grid' ? 'grid' : 'list';
  } catch (_) {
    return 'list';
  }
}

/** A List / Grid switch for the files list; ``target`` gets the class ``files-grid``. */
export function viewToggle(target) {
  const wrap = el('div', { class: 'view-toggle', role: 'group', 'aria-label': 'View' });
  const list = el('button', { type: 'button', class: 'btn btn-sm', text: 'List' });
  const grid = el('button', { type: 'button', class: 'btn btn-sm', text: 'Grid' });
  const apply = (view) => {
    target.classList.toggle('files-grid', view === 'grid');
    list.setAttribute('aria-pressed', String(view === 'list'));
    grid.setAttribute('aria-pressed', String(view === 'grid'));
    try { localStorage.setItem(GRID_KEY, view); } catch (_) { /* private mode */ }
  };
  list.addEventListener('click', () => apply('list'));
  grid.addEventListener('click', () => apply('grid'));
  apply(savedView());
  wrap.append(list, grid);
  return wrap;
}
