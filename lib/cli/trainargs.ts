// A small flag parser for `megabeam train` / `megabeam plot` / `megabeam bench train`, with the flag
// table shape of the CLI's command table (lib/cli/args.ts on the `cli` branch: { type, help, min, max,
// choices, default, metavar }), so these commands move onto that parser by registering their `command`
// objects — this file can then be deleted. Conventions: `--x y` and `--x=y`, sizes like 64k (k = 1024),
// unknown flags, repeated flags and bad values are one ERR_ARG line and exit status 2.
import { ArgumentError, MegabeamError } from '../errors';

export type FlagType = 'bool' | 'string' | 'int' | 'size' | 'sizes' | 'number' | 'choice';
export interface FlagSpec { type: FlagType; help: string; metavar?: string; choices?: readonly string[]; min?: number; max?: number; default?: string }
export type FlagSpecs = Readonly<Record<string, FlagSpec>>;
export type FlagValue = string | number | boolean | number[];
export type FlagValues = Record<string, FlagValue | undefined>;
export interface CliIO { out: (line: string) => void; err: (line: string) => void; json?: (value: unknown) => void }

/** The shape of a command of the CLI's command table. */
export interface Command {
  usage: string;
  description: string;
  flags: FlagSpecs;
  takesArgs?: boolean;
  run(opts: FlagValues, io: CliIO, args: string[]): Promise<number>;
}

export function parseSize(s: string, what: string): number {
  const m = /^(\d+)([kKmMgG]?)$/.exec(s.trim());
  const v = m ? Number(m[1]) * ({ '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 } as Record<string, number>)[m[2].toLowerCase()] : NaN;
  if (!Number.isSafeInteger(v)) throw new ArgumentError(`${what} must be a size like 4096, 4k, 512K or 1M, got ${JSON.stringify(s)}`);
  return v;
}

function bounds(v: number, s: FlagSpec, what: string): number {
  if (s.min !== undefined && v < s.min) throw new ArgumentError(`${what} must be ≥ ${s.min}, got ${v}`);
  if (s.max !== undefined && v > s.max) throw new ArgumentError(`${what} must be ≤ ${s.max}, got ${v}`);
  return v;
}

function convert(raw: string, s: FlagSpec, what: string): FlagValue {
  switch (s.type) {
    case 'bool':
      if (raw === 'true' || raw === 'false') return raw === 'true';
      throw new ArgumentError(`${what} takes no value (got ${JSON.stringify(raw)})`);
    case 'string':
      if (raw === '') throw new ArgumentError(`${what} needs a non-empty value`);
      return raw;
    case 'choice':
      if (!s.choices!.includes(raw)) throw new ArgumentError(`${what} must be one of ${s.choices!.join(', ')}, got ${JSON.stringify(raw)}`);
      return raw;
    case 'int': {
      const v = /^-?\d+$/.test(raw.trim()) ? Number(raw) : NaN;
      if (!Number.isSafeInteger(v)) throw new ArgumentError(`${what} must be an integer, got ${JSON.stringify(raw)}`);
      return bounds(v, s, what);
    }
    case 'size': return bounds(parseSize(raw, what), s, what);
    case 'sizes': return raw.split(',').map((x) => bounds(parseSize(x, what), s, what));
    case 'number': {
      const v = raw.trim() === '' ? NaN : Number(raw);
      if (!Number.isFinite(v)) throw new ArgumentError(`${what} must be a number, got ${JSON.stringify(raw)}`);
      return bounds(v, s, what);
    }
  }
}

export function parse(argv: readonly string[], specs: FlagSpecs, allowArgs: boolean): { values: FlagValues & { help?: boolean }; args: string[] } {
  const out: FlagValues & { help?: boolean } = {};
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-h' || a === '--help') { out.help = true; continue; }
    if (!a.startsWith('--') || a === '--') {
      if (allowArgs && a !== '--') { args.push(a); continue; }
      throw new ArgumentError(`unexpected argument ${JSON.stringify(a)} (flags start with --)`);
    }
    const eq = a.indexOf('=');
    const name = eq > 0 ? a.slice(2, eq) : a.slice(2);
    const spec = specs[name];
    if (!spec) throw new ArgumentError(`unknown flag --${name}`);
    if (out[name] !== undefined) throw new ArgumentError(`--${name} given twice`);
    let raw: string | undefined = eq > 0 ? a.slice(eq + 1) : undefined;
    if (raw === undefined && spec.type !== 'bool') {
      raw = argv[i + 1];
      if (raw === undefined || raw.startsWith('--')) throw new ArgumentError(`--${name} needs a value`);
      i++;
    }
    out[name] = raw === undefined ? true : convert(raw, spec, `--${name}`);
  }
  return { values: out, args };
}

export function help(c: Command): string {
  const rows = Object.entries(c.flags).map(([n, s]) => {
    const mv = s.metavar ?? (s.type === 'bool' ? '' : s.type === 'choice' ? s.choices!.join('|') : s.type === 'number' ? 'X' : s.type === 'string' ? 'VALUE' : 'N');
    return [`--${n}${mv ? ' ' + mv : ''}`, s.help + (s.default !== undefined ? ` (default: ${s.default})` : '')];
  });
  rows.push(['-h, --help', 'this text']);
  const w = Math.min(28, Math.max(...rows.map((r) => r[0].length)));
  return `usage: ${c.usage}\n\n${c.description}\n\noptions:\n${rows.map(([k, v]) => (k.length > w ? `  ${k}\n  ${''.padEnd(w)}  ${v}` : `  ${k.padEnd(w)}  ${v}`)).join('\n')}`;
}

const USAGE_CODES = new Set(['ERR_ARG', 'ERR_DTYPE', 'ERR_SHAPE', 'ERR_ROPE_CONFIG', 'ERR_UNSUPPORTED']);

/** Parses and runs one command; any error is one line `megabeam <name>: ERR_X: message` (exit 2 for usage errors). */
export async function runLocal(c: Command, name: string, argv: readonly string[], io: CliIO): Promise<number> {
  try {
    const { values, args } = parse(argv, c.flags, !!c.takesArgs);
    if (values.help) { io.out(help(c)); return 0; }
    return await c.run(values, { ...io, json: io.json ?? ((v) => io.out(JSON.stringify(v, null, 2))) }, args);
  } catch (e) {
    if (e instanceof MegabeamError) {
      io.err(`megabeam ${name}: ${e.code}: ${e.message.split('\n')[0]} (see \`megabeam ${name} --help\`)`);
      if (process.env.MEGABEAM_DEBUG && e.stack) io.err(e.stack);
      return USAGE_CODES.has(e.code) ? 2 : 1;
    }
    const msg = e instanceof Error ? e.message.split('\n')[0] : String(e);
    if (e instanceof Error && typeof (e as NodeJS.ErrnoException).syscall === 'string') {
      io.err(`megabeam ${name}: ERR_ARG: ${msg}`);
      return 2;
    }
    io.err(`megabeam ${name}: unexpected error: ${msg}`);
    if (process.env.MEGABEAM_DEBUG && e instanceof Error && e.stack) io.err(e.stack);
    return 1;
  }
}
