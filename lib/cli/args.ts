// The one flag parser of the CLI. Every command declares its flags as a table (FlagSpecs); parseFlags
// accepts `--name value` and `--name=value`, sizes like 4096 / 4k / 512K / 1M (binary: k = 1024), rejects
// unknown flags, repeated flags, stray arguments and out-of-range values with an ArgumentError (ERR_ARG)
// whose message names the flag. Deprecated spellings (aliases) still work and print one warning.
import { ArgumentError } from '../errors';

export type FlagType =
  | 'bool'     // --flag (or --flag=true|false)
  | 'string'
  | 'int'      // a plain integer: 128
  | 'size'     // an integer with an optional binary suffix: 4096, 4k, 512K, 1M, 1G
  | 'sizes'    // a comma list of sizes: 16k,64k,512k
  | 'number'   // any finite number: 75e6, 0.5
  | 'choice';  // one of `choices`

export interface FlagSpec {
  type: FlagType;
  help: string;
  /** Placeholder in the help text (default from the type: N, X, FILE...). */
  metavar?: string;
  choices?: readonly string[];
  /** Inclusive bounds for int / size / sizes / number. */
  min?: number;
  max?: number;
  /** Deprecated spellings (without --): accepted with a warning on stderr. */
  aliases?: readonly string[];
  /** Shown in the help text only; the command applies its own defaults. */
  default?: string;
}

export type FlagSpecs = Readonly<Record<string, FlagSpec>>;
export type FlagValue = string | number | boolean | number[];
export type FlagValues = Record<string, FlagValue | undefined>;

/** Output of a command: `out` and `err` print one line each; `json` prints a value as the only stdout. */
export interface CliIO {
  out: (line: string) => void;
  err: (line: string) => void;
  json?: (value: unknown) => void;
}

const SIZE_RE = /^(\d+)([kKmMgG]?)$/;
const MULT: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30 };

/** "4096" | "4k" | "512K" | "1M" | "1G" → integer (k = 1024). Throws ERR_ARG naming `what`. */
export function parseSize(s: string, what: string): number {
  const m = SIZE_RE.exec(s.trim());
  const v = m ? Number(m[1]) * MULT[m[2].toLowerCase()] : NaN;
  if (!Number.isSafeInteger(v)) throw new ArgumentError(`${what} must be a size like 4096, 4k, 512K or 1M, got ${JSON.stringify(s)}`);
  return v;
}

function bounds(v: number, spec: FlagSpec, what: string): number {
  if (spec.min !== undefined && v < spec.min) throw new ArgumentError(`${what} must be ≥ ${spec.min}, got ${v}`);
  if (spec.max !== undefined && v > spec.max) throw new ArgumentError(`${what} must be ≤ ${spec.max}, got ${v}`);
  return v;
}

function convert(raw: string, spec: FlagSpec, what: string): FlagValue {
  switch (spec.type) {
    case 'bool':
      if (raw === 'true') return true;
      if (raw === 'false') return false;
      throw new ArgumentError(`${what} takes no value (got ${JSON.stringify(raw)})`);
    case 'string':
      if (raw === '') throw new ArgumentError(`${what} needs a non-empty value`);
      return raw;
    case 'choice':
      if (!spec.choices!.includes(raw)) throw new ArgumentError(`${what} must be one of ${spec.choices!.join(', ')}, got ${JSON.stringify(raw)}`);
      return raw;
    case 'int': {
      const v = /^-?\d+$/.test(raw.trim()) ? Number(raw) : NaN;
      if (!Number.isSafeInteger(v)) throw new ArgumentError(`${what} must be an integer, got ${JSON.stringify(raw)}`);
      return bounds(v, spec, what);
    }
    case 'size':
      return bounds(parseSize(raw, what), spec, what);
    case 'sizes': {
      if (raw.trim() === '') throw new ArgumentError(`${what} needs a comma list of sizes like 16k,64k`);
      return raw.split(',').map((x) => bounds(parseSize(x, what), spec, what));
    }
    case 'number': {
      const v = raw.trim() === '' ? NaN : Number(raw);
      if (!Number.isFinite(v)) throw new ArgumentError(`${what} must be a number, got ${JSON.stringify(raw)}`);
      return bounds(v, spec, what);
    }
  }
}

