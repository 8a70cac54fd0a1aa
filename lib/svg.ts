// Minimal hand-written SVG line charts (no dependencies): panels with linear or log axes and polyline paths.
import { ArgumentError } from './errors';
import { show } from './guard';

export interface Series {
  /** CSS-safe id used as the path's class, e.g. 'cos-sum'. */
  id: string;
  label: string;
  color: string;
  x: ArrayLike<number>;
  y: ArrayLike<number>;
}

export interface Panel {
  title: string;
  xLabel: string;
  yLabel: string;
  xScale?: 'linear' | 'log';
  yScale?: 'linear' | 'log';
  series: Series[];
  /** Horizontal reference line (e.g. y = 0). */
  hline?: number;
  /** Fixed x range; default: the data's extent. */
  xDomain?: [number, number];
  /** A second, smaller title line (the settings the plot is for). */
  subtitle?: string;
  /** Labelled points (a circle and a text), e.g. the minimum of a curve. */
  markers?: { id: string; x: number; y: number; color: string; label: string }[];
}

export function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!);
}

function fmt(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  return a >= 1e4 || a < 1e-2 ? v.toExponential(1).replace('e+', 'e') : String(Number(v.toPrecision(3)));
}

function extent(vals: number[], log: boolean): [number, number] {
  const ok = vals.filter((v) => Number.isFinite(v) && (!log || v > 0));
  if (ok.length === 0) return log ? [1, 10] : [0, 1];
  let lo = Math.min(...ok);
  let hi = Math.max(...ok);
  if (lo === hi) {
    if (log) { lo /= 10; hi *= 10; } else { lo -= 1; hi += 1; }
  }
  return [lo, hi];
}

