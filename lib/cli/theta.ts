// `megabeam theta`: context-length analysis of a RoPE configuration (table, JSON, optional SVG plot).
import { promises as fs } from 'fs';
import type { Command } from '../cli';
import { ArgumentError } from '../errors';
import { renderPanels } from '../svg';
import {
  angleErrorBound, baseLowerBound, baseLowerBoundFit, cosineSumEnvelope, cosineSumScan, criticalDim,
  frequencies, fromHFConfig, RopeOptions, RopeType, ropeTypes, wavelength,
} from '../theta';
import { EXACT_MODE_ANGLE_ERROR, EXACT_MODE_ANGLE_ERROR_MEASURED } from '../theta/precision';
import { CliIO, FlagValues } from './args';
import { JSON_FLAG, checkOutputPath } from './common';

export type { CliIO } from './args';

export const command: Command = {
  usage: 'megabeam theta --context N --head-dim D [options]',
  description: `Context-length analysis of a RoPE configuration: base lower bounds (Men et al. 2024), the
long-term-decay criterion Σcos(m·θ) ≥ 0, critical dim, wavelengths, attention factor and the angle error
of fp32 / bf16 angles. --hf-config reads base, head dim and scaling from a Hugging Face config.json.`,
  flags: {
    context: { type: 'size', min: 1, max: 2 ** 24, help: 'context length to analyse (positions 0..N)' },
    'head-dim': { type: 'int', min: 2, max: 65536, metavar: 'D', help: 'attention head dim (even)' },
    base: { type: 'number', metavar: 'B', help: 'RoPE theta', default: 'the scanned lower bound for N' },
    'rotary-dim': { type: 'int', min: 2, max: 65536, metavar: 'R', help: 'rotated dims', default: 'head dim' },
    scaling: { type: 'choice', choices: ropeTypes, help: 'scaling type', default: 'default' },
    factor: { type: 'number', metavar: 'S', help: 'scaling factor' },
    'original-max': { type: 'size', min: 1, help: 'original (pre-extension) max positions; also the training length of the critical-dim row' },
    'beta-fast': { type: 'number', help: 'yarn ramp', default: '32' },
    'beta-slow': { type: 'number', help: 'yarn ramp', default: '1' },
    'low-freq-factor': { type: 'number', help: 'llama3 band' },
    'high-freq-factor': { type: 'number', help: 'llama3 band' },
    'hf-config': { type: 'string', metavar: 'FILE', help: 'read base/head dim/scaling from a Hugging Face config.json' },
    json: JSON_FLAG,
    plot: { type: 'string', metavar: 'FILE.svg', help: 'write Σcos(m·θ) over [0, N] and the per-dim angle error (fp32, bf16)' },
  },
  run: (opts, io) => run(toFlags(opts), io),
};

/** theta through the shared runner (the entry point tests and older callers use). */
export async function thetaCli(argv: string[], io: CliIO): Promise<number> {
  const { runCommand } = await import('../cli');
  return runCommand(command, 'theta', argv, io);
}

class UsageError extends ArgumentError {}

interface Flags {
  context?: number;
  headDim?: number;
  base?: number;
  rotaryDim?: number;
  scaling?: RopeType;
  factor?: number;
  originalMax?: number;
  betaFast?: number;
  betaSlow?: number;
  lowFreqFactor?: number;
  highFreqFactor?: number;
  hfConfig?: string;
  json: boolean;
  plot?: string;
}

function toFlags(o: FlagValues): Flags {
  return {
    context: o.context as number | undefined, headDim: o['head-dim'] as number | undefined, base: o.base as number | undefined,
    rotaryDim: o['rotary-dim'] as number | undefined, scaling: o.scaling as RopeType | undefined, factor: o.factor as number | undefined,
    originalMax: o['original-max'] as number | undefined, betaFast: o['beta-fast'] as number | undefined,
    betaSlow: o['beta-slow'] as number | undefined, lowFreqFactor: o['low-freq-factor'] as number | undefined,
    highFreqFactor: o['high-freq-factor'] as number | undefined, hfConfig: o['hf-config'] as string | undefined,
    json: o.json === true, plot: o.plot as string | undefined,
  };
}

/** A number for the table: short, exponent form for large/small magnitudes. */
function n(v: number, digits = 4): string {
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e7) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a >= 1e6 || a < 1e-3) ? v.toExponential(digits - 1) : String(Number(v.toPrecision(digits)));
}

/** An angle error for the table: a bound at or above π says nothing more (an angle is only known mod 2π). */
function angle(v: number): string {
  if (v >= Math.PI) return `≥ π: the angle is noise (bound ${n(v, 3)} rad, capped; any error ≥ π rad loses the position)`;
  return `${n(v, 3)} rad (max over dims, bound)`;
}

