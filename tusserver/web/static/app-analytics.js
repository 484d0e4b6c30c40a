/* tusserver web UI: the analytics page. Totals, charts (the vendored Chart.js bundle,
 * window.Chart; tables when it is missing) and the most downloaded files.
 */

import { h, field, select } from './app-dom.js';
import { state } from './app-state.js';
import { dayFmt, formatBytes, hourFmt, isoDay, numFmt } from './app-format.js';
import { api } from './app-api.js';
import { errorMessage, pageHeader } from './app-ui.js';
import { go } from './app-router.js';

const COLORS = {
  blue: '#2f54eb', green: '#15803d', red: '#c62828', amber: '#b45309', purple: '#7c3aed', teal: '#0f766e', slate: '#64748b',
};
const PALETTE = [COLORS.blue, COLORS.teal, COLORS.purple, COLORS.amber, COLORS.green, COLORS.red, COLORS.slate, '#db2777', '#0369a1', '#65a30d'];

export async function analyticsPage(v, r, ctx) {
  const p = Object.fromEntries(r.query.entries());
  const days = ['7', '30', '90', 'custom'].includes(p.range) ? p.range : '30';
  const isAdmin = state.user && state.user.role === 'admin';
  const scopeVal = isAdmin ? (p.scope || 'service') : 'me';

  const rangeSel = select([['7', 'Last 7 days'], ['30', 'Last 30 days'], ['90', 'Last 90 days'], ['custom', 'Custom range']], days);
  const gran = select([['day', 'Per day'], ['hour', 'Per hour']], p.granularity === 'hour' ? 'hour' : 'day');
  const from = h('input', { type: 'date', value: p.from || '' });
  const to = h('input', { type: 'date', value: p.to || '' });
  const customBox = h('div', { class: 'custom-range', hidden: days !== 'custom' }, field('From', from), field('To', to));
  const scopeSel = isAdmin ? select([['service', 'Whole service'], ['me', 'Only me'], ['user', 'One user…']], scopeVal) : null;
  const userId = isAdmin ? h('input', { type: 'text', value: p.user || '', placeholder: 'user id', autocomplete: 'off' }) : null;
  const userBox = isAdmin ? h('div', { hidden: scopeVal !== 'user' }, field('User ID', userId)) : null;
  const form = h('form', { class: 'card analytics-controls', 'aria-label': 'Analytics period' },
    field('Period', rangeSel), customBox, field('Detail', gran),
    isAdmin ? field('Scope', scopeSel) : null, userBox,
    h('div', { class: 'field field-button' }, h('button', { type: 'submit', class: 'btn btn-primary', text: 'Show' })));
  rangeSel.addEventListener('change', () => { customBox.hidden = rangeSel.value !== 'custom'; if (rangeSel.value !== 'custom') form.requestSubmit(); });
  gran.addEventListener('change', () => form.requestSubmit());
  if (scopeSel) scopeSel.addEventListener('change', () => { userBox.hidden = scopeSel.value !== 'user'; if (scopeSel.value !== 'user') form.requestSubmit(); });
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const qs = new URLSearchParams();
    if (rangeSel.value !== '30') qs.set('range', rangeSel.value);
    if (rangeSel.value === 'custom') { if (from.value) qs.set('from', from.value); if (to.value) qs.set('to', to.value); }
    if (gran.value === 'hour') qs.set('granularity', 'hour');
    if (scopeSel && scopeSel.value !== 'service') qs.set('scope', scopeSel.value);
    if (scopeSel && scopeSel.value === 'user' && userId.value.trim()) qs.set('user', userId.value.trim());
    const s = qs.toString();
    go(s ? `#/analytics?${s}` : '#/analytics');
  });

  // query
  const now = new Date();
  const query = { granularity: gran.value };
  if (days === 'custom') {
    if (p.from) query.from = p.from;
    if (p.to) query.to = isoDay(new Date(new Date(`${p.to}T00:00:00`).getTime() + 86400000));
  } else {
    const start = new Date(now.getTime() - (Number(days) - 1) * 86400000);
    query.from = gran.value === 'hour' ? new Date(now.getTime() - Number(days) * 86400000).toISOString() : isoDay(start);
    query.to = new Date(now.getTime() + 3600000).toISOString();
  }
  if (isAdmin && scopeVal === 'me') query.user = state.user.id;
  if (isAdmin && scopeVal === 'user' && p.user) query.user = p.user;

  const scopeText = isAdmin ? (scopeVal === 'service' ? 'Whole service' : scopeVal === 'me' ? 'Your files' : `User ${p.user || '?'}`) : 'Your files';
  v.replaceChildren(pageHeader('Analytics', `${scopeText} · uploads, downloads and rejections`), form,
    h('p', { class: 'loading', role: 'status', text: 'Loading numbers…' }));

  let data;
  try {
    data = await api('/api/v1/analytics', { query });
  } catch (e) {
    if (!ctx.alive()) return;
    v.replaceChildren(pageHeader('Analytics', scopeText), form,
      h('div', { class: 'callout callout-error', role: 'alert' },
        h('strong', { text: 'The numbers could not be loaded.' }), h('p', { text: errorMessage(e) })));
    return;
  }
  if (!ctx.alive()) return;
  const t = data.totals || {};
  const count = (k) => (t[k] ? t[k].count : 0);
  const bytes = (k) => (t[k] ? t[k].bytes : 0);
  const kpis = [
    ['upload.started', 'Uploads started', numFmt.format(count('upload.started')), null],
    ['upload.finished', 'Uploads finished', numFmt.format(count('upload.finished')), formatBytes(data.bytes_in ?? bytes('upload.finished'))],
    ['file.committed', 'Files accepted', numFmt.format(count('file.committed')), formatBytes(bytes('file.committed'))],
    ['file.rejected', 'Files rejected', numFmt.format(count('file.rejected')), null],
    ['file.downloaded', 'Downloads', numFmt.format(count('file.downloaded')), formatBytes(data.bytes_out ?? bytes('file.downloaded'))],
    ['file.deleted', 'Files deleted', numFmt.format(count('file.deleted')), null],
  ];
  const kpiGrid = h('ul', { class: 'kpis', 'aria-label': 'Totals' }, kpis.map(([key, label, value, sub]) => h('li', { class: 'kpi', dataset: { kpi: key } },
    h('span', { class: 'kpi-label', text: label }),
    h('span', { class: 'kpi-value', text: value }),
    sub ? h('span', { class: 'kpi-sub', text: sub }) : null)));

  const series = data.series || [];
  const labels = series.map((b) => {
    const d = new Date(b.bucket.length === 10 ? `${b.bucket}T00:00:00` : b.bucket);
    return Number.isNaN(d.getTime()) ? b.bucket : (data.granularity === 'hour' ? hourFmt.format(d) : dayFmt.format(d));
  });
  const col = (kind, what) => series.map((b) => (b[kind] ? b[kind][what] : 0));
  const charts = [];
  const hasChart = typeof window.Chart === 'function';

  const chartCard = (id, title, desc, config, table, { wide = false, empty = false } = {}) => {
    const body = [];
    if (empty) body.push(h('p', { class: 'muted chart-empty', text: 'No data for this period.' }));
    else if (hasChart) {
      const canvas = h('canvas', { id, role: 'img', 'aria-label': `${title}: ${desc}` });
      body.push(h('div', { class: 'chart-box' }, canvas));
      charts.push([canvas, config]);
    } else {
      body.push(h('p', { class: 'muted', text: 'Charts are unavailable (the chart library did not load); the numbers are below.' }));
    }
    if (!empty && table) body.push(h('details', { class: 'chart-data', open: !hasChart }, h('summary', { text: 'Show as table' }), table));
    return h('section', { class: `card chart-card${wide ? ' chart-wide' : ''}`, 'aria-labelledby': `${id}-title` },
      h('h2', { id: `${id}-title`, text: title }), h('p', { class: 'muted chart-desc', text: desc }), body);
  };
  const dataTable = (headers, rows) => h('div', { class: 'table-wrap' }, h('table', { class: 'table table-compact' },
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col', text: x })))),
    h('tbody', {}, rows.map((row) => h('tr', {}, row.map((c, i) => (i === 0 ? h('th', { scope: 'row', text: c }) : h('td', { text: c }))))))));
  const seriesRows = (cols) => series.map((b, i) => [labels[i], ...cols.map((fn) => fn(b))]).filter((row) => row.slice(1).some((x) => x && x !== '0' && x !== '0 B'));
  const bytesAxis = { ticks: { callback: (val) => formatBytes(val) }, beginAtZero: true };
  const countAxis = { beginAtZero: true, ticks: { precision: 0 } };
  const anyIn = (kinds) => series.some((b) => kinds.some((k) => b[k] && (b[k].count || b[k].bytes)));

  const uploadsCfg = {
    type: 'bar',
    data: {
      labels,
      datasets: [
        { label: 'Finished', data: col('upload.finished', 'count'), backgroundColor: COLORS.blue, maxBarThickness: 18, borderRadius: 3 },
        { label: 'Accepted', data: col('file.committed', 'count'), backgroundColor: COLORS.green, maxBarThickness: 18, borderRadius: 3 },
        { label: 'Rejected', data: col('file.rejected', 'count'), backgroundColor: COLORS.red, maxBarThickness: 18, borderRadius: 3 },
      ],
    },
    options: { scales: { y: countAxis } },
  };
  const bytesCfg = {
    type: 'line',
    data: {
      labels,
      datasets: [
        { label: 'Uploaded', data: col('upload.finished', 'bytes'), borderColor: COLORS.blue, backgroundColor: 'rgba(47,84,235,.12)', fill: true, tension: 0.25, pointRadius: 0, pointHoverRadius: 4, borderWidth: 2 },
        { label: 'Downloaded', data: col('file.downloaded', 'bytes'), borderColor: COLORS.teal, backgroundColor: 'rgba(15,118,110,.10)', fill: true, tension: 0.25, pointRadius: 0, pointHoverRadius: 4, borderWidth: 2 },
      ],
    },
    options: { scales: { y: bytesAxis }, plugins: { tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${formatBytes(c.parsed.y)}` } } } },
  };
  const dlCfg = {
    type: 'bar',
    data: { labels, datasets: [{ label: 'Downloads', data: col('file.downloaded', 'count'), backgroundColor: COLORS.teal, maxBarThickness: 24, borderRadius: 3 }] },
    options: { scales: { y: countAxis }, plugins: { legend: { display: false } } },
  };
  const types = data.top_types || [];
  const typesCfg = {
    type: 'bar',
    data: { labels: types.map((x) => x.key || 'unknown'), datasets: [{ label: 'Files', data: types.map((x) => x.count), backgroundColor: types.map((_, i) => PALETTE[i % PALETTE.length]), maxBarThickness: 28, borderRadius: 3 }] },
    options: { indexAxis: 'y', scales: { x: countAxis }, plugins: { legend: { display: false } } },
  };
  const reasons = data.rejects_by_reason || [];
  const short = (s) => (s.length > 42 ? `${s.slice(0, 40)}…` : s);
  const reasonsCfg = {
    type: 'bar',
    data: { labels: reasons.map((x) => short(x.key || 'unknown')), datasets: [{ label: 'Rejected files', data: reasons.map((x) => x.count), backgroundColor: COLORS.red, maxBarThickness: 28, borderRadius: 3 }] },
    options: { indexAxis: 'y', scales: { x: countAxis }, plugins: { legend: { display: false } } },
  };

  const topFiles = data.top_files || [];
  const topTable = h('tbody');
  const topCard = h('section', { class: 'card chart-card', 'aria-labelledby': 'top-files-title' },
    h('h2', { id: 'top-files-title', text: 'Most downloaded files' }),
    topFiles.length
      ? h('div', { class: 'table-wrap' }, h('table', { class: 'table table-compact' },
        h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'File' }), h('th', { scope: 'col', text: 'Downloads' }), h('th', { scope: 'col', text: 'Bytes' }))),
        topTable))
      : h('p', { class: 'muted chart-empty', text: 'No downloads in this period.' }));
  for (const tf of topFiles) {
    const nameCell = h('td', {}, h('span', { class: 'muted', text: tf.key }));
    topTable.append(h('tr', {}, nameCell, h('td', { text: numFmt.format(tf.count) }), h('td', { text: formatBytes(tf.bytes) })));
    api(`/api/v1/file/${encodeURIComponent(tf.key)}`, { recover: false }).then((ff) => {
      nameCell.replaceChildren(h('a', { href: `#/file/${encodeURIComponent(ff.id)}`, text: ff.name }));
    }).catch(() => {
      nameCell.replaceChildren(h('span', { class: 'muted', text: `${tf.key.slice(0, 12)}… (deleted or not yours)` }));
    });
  }

  const unit = data.granularity === 'hour' ? 'hour' : 'day';
  v.replaceChildren(
    pageHeader('Analytics', `${scopeText} · ${labels[0] || ''} – ${labels[labels.length - 1] || ''}`),
    form, kpiGrid,
    h('div', { class: 'chart-grid' },
      chartCard('chart-uploads', 'Uploads', `Finished uploads, accepted and rejected files per ${unit}`, uploadsCfg,
        dataTable(['Period', 'Finished', 'Accepted', 'Rejected'], seriesRows([(b) => String(b['upload.finished'].count), (b) => String(b['file.committed'].count), (b) => String(b['file.rejected'].count)])),
        { wide: true, empty: !anyIn(['upload.finished', 'file.committed', 'file.rejected']) }),
      chartCard('chart-bytes', 'Data transferred', `Bytes uploaded and downloaded per ${unit}`, bytesCfg,
        dataTable(['Period', 'Uploaded', 'Downloaded'], seriesRows([(b) => formatBytes(b['upload.finished'].bytes), (b) => formatBytes(b['file.downloaded'].bytes)])),
        { empty: !anyIn(['upload.finished', 'file.downloaded']) }),
      chartCard('chart-downloads', 'Downloads', `Downloads per ${unit}`, dlCfg,
        dataTable(['Period', 'Downloads'], seriesRows([(b) => String(b['file.downloaded'].count)])),
        { empty: !anyIn(['file.downloaded']) }),
      chartCard('chart-types', 'Top file types', 'Accepted files by detected type', typesCfg,
        dataTable(['Type', 'Files', 'Bytes'], types.map((x) => [x.key || 'unknown', String(x.count), formatBytes(x.bytes)])),
        { empty: !types.length }),
      chartCard('chart-reasons', 'Rejections by reason', 'Why files were refused', reasonsCfg,
        dataTable(['Reason', 'Files'], reasons.map((x) => [x.key || 'unknown', String(x.count)])),
        { empty: !reasons.length }),
      topCard));

  if (hasChart) {
    const Chart = window.Chart;
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    Chart.defaults.color = '#475069';
    const reduce = window.matchMedia && window.matchMedia('(prefers-reduced-motion: reduce)').matches;
    const made = charts.map(([canvas, cfg]) => new Chart(canvas, {
      ...cfg,
      options: {
        responsive: true, maintainAspectRatio: false, animation: reduce ? false : { duration: 300 },
        ...cfg.options,
        plugins: { legend: { position: 'bottom', labels: { boxWidth: 12 } }, ...(cfg.options.plugins || {}) },
      },
    }));
    ctx.onCleanup(() => made.forEach((c) => c.destroy()));
  }
}
