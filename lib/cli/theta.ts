// `megabeam theta`: context-length analysis of a RoPE configuration (table, JSON, optional SVG plot).
import { promises as fs } from 'fs';
import { MegabeamError } from '../errors';
import { renderPanels } from '../svg';
import {
  angleErrorBound, baseLowerBound, baseLowerBoundFit, cosineSumEnvelope, cosineSumScan, criticalDim,
  frequencies, fromHFConfig, RopeOptions, RopeType, ropeTypes, wavelength,
} from '../theta';

export interface CliIO {
  out: (s: string) => void;
  err: (s: string) => void;
}

const USAGE = `usage: megabeam theta --context N --head-dim D [options]

  --context N            context length to analyse (positions 0..N)
  --head-dim D           attention head dim (even)
  --base B               RoPE theta (default: the scanned lower bound for N)
  --rotary-dim R         rotated dims (default: head dim)
  --scaling TYPE         ${ropeTypes.join('|')} (default: default)
  --factor S             scaling factor
  --original-max N       original (pre-extension) max positions; also the training length for critical dim
  --beta-fast X, --beta-slow X                 yarn ramp (default 32, 1)
  --low-freq-factor X, --high-freq-factor X    llama3 bands
  --hf-config FILE       read base/head dim/scaling from a Hugging Face config.json
  --json                 print JSON instead of a table
  --plot FILE.svg        write Σcos(m·θ) over [0, N] and per-dim angle error (fp32, bf16)
  --help                 this text
`;

class UsageError extends Error {}

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
  help: boolean;
}

const numericFlags: Record<string, keyof Flags> = {
  '--context': 'context', '--head-dim': 'headDim', '--base': 'base', '--rotary-dim': 'rotaryDim',
  '--factor': 'factor', '--original-max': 'originalMax', '--beta-fast': 'betaFast', '--beta-slow': 'betaSlow',
  '--low-freq-factor': 'lowFreqFactor', '--high-freq-factor': 'highFreqFactor',
};
const integerFlags = new Set(['--context', '--head-dim', '--rotary-dim', '--original-max']);

function parse(argv: string[]): Flags {
  const f: Flags = { json: false, help: false };
  for (let i = 0; i < argv.length; i++) {
    const raw = argv[i];
    const eq = raw.startsWith('--') ? raw.indexOf('=') : -1;
    const name = eq > 0 ? raw.slice(0, eq) : raw;
    const inline = eq > 0 ? raw.slice(eq + 1) : undefined;
    const value = (): string => {
      if (inline !== undefined) return inline;
      const v = argv[++i];
      if (v === undefined || v.startsWith('--')) throw new UsageError(`${name} needs a value`);
      return v;
    };
    if (name === '--help' || name === '-h') f.help = true;
    else if (name === '--json') f.json = true;
    else if (name === '--plot') f.plot = value();
    else if (name === '--hf-config') f.hfConfig = value();
    else if (name === '--scaling') {
      const v = value();
      if (!(ropeTypes as readonly string[]).includes(v)) throw new UsageError(`--scaling must be one of ${ropeTypes.join(', ')}, got "${v}"`);
      f.scaling = v as RopeType;
    } else if (name in numericFlags) {
      const s = value();
      const v = Number(s);
      if (s.trim() === '' || !Number.isFinite(v)) throw new UsageError(`${name} must be a number, got "${s}"`);
      if (integerFlags.has(name) && (!Number.isInteger(v) || v <= 0)) throw new UsageError(`${name} must be a positive integer, got "${s}"`);
      (f as unknown as Record<string, unknown>)[numericFlags[name]] = v;
    } else throw new UsageError(`unknown argument "${raw}"`);
  }
  return f;
}

/** A number for the table: short, exponent form for large/small magnitudes. */
function n(v: number, digits = 4): string {
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e7) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a >= 1e6 || a < 1e-3) ? v.toExponential(digits - 1) : String(Number(v.toPrecision(digits)));
}

export async function thetaCli(argv: string[], io: CliIO): Promise<number> {
  let f: Flags;
  try {
    f = parse(argv);
  } catch (e) {
    io.err(`megabeam theta: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  if (f.help) {
    io.out(USAGE);
    return 0;
  }
  try {
    return await run(f, io);
  } catch (e) {
    if (e instanceof UsageError || e instanceof MegabeamError) {
      io.err(`megabeam theta: ${e.message}\n`);
      return 2;
    }
    io.err(`megabeam theta: ${(e as Error)?.message ?? String(e)}\n`);
    return 1;
  }
}

async function run(f: Flags, io: CliIO): Promise<number> {
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
    angleError: { position: last, fp32Max: max(e32), bf16Max: max(e16), exactModeMax: 1e-6 },
    options: opts,
  };

  if (f.json) io.out(JSON.stringify(report, null, 2) + '\n');
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
      [`angle error @ m=${last}, fp32`, `${n(max(e32), 3)} rad (max over dims, bound)`],
      [`angle error @ m=${last}, bf16`, `${n(max(e16), 3)} rad (max over dims, bound)`],
      ['angle error, megabeam exact', '≤ 1e-7 rad (measured ≤ 9e-8 at any int32 position, docs/rope.md)'],
    ];
    const w = Math.max(...rows.map((r) => r[0].length));
    io.out(`megabeam theta — context ${context}, head dim ${opts.headDim}, rotary dim ${d}\n`);
    for (const [k, v] of rows) io.out(`  ${k.padEnd(w)}  ${v}\n`);
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
    const svg = renderPanels([
      {
        title: `Σ cos(m·θ_i) over m ∈ [0, ${context}] (per-bucket min/max)`,
        xLabel: 'relative position m', yLabel: 'Σ cos(m·θ_i)', hline: 0, xDomain: [0, context],
        series: [{ id: 'cos-sum', label: 'Σ cos(m·θ)', color: '#1f5fbf', x: xs, y: ys }],
      },
      {
        title: `angle error bound at m = ${last} per dimension`,
        xLabel: 'dimension pair i', yLabel: 'rad', yScale: 'log',
        series: [
          { id: 'angle-error-fp32', label: 'fp32', color: '#1f9f3f', x: dims, y: e32 },
          { id: 'angle-error-bf16', label: 'bf16', color: '#cf3f1f', x: dims, y: e16 },
        ],
      },
    ]);
    await fs.writeFile(f.plot, svg);
    if (!f.json) io.out(`  plot written to ${f.plot}\n`);
  }
  return 0;
}

function flagName(k: string): string {
  return '--' + (k === 'scaling' ? 'scaling' : k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()));
}
