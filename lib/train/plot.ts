// `megabeam plot log.jsonl --out loss.svg`: training curves from the JSONL log that train() writes
// (one JSON object per step: { step, loss, lr, tokensPerSecond, ... }; other lines are ignored).
import { ArgumentError } from '../errors';
import { show } from '../guard';
import { Panel, renderPanels } from '../svg';

export interface LogRecord { step: number; loss?: number; lr?: number; tokensPerSecond?: number; gradNorm?: number; evalLoss?: number }

export function parseLog(text: string): LogRecord[] {
  if (typeof text !== 'string') throw new ArgumentError(`parseLog: expected the log's text (a string), got ${show(text)}`);
  const out: LogRecord[] = [];
  for (const line of text.split('\n')) {
    const s = line.trim();
    if (!s.startsWith('{')) continue;
    let r: unknown;
    try { r = JSON.parse(s); } catch { continue; }
    if (r && typeof r === 'object' && typeof (r as LogRecord).step === 'number') out.push(r as LogRecord);
  }
  return out;
}

/** An SVG with loss (and eval loss), learning rate, tokens/s and gradient norm against the step. */
export function plotLog(text: string, title = 'training'): string {
  if (typeof title !== 'string') throw new ArgumentError(`plot: title must be a string, got ${show(title)}`);
  const recs = parseLog(text);
  if (recs.length === 0) throw new ArgumentError('plot: the log holds no step records ({"step": …} lines)');
  const col = (k: keyof LogRecord) => {
    const r = recs.filter((x) => typeof x[k] === 'number' && Number.isFinite(x[k] as number));
    return { x: r.map((x) => x.step), y: r.map((x) => x[k] as number) };
  };
  const panels: Panel[] = [];
  const loss = col('loss'), ev = col('evalLoss');
  panels.push({
    title: `${title}: loss`, xLabel: 'step', yLabel: 'loss (nats/token)',
    series: [{ id: 'loss', label: 'train loss', color: '#1f77b4', ...loss },
      ...(ev.x.length ? [{ id: 'eval-loss', label: 'eval loss', color: '#d62728', ...ev }] : [])],
  });
  for (const [k, label, color] of [['lr', 'learning rate', '#2ca02c'], ['tokensPerSecond', 'tokens/s', '#9467bd'],
    ['gradNorm', 'gradient norm', '#8c564b']] as const) {
    const c = col(k);
    if (c.x.length) panels.push({ title: `${title}: ${label}`, xLabel: 'step', yLabel: label, series: [{ id: k, label, color, ...c }] });
  }
  return renderPanels(panels);
}