/**
 * Parses argv against `specs` (plus --help / -h, always allowed). Returns the values by canonical name;
 * flags not given are absent. `warn` receives deprecation notes. Stray arguments are errors.
 */
export function parseFlags(argv: readonly string[], specs: FlagSpecs, warn: (s: string) => void = () => {}): FlagValues & { help?: boolean } {
  return parseCommandLine(argv, specs, warn, false).values;
}

/**
 * The general form: with `allowArgs` true the first argument that is not a flag, or `--`, ends the flags,
 * and it and everything after it are returned as `args` untouched (`megabeam launch --nproc 2 train.js
 * --lr 3`). With 'mixed', arguments and flags may come in any order (`megabeam plot log.jsonl --out a.svg`);
 * `--` still ends the flags.
 */
export function parseCommandLine(argv: readonly string[], specs: FlagSpecs, warn: (s: string) => void,
    allowArgs: boolean | 'mixed'): { values: FlagValues & { help?: boolean }; args: string[] } {
  const positional: string[] = [];
  const byName = new Map<string, string>();
  for (const [name, spec] of Object.entries(specs)) {
    byName.set(name, name);
    for (const a of spec.aliases ?? []) byName.set(a, name);
  }
  const out: FlagValues & { help?: boolean } = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '-h' || arg === '--help') { out.help = true; continue; }
    if (allowArgs && arg === '--') return { values: out, args: [...positional, ...argv.slice(i + 1)] };
    if (allowArgs === 'mixed' && !arg.startsWith('-')) { positional.push(arg); continue; }
    if (allowArgs && !arg.startsWith('-')) return { values: out, args: argv.slice(i) };
    if (!arg.startsWith('--') || arg === '--') throw new ArgumentError(`unexpected argument ${JSON.stringify(arg)} (flags start with --)`);
    const eq = arg.indexOf('=');
    const given = eq > 0 ? arg.slice(2, eq) : arg.slice(2);
    const name = byName.get(given);
    if (name === undefined) {
      const near = [...byName.keys()].find((k) => k.startsWith(given) || given.startsWith(k));
      throw new ArgumentError(`unknown flag --${given}${near ? ` (did you mean --${byName.get(near)}?)` : ''}`);
    }
    const spec = specs[name];
    if (given !== name) warn(`--${given} is deprecated; use --${name}`);
    if (out[name] !== undefined) throw new ArgumentError(`--${name} given twice`);
    let raw: string | undefined = eq > 0 ? arg.slice(eq + 1) : undefined;
    if (raw === undefined && spec.type !== 'bool') {
      raw = argv[i + 1];
      if (raw === undefined || raw.startsWith('--')) throw new ArgumentError(`--${given} needs a value (${metavar(spec)})`);
      i++;
    }
    out[name] = raw === undefined ? true : convert(raw, spec, `--${given}`);
  }
  return { values: out, args: positional };
}

function metavar(spec: FlagSpec): string {
  if (spec.metavar) return spec.metavar;
  switch (spec.type) {
    case 'bool': return '';
    case 'choice': return spec.choices!.join('|');
    case 'int': case 'size': return 'N';
    case 'sizes': return 'N,N,...';
    case 'number': return 'X';
    default: return 'VALUE';
  }
}

/** The help text of a command: usage line, description, then one line per flag. */
export function formatHelp(usage: string, description: string, specs: FlagSpecs): string {
  const rows: [string, string][] = Object.entries(specs).map(([name, s]) => {
    const mv = metavar(s);
    let text = s.help;
    if (s.default !== undefined) text += ` (default: ${s.default})`;
    if (s.aliases?.length) text += ` [deprecated alias: ${s.aliases.map((a) => '--' + a).join(', ')}]`;
    return [`--${name}${mv ? ' ' + mv : ''}`, text];
  });
  rows.push(['-h, --help', 'this text']);
  const w = Math.min(28, Math.max(...rows.map((r) => r[0].length)));
  const lines = rows.map(([k, v]) => (k.length > w ? `  ${k}\n  ${''.padEnd(w)}  ${v}` : `  ${k.padEnd(w)}  ${v}`));
  return `usage: ${usage}\n${description ? `\n${description}\n` : ''}\noptions:\n${lines.join('\n')}\nSizes take k/M/G suffixes (binary: 4k = 4096); --flag=value and --flag value are the same.`;
}