async function run(f: Flags, io: CliIO): Promise<number> {
  if (f.plot !== undefined) checkOutputPath(f.plot, false);
  let opts: RopeOptions;
  let context = f.context;
  let baseGiven: boolean;
  if (f.hfConfig !== undefined) {
    let cfg: unknown;
    try {
      cfg = JSON.parse(await fs.readFile(f.hfConfig, 'utf8'));
    } catch (e) {
      throw new UsageError(`cannot read --hf-config ${f.hfConfig}: ${(e as Error).message}`);
    }
    const conflicting = (['headDim', 'base', 'rotaryDim', 'scaling', 'factor', 'originalMax', 'betaFast', 'betaSlow',
      'lowFreqFactor', 'highFreqFactor'] as const).filter((k) => f[k] !== undefined);
    if (conflicting.length) throw new UsageError(`--hf-config cannot be combined with ${conflicting.map(flagName).join(', ')}`);
    context ??= (cfg as { max_position_embeddings?: number }).max_position_embeddings;
    if (context === undefined) throw new UsageError('--context is required (the config has no max_position_embeddings)');
    opts = fromHFConfig(cfg, { seqLen: context }).options;
    baseGiven = true;
  } else {
    if (context === undefined) throw new UsageError('--context is required');
    if (f.headDim === undefined) throw new UsageError('--head-dim is required');
    const type = f.scaling ?? 'default';
    if (type === 'longrope') throw new UsageError('--scaling longrope needs per-dim factor lists: use --hf-config');
    opts = { type, headDim: f.headDim, base: f.base ?? NaN };
    if (f.rotaryDim !== undefined) opts.rotaryDim = f.rotaryDim;
    const setIf = <K extends keyof RopeOptions>(k: K, v: RopeOptions[K] | undefined, flag: string, types: RopeType[]) => {
      if (v === undefined) return;
      if (!types.includes(type)) throw new UsageError(`${flag} does not apply to --scaling ${type}`);
      opts[k] = v;
    };
    setIf('factor', f.factor, '--factor', ['linear', 'ntk', 'dynamic', 'yarn', 'llama3']);
    // For the other types --original-max is only the training length T of the critical-dim row.
    if (f.originalMax !== undefined && (type === 'dynamic' || type === 'yarn' || type === 'llama3')) {
      opts.originalMaxPositionEmbeddings = f.originalMax;
    }
    setIf('betaFast', f.betaFast, '--beta-fast', ['yarn']);
    setIf('betaSlow', f.betaSlow, '--beta-slow', ['yarn']);
    setIf('lowFreqFactor', f.lowFreqFactor, '--low-freq-factor', ['llama3']);
    setIf('highFreqFactor', f.highFreqFactor, '--high-freq-factor', ['llama3']);
    if (type === 'dynamic' || type === 'yarn') {
      opts.maxPositionEmbeddings = context;
      if (type === 'dynamic') opts.seqLen = context;
    }
    baseGiven = f.base !== undefined;
  }

  // The bounds are stated for plain RoPE over the rotated dims, so use the rotary dim as d.
  const d = opts.rotaryDim ?? (opts.partialRotaryFactor !== undefined ? Math.floor(opts.headDim * opts.partialRotaryFactor) : opts.headDim);
  if (!Number.isInteger(d) || d < 2 || d % 2 !== 0) throw new UsageError(`rotary dim must be a positive even integer, got ${d}`);
  const boundScan = baseLowerBound(context, { headDim: d });
  const boundFit = baseLowerBoundFit(context);
  if (!baseGiven) opts.base = boundScan;

  const { invFreq, attentionFactor } = frequencies(opts);
  const wav = wavelength(invFreq);
  const longer = wav.filter((w) => w > context!).length;
  const crit = cosineSumScan(invFreq, context);
  const trainLength = f.originalMax ?? opts.originalMaxPositionEmbeddings ?? context;
  const cdim = criticalDim({ headDim: d, base: opts.base, trainLength });
  const last = context - 1;
  const e32 = angleErrorBound(last, invFreq, 'fp32');
  const e16 = angleErrorBound(last, invFreq, 'bf16');
  const max = (a: Float64Array) => a.reduce((m, v) => Math.max(m, v), 0);

  const report = {
    context,
    headDim: opts.headDim,
    rotaryDim: d,
    scaling: opts.type,
    base: opts.base,
    baseGiven,
    baseLowerBoundScan: boundScan,
    baseLowerBoundFit: boundFit,
    baseMeetsScanBound: opts.base >= boundScan,
    decayCriterion: { holds: crit.ok, min: crit.min, argMin: crit.argMin },
    criticalDim: cdim,
    criticalDimTrainLength: trainLength,
    wavelength: { min: Math.min(...wav), max: Math.max(...wav), dimsLongerThanContext: longer, dims: wav.length },
    attentionFactor,
    // Raw bounds (rad) and the same capped at π, where an angle mod 2π carries no information any more.
    angleError: {
      position: last, fp32Max: max(e32), bf16Max: max(e16), fp32MaxCapped: Math.min(max(e32), Math.PI),
      bf16MaxCapped: Math.min(max(e16), Math.PI), exactModeMax: EXACT_MODE_ANGLE_ERROR, exactModeMeasured: EXACT_MODE_ANGLE_ERROR_MEASURED,
    },
    options: opts,
  };

  if (f.json) io.json!(report);
  else {
    const rows: [string, string][] = [
      ['scaling', `${opts.type}${opts.factor !== undefined ? ` (factor ${n(opts.factor)})` : ''}`],
      ['base (theta)', `${n(opts.base)}${baseGiven ? '' : '  (not given: using the scan bound)'}`],
      ['base lower bound, scan', `${n(boundScan)}  (Men et al. 2024 criterion, grid 1%, refined to 1e-5)`],
      ['base lower bound, fit', `${n(boundFit)}  (0.0424·L^1.628)`],
      ['base ≥ scan lower bound', opts.base >= boundScan ? 'yes' : 'no'],
      ['Σcos(m·θ) ≥ 0 on [0, L]', `${crit.ok ? 'yes' : 'no'}  (min ${n(crit.min)} at m = ${crit.argMin}, actual θ)`],
      ['critical dim', `${cdim} of ${d}  (Liu et al. 2023, T = ${trainLength})`],
      ['wavelength min / max', `${n(Math.min(...wav))} / ${n(Math.max(...wav))}`],
      ['dims with wavelength > L', `${longer} of ${wav.length}`],
      ['attention factor', n(attentionFactor, 6)],
      [`angle error @ m=${last}, fp32`, angle(max(e32))],
      [`angle error @ m=${last}, bf16`, angle(max(e16))],
      ['angle error, megabeam exact', `≤ ${EXACT_MODE_ANGLE_ERROR} rad (measured ≤ ${EXACT_MODE_ANGLE_ERROR_MEASURED} at any int32 position, docs/rope.md)`],
    ];
    const w = Math.max(...rows.map((r) => r[0].length));
    io.out(`megabeam theta — context ${context}, head dim ${opts.headDim}, rotary dim ${d}`);
    for (const [k, v] of rows) io.out(`  ${k.padEnd(w)}  ${v}`);
  }

  if (f.plot !== undefined) {
    const env = cosineSumEnvelope(invFreq, context, 800);
    const xs: number[] = [];
    const ys: number[] = [];
    // Zig-zag through each bucket's min and max so narrow dips below zero stay visible.
    for (let k = 0; k < env.m.length; k++) {
      xs.push(env.m[k], env.m[k]);
      ys.push(env.min[k], env.max[k]);
    }
    const dims = Array.from(invFreq, (_, i) => i);
    const setting = `base ${n(opts.base)}, head dim ${opts.headDim}${d !== opts.headDim ? ` (rotary ${d})` : ''}, context ${context}, ${opts.type}`;
    const svg = renderPanels([
      {
        title: `Σ cos(m·θ_i) over m ∈ [0, ${context}] (per-bucket min/max)`,
        subtitle: setting,
        xLabel: 'relative position m', yLabel: 'Σ cos(m·θ_i)', hline: 0, xDomain: [0, context],
        series: [{ id: 'cos-sum', label: 'Σ cos(m·θ)', color: '#1f5fbf', x: xs, y: ys }],
        // The exact minimum from the full scan: where the decay criterion fails, if it does.
        markers: crit.min < 0
          ? [{ id: 'dip', x: crit.argMin, y: crit.min, color: '#c00', label: `min ${n(crit.min)} at m = ${crit.argMin}: below 0, criterion fails` }]
          : [{ id: 'min', x: crit.argMin, y: crit.min, color: '#1f9f3f', label: `min ${n(crit.min)} at m = ${crit.argMin} (≥ 0)` }],
      },
      {
        title: `angle error bound at m = ${last} per dimension`,
        subtitle: `${setting}; errors ≥ π rad mean the angle is noise`,
        xLabel: 'dimension pair i', yLabel: 'rad', yScale: 'log',
        series: [
          { id: 'angle-error-fp32', label: 'fp32', color: '#1f9f3f', x: dims, y: e32 },
          { id: 'angle-error-bf16', label: 'bf16', color: '#cf3f1f', x: dims, y: e16 },
        ],
      },
    ]);
    await fs.writeFile(f.plot, svg);
    io.out(`  plot written to ${f.plot}`);
  }
  return 0;
}

function flagName(k: string): string {
  return '--' + (k === 'scaling' ? 'scaling' : k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()));
}
