// Small hand-drawn charts for the admin page: one inline SVG sparkline per
// series (a line over a light area, the latest value marked), scaled from 0
// to the series' highest value. No library: a polyline is all it takes.
//
// Each chart is an image to assistive technology, labelled with what it
// shows in words (the latest and highest values over the window).

const SVG = 'http://www.w3.org/2000/svg';

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

/**
 * Draws `values` (oldest first, one per `intervalMs`) into `svg`, replacing
 * what it held. `label` names the series ("Connections"); `format` turns a
 * value into text for the label.
 */
export function drawSparkline(svg, values, { label, intervalMs = 1000, format = String, width = 220, height = 44 }) {
  const pad = 3;
  const max = Math.max(1, ...values);
  const n = values.length;
  const step = n > 1 ? (width - 2 * pad) / (n - 1) : 0;
  const x = (i) => pad + i * step;
  const y = (v) => height - pad - (v / max) * (height - 2 * pad);
  const points = values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`);

  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('width', width);
  svg.setAttribute('height', height);
  svg.setAttribute('role', 'img');
  svg.setAttribute('preserveAspectRatio', 'none');
  const seconds = Math.round((n * intervalMs) / 1000);
  const latest = n ? values[n - 1] : 0;
  const highest = n ? Math.max(...values) : 0;
  const words = n
    ? `${label} over the last ${seconds} s: now ${format(latest)}, highest ${format(highest)}`
    : `${label}: no samples yet`;
  svg.setAttribute('aria-label', words);

  const children = [svgEl('title', {}), svgEl('line', { x1: 0, x2: width, y1: height - pad, y2: height - pad, class: 'axis' })];
  children[0].textContent = words;
  if (n > 0) {
    const area = [`${x(0).toFixed(1)},${height - pad}`, ...points, `${x(n - 1).toFixed(1)},${height - pad}`];
    children.push(svgEl('polygon', { points: area.join(' '), class: 'area' }));
    children.push(svgEl('polyline', { points: points.join(' '), class: 'line' }));
    children.push(svgEl('circle', { cx: x(n - 1).toFixed(1), cy: y(latest).toFixed(1), r: 2.5, class: 'dot' }));
  }
  svg.replaceChildren(...children);
  return svg;
}

/** A new, empty sparkline element. */
export function sparkline() {
  return svgEl('svg', { class: 'spark', focusable: 'false' });
}