/** Renders panels stacked vertically into one standalone SVG document. */
export function renderPanels(panels: Panel[], width = 800, panelHeight = 300): string {
  const margin = { left: 80, right: 20, top: 40, bottom: 45 };
  const height = panels.length * panelHeight;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`);
  out.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  panels.forEach((p, k) => {
    const y0 = k * panelHeight;
    const pw = width - margin.left - margin.right;
    const ph = panelHeight - margin.top - margin.bottom;
    const xLog = p.xScale === 'log';
    const yLog = p.yScale === 'log';
    const allX: number[] = [];
    const allY: number[] = [];
    for (const s of p.series) {
      for (let i = 0; i < s.x.length; i++) { allX.push(s.x[i]); allY.push(s.y[i]); }
    }
    if (p.hline !== undefined) allY.push(p.hline);
    for (const m of p.markers ?? []) { allX.push(m.x); allY.push(m.y); }
    const [xa, xb] = p.xDomain ?? extent(allX, xLog);
    const [ya, yb] = extent(allY, yLog);
    const tx = (v: number) => margin.left + (xLog ? Math.log(v / xa) / Math.log(xb / xa) : (v - xa) / (xb - xa)) * pw;
    const ty = (v: number) => y0 + margin.top + ph - (yLog ? Math.log(v / ya) / Math.log(yb / ya) : (v - ya) / (yb - ya)) * ph;
    out.push(`<g class="panel" id="panel-${k}">`);
    out.push(`<text x="${width / 2}" y="${y0 + 18}" text-anchor="middle" font-size="13">${escapeXml(p.title)}</text>`);
    if (p.subtitle) out.push(`<text class="subtitle" x="${width / 2}" y="${y0 + 29}" text-anchor="middle" font-size="10" fill="#444">${escapeXml(p.subtitle)}</text>`);
    out.push(`<rect x="${margin.left}" y="${y0 + margin.top}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>`);
    // Ticks: decades on log axes, 5 even steps on linear ones.
    const ticks = (a: number, b: number, log: boolean): number[] => {
      if (log) {
        const t: number[] = [];
        for (let e = Math.ceil(Math.log10(a)); e <= Math.floor(Math.log10(b)); e++) t.push(Math.pow(10, e));
        const step = Math.max(1, Math.ceil(t.length / 8));
        return t.filter((_, i) => i % step === 0);
      }
      // 1/2/5 × 10^k steps, about five ticks.
      const raw = (b - a) / 5;
      const mag = Math.pow(10, Math.floor(Math.log10(raw)));
      const step = [1, 2, 5, 10].map((k) => k * mag).find((st) => st >= raw) ?? 10 * mag;
      const t: number[] = [];
      for (let v = Math.ceil(a / step) * step; v <= b + step * 1e-9; v += step) t.push(Math.abs(v) < step * 1e-9 ? 0 : v);
      return t;
    };
    for (const v of ticks(xa, xb, xLog)) {
      const x = tx(v).toFixed(1);
      out.push(`<line x1="${x}" y1="${y0 + margin.top + ph}" x2="${x}" y2="${y0 + margin.top + ph + 4}" stroke="#888"/>`);
      out.push(`<text x="${x}" y="${y0 + margin.top + ph + 16}" text-anchor="middle">${fmt(v)}</text>`);
    }
    for (const v of ticks(ya, yb, yLog)) {
      const y = ty(v).toFixed(1);
      out.push(`<line x1="${margin.left - 4}" y1="${y}" x2="${margin.left}" y2="${y}" stroke="#888"/>`);
      out.push(`<text x="${margin.left - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${fmt(v)}</text>`);
    }
    out.push(`<text x="${margin.left + pw / 2}" y="${y0 + panelHeight - 8}" text-anchor="middle">${escapeXml(p.xLabel)}</text>`);
    out.push(`<text transform="translate(14 ${y0 + margin.top + ph / 2}) rotate(-90)" text-anchor="middle">${escapeXml(p.yLabel)}</text>`);
    if (p.hline !== undefined && p.hline >= ya && p.hline <= yb) {
      const y = ty(p.hline).toFixed(1);
      out.push(`<line x1="${margin.left}" y1="${y}" x2="${margin.left + pw}" y2="${y}" stroke="#c00" stroke-dasharray="4 3"/>`);
    }
    p.series.forEach((s, j) => {
      const pts: string[] = [];
      for (let i = 0; i < s.x.length; i++) {
        const xv = s.x[i];
        const yv = s.y[i];
        if (!Number.isFinite(xv) || !Number.isFinite(yv) || (xLog && xv <= 0) || (yLog && yv <= 0)) continue;
        pts.push(`${pts.length === 0 ? 'M' : 'L'}${tx(xv).toFixed(2)} ${ty(yv).toFixed(2)}`);
      }
      out.push(`<path class="${escapeXml(s.id)}" d="${pts.join(' ')}" fill="none" stroke="${escapeXml(s.color)}" stroke-width="1.2"/>`);
      const ly = y0 + margin.top + 12 + j * 14;
      out.push(`<line x1="${margin.left + pw - 150}" y1="${ly}" x2="${margin.left + pw - 130}" y2="${ly}" stroke="${escapeXml(s.color)}" stroke-width="2"/>`);
      out.push(`<text x="${margin.left + pw - 125}" y="${ly}" dominant-baseline="middle">${escapeXml(s.label)}</text>`);
    });
    for (const m of p.markers ?? []) {
      if (!Number.isFinite(m.x) || !Number.isFinite(m.y) || (xLog && m.x <= 0) || (yLog && m.y <= 0)) continue;
      const cx = tx(m.x), cy = ty(m.y);
      const right = cx < margin.left + pw / 2;
      out.push(`<circle class="marker-${escapeXml(m.id)}" cx="${cx.toFixed(2)}" cy="${cy.toFixed(2)}" r="4" fill="none" stroke="${escapeXml(m.color)}" stroke-width="1.5"/>`);
      out.push(`<text class="marker-label" x="${(cx + (right ? 7 : -7)).toFixed(2)}" y="${(cy - 7).toFixed(2)}" text-anchor="${right ? 'start' : 'end'}" fill="${escapeXml(m.color)}">${escapeXml(m.label)}</text>`);
    }
    out.push('</g>');
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

export interface Heatmap {
  title: string;
  xLabel: string;
  yLabel: string;
  xTicks: string[];
  yTicks: string[];
  /** values[row][col] in [0, 1] (NaN: not measured); row 0 is drawn at the top. */
  values: number[][];
  /** Printed in each cell (e.g. percentages); default: the value as a percentage. */
  format?: (v: number) => string;
}

/** A grid of cells coloured red (0) -> yellow -> green (1), e.g. retrieval accuracy by length × depth. */
export function renderHeatmap(h: Heatmap, cell = 56): string {
  const op = 'renderHeatmap';
  if (!h || typeof h !== 'object') throw new ArgumentError(`${op}: expected { title, xLabel, yLabel, xTicks, yTicks, values }, got ${show(h)}`);
  for (const k of ['title', 'xLabel', 'yLabel'] as const)
    if (typeof h[k] !== 'string') throw new ArgumentError(`${op}: ${k} must be a string, got ${show(h[k])}`);
  if (!Array.isArray(h.values) || !h.values.every((r) => Array.isArray(r) && r.length === (h.values[0] as unknown[]).length && r.every((v) => typeof v === 'number')))
    throw new ArgumentError(`${op}: values must be rows of numbers, all of one length`);
  const cols0 = h.values.length ? h.values[0].length : 0;
  if (!Array.isArray(h.xTicks) || h.xTicks.length !== cols0 || !h.xTicks.every((x) => typeof x === 'string'))
    throw new ArgumentError(`${op}: xTicks must be ${cols0} strings (one per column)`);
  if (!Array.isArray(h.yTicks) || h.yTicks.length !== h.values.length || !h.yTicks.every((x) => typeof x === 'string'))
    throw new ArgumentError(`${op}: yTicks must be ${h.values.length} strings (one per row)`);
  if (h.format !== undefined && typeof h.format !== 'function') throw new ArgumentError(`${op}: format must be a function`);
  if (typeof cell !== 'number' || !Number.isFinite(cell) || cell < 8 || cell > 1000) throw new ArgumentError(`${op}: cell must be a number of pixels in [8, 1000]`);
  const rows = h.values.length, cols = rows ? h.values[0].length : 0;
  const m = { left: 90, top: 40, right: 20, bottom: 60 };
  const width = m.left + cols * cell + m.right, height = m.top + rows * cell + m.bottom;
  const fmtv = h.format ?? ((v: number) => `${Math.round(v * 100)}%`);
  const color = (v: number): string => {
    if (!Number.isFinite(v)) return '#ddd';
    const x = Math.max(0, Math.min(1, v));
    // red (215,48,39) -> yellow (254,224,139) -> green (26,152,80)
    const [a, b, t] = x < 0.5 ? [[215, 48, 39], [254, 224, 139], x * 2] : [[254, 224, 139], [26, 152, 80], x * 2 - 1];
    const c = (a as number[]).map((ai, i) => Math.round(ai + ((b as number[])[i] - ai) * (t as number)));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  };
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`);
  out.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  out.push(`<text x="${width / 2}" y="20" text-anchor="middle" font-size="13">${escapeXml(h.title)}</text>`);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const v = h.values[r][c];
      const x = m.left + c * cell, y = m.top + r * cell;
      out.push(`<rect class="cell" x="${x}" y="${y}" width="${cell}" height="${cell}" fill="${color(v)}" stroke="white"/>`);
      out.push(`<text x="${x + cell / 2}" y="${y + cell / 2}" text-anchor="middle" dominant-baseline="middle">${Number.isFinite(v) ? escapeXml(fmtv(v)) : '–'}</text>`);
    }
    out.push(`<text x="${m.left - 6}" y="${m.top + r * cell + cell / 2}" text-anchor="end" dominant-baseline="middle">${escapeXml(h.yTicks[r] ?? '')}</text>`);
  }
  for (let c = 0; c < cols; c++)
    out.push(`<text x="${m.left + c * cell + cell / 2}" y="${m.top + rows * cell + 16}" text-anchor="middle">${escapeXml(h.xTicks[c] ?? '')}</text>`);
  out.push(`<text x="${m.left + (cols * cell) / 2}" y="${height - 14}" text-anchor="middle">${escapeXml(h.xLabel)}</text>`);
  out.push(`<text transform="translate(16 ${m.top + (rows * cell) / 2}) rotate(-90)" text-anchor="middle">${escapeXml(h.yLabel)}</text>`);
  out.push('</svg>');
  return out.join('\n') + '\n';
}
