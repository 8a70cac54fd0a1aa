// `megabeam <command>`: the CLI. Every command is one entry of the `commands` table below.
//
// Adding a command (e.g. `launch`, `bench ring`, `bench gemm`, `bench model`) is one table entry plus
// one module:
//   1. In lib/cli/<x>.ts (or lib/bench/<x>.ts) export
//        export const command: Command = {
//          usage: 'megabeam bench ring [options]',
//          description: 'what it measures / does (a few lines)',
//          flags: { seqs: { type: 'sizes', help: 'sequence lengths', default: '64k' }, json: JSON_FLAG, ... },
//          async run(opts, io) { ...; return 0; },   // takesArgs: true → run(opts, io, args) gets the rest
//        };
//      Flags come from lib/cli/args.ts (types bool|string|int|size|sizes|number|choice, min/max, choices,
//      deprecated aliases). The parser rejects unknown flags, bad values and stray arguments with ERR_ARG;
//      `--help` is generated from the table. Reuse the shared names: --device, --seq/--seqs, --heads,
//      --kv-heads, --head-dim, --batch, --dtype, --reps, --json, --out (see lib/cli/common.ts).
//   2. Add `{ name: 'bench ring', summary: 'one line for `megabeam help`', load: () => import('./bench/ring') }`
//      to `commands`. Multi-word names ("bench ring") are matched on the leading words of argv.
// Contract for run(): print human text with io.out (one line per call), progress with io.err, and the
// machine result with io.json(value) when opts.json is set — the runner then sends io.out to stderr so
// stdout carries JSON alone. Throw MegabeamErrors (lib/errors.ts) for bad input or failures: the runner
// prints ONE line "megabeam <cmd>: ERR_X: message (hint)" and exits 2 for usage errors, 1 otherwise;
// never a stack trace (MEGABEAM_DEBUG=1 adds one). Return the exit code (0 = success).
import * as fs from 'fs';
import * as path from 'path';
import { CliIO, FlagSpecs, FlagValues, formatHelp, parseCommandLine } from './cli/args';
import { MegabeamError } from './errors';

export type { CliIO } from './cli/args';

export interface Command {
  usage: string;
  description: string;
  flags: FlagSpecs;
  /**
   * Set for commands that take arguments (`megabeam launch [flags] script.js [script args...]`): the first
   * non-flag argument, or `--`, ends the flags and the rest reaches run() as `args`, untouched. Without it
   * any stray argument is ERR_ARG. 'mixed': positional arguments and flags in any order (`plot log.jsonl
   * --out a.svg`, `bench model check DIR --out f.json`); the positionals reach run() as `args`.
   */
  takesArgs?: boolean | 'mixed';
  run(opts: FlagValues, io: CliIO, args: string[]): Promise<number>;
}

interface Entry {
  name: string;
  summary: string;
  load: () => Promise<{ command: Command }>;
  /** Kept working but not listed (old names). */
  hidden?: boolean;
}

const commands: Entry[] = [
  { name: 'theta', summary: 'RoPE base / scaling analysis for a context length (table, JSON, SVG plot)', load: () => import('./cli/theta') },
  { name: 'demo', summary: 'long-context attention forward+backward with a float64 check (GPU if present, else CPU)', load: () => import('./cli/demo') },
  { name: 'bench attention', summary: 'flash attention forward/backward time, TFLOP/s and peak memory', load: () => import('./bench/attention') },
  { name: 'bench rope', summary: 'RoPE bandwidth against a device copy', load: () => import('./bench/rope') },
  { name: 'bench gemm', summary: 'matmul TFLOP/s at the Mistral-7B projection shapes (cuBLASLt, builtin, torch)', load: () => import('./bench/gemm') },
  { name: 'bench ring', summary: 'ring attention per-rank compute on virtual ranks; --model: the scaling model', load: () => import('./bench/ring') },
  { name: 'bench ring-dist', summary: 'ring attention across launched ranks (NCCL GPUs or TCP CPUs): time, TFLOP/s and memory per GPU, hidden communication, check', load: () => import('./bench/ringdist') },
  { name: 'bench model', summary: 'Mistral-7B decoder layer and whole-model fwd+bwd (time, TFLOP/s, tokens/s, peak memory); check DIR vs PyTorch', load: () => import('./bench/model') },
  { name: 'launch', summary: 'start the ranks of a distributed job (rank/world variables, prefixed output, all end when one fails)', load: () => import('./cli/launch') },
  { name: 'train', summary: 'train a Mistral/Llama model on token files: AdamW, checkpoints (--resume), JSONL log, progress', load: () => import('./cli/train') },
  { name: 'plot', summary: 'draw a training log (loss, lr, tokens/s, gradient norm) as SVG: megabeam plot log.jsonl --out loss.svg', load: () => import('./cli/plot') },
  { name: 'bench train', summary: 'training step (fwd+bwd+AdamW) of Mistral-7B-shaped layers: tokens/s, MFU, peak memory; --full: the 7B', load: () => import('./bench/train') },
  { name: 'bench nn', summary: 'layer ops (rmsNorm, swiglu, embedding, cross-entropy) against a device copy', load: () => import('./bench/nn') },
  { name: 'doctor', summary: 'version, loaded addon, CUDA build/driver/runtime, GPUs, optional libraries', load: () => import('./cli/doctor') },
  { name: 'info', summary: 'same as doctor', load: () => import('./cli/doctor'), hidden: true },
];

/** The registered command names, listed ones first (for tests and completion). */
export function commandNames(includeHidden = false): string[] {
  return commands.filter((c) => includeHidden || !c.hidden).map((c) => c.name);
}

export function version(): string {
  // dist/cli.js and lib/cli.ts both sit one level below the package root.
  return (JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as { version: string }).version;
}

function usage(): string {
  const shown = commands.filter((c) => !c.hidden);
  const w = Math.max(...shown.map((c) => c.name.length));
  return `usage: megabeam <command> [options]

commands:
${shown.map((c) => `  ${c.name.padEnd(w)}  ${c.summary}`).join('\n')}

  megabeam help <command> | megabeam <command> --help   options of a command
  megabeam --version                                    the package version`;
}

const stdio: CliIO = { out: (s) => process.stdout.write(s + '\n'), err: (s) => process.stderr.write(s + '\n') };

const USAGE_CODES = new Set(['ERR_ARG', 'ERR_ROPE_CONFIG', 'ERR_DTYPE', 'ERR_SHAPE']);

function hint(code: string, name: string): string {
  switch (code) {
    case 'ERR_ARG': case 'ERR_ROPE_CONFIG': case 'ERR_DTYPE': case 'ERR_SHAPE': case 'ERR_UNSUPPORTED':
      return `see \`megabeam ${name} --help\``;
    case 'ERR_NO_CUDA': return 'run `megabeam doctor` to see why, or use --device cpu';
    case 'ERR_DEVICE': return 'run `megabeam doctor` to list the devices here';
    case 'ERR_NATIVE': return 'run `megabeam doctor`; reinstall megabeam, or check MEGABEAM_ADDON if you set it';
    case 'ERR_OOM': return 'try a smaller --seq/--seqs or fewer heads';
    default: return 'run `megabeam doctor`; MEGABEAM_DEBUG=1 prints a stack trace';
  }
}

/** One line for any error: code, first line of the message, a hint. Returns the exit code. */
export function reportError(e: unknown, name: string, io: CliIO): number {
  const debug = !!process.env.MEGABEAM_DEBUG;
  if (e instanceof MegabeamError) {
    const msg = e.message.split('\n')[0];
    io.err(`megabeam ${name}: ${e.code}: ${msg} (${hint(e.code, name)})`);
    if (debug && e.stack) io.err(e.stack);
    return USAGE_CODES.has(e.code) ? 2 : 1;
  }
  const msg = e instanceof Error ? e.message.split('\n')[0] : String(e);
  // A file the user named could not be read or written (--out, --plot, --hf-config): their input, not a bug.
  if (e instanceof Error && typeof (e as NodeJS.ErrnoException).syscall === 'string') {
    io.err(`megabeam ${name}: ERR_ARG: ${msg} (check the path given to --out/--plot/--dump)`);
    return 2;
  }
  io.err(`megabeam ${name}: unexpected error: ${msg} (a bug: please report it with the output of MEGABEAM_DEBUG=1)`);
  if (debug && e instanceof Error && e.stack) io.err(e.stack);
  return 1;
}

/** Parses argv for one command and runs it; every failure becomes one line on stderr. */
export async function runCommand(cmd: Command, name: string, argv: readonly string[], io: CliIO = stdio): Promise<number> {
  try {
    const { values: opts, args } = parseCommandLine(argv, cmd.flags, (w) => io.err(`megabeam ${name}: warning: ${w}`), cmd.takesArgs ?? false);
    if (opts.help) {
      io.out(formatHelp(cmd.usage, cmd.description, cmd.flags));
      return 0;
    }
    // JSON mode: stdout carries the JSON value alone; human text goes to stderr.
    const runIO: CliIO = opts.json === true
      ? { out: io.err, err: io.err, json: io.json ?? ((v) => io.out(JSON.stringify(v, null, 2))) }
      : { out: io.out, err: io.err, json: io.json ?? ((v) => io.out(JSON.stringify(v, null, 2))) };
    return await cmd.run(opts, runIO, args);
  } catch (e) {
    return reportError(e, name, io);
  }
}

function find(argv: readonly string[]): { entry: Entry; rest: string[] } | undefined {
  // Longest name first, so "bench rope" wins over a hypothetical "bench".
  const sorted = [...commands].sort((a, b) => b.name.split(' ').length - a.name.split(' ').length);
  for (const entry of sorted) {
    const words = entry.name.split(' ');
    if (words.every((w, i) => argv[i] === w)) return { entry, rest: argv.slice(words.length) };
  }
  return undefined;
}

export async function main(argv: readonly string[], io: CliIO = stdio): Promise<number> {
  const [first] = argv;
  if (first === '--version' || first === '-v' || first === 'version') {
    io.out(version());
    return 0;
  }
  if (first === undefined) {
    io.err(usage());
    return 2;
  }
  if (first === '-h' || first === '--help') {
    io.out(usage());
    return 0;
  }
  if (first === 'help') {
    if (argv.length === 1) { io.out(usage()); return 0; }
    const hit = find(argv.slice(1));
    if (!hit || hit.rest.length) {
      io.err(`megabeam help: ERR_ARG: no command ${JSON.stringify(argv.slice(1).join(' '))} (see \`megabeam help\`)`);
      return 2;
    }
    return runCommand((await hit.entry.load()).command, hit.entry.name, ['--help'], io);
  }
  const hit = find(argv);
  if (!hit) {
    // A group word alone ("bench", "bench --help") lists its subcommands.
    const group = commands.filter((c) => !c.hidden && c.name.startsWith(first + ' '));
    if (group.length) {
      const text = `usage: megabeam ${first} <${group.map((c) => c.name.slice(first.length + 1)).join('|')}> [options]\n\n` +
        group.map((c) => `  ${c.name.padEnd(Math.max(...group.map((g) => g.name.length)))}  ${c.summary}`).join('\n');
      const wantsHelp = argv[1] === '--help' || argv[1] === '-h';
      if (wantsHelp && argv.length === 2) { io.out(text); return 0; }
      io.err(argv.length === 1 ? text : `megabeam ${first}: ERR_ARG: unknown ${first} ${JSON.stringify(argv[1])} (see \`megabeam ${first} --help\`)`);
      return 2;
    }
    io.err(`megabeam: ERR_ARG: unknown command ${JSON.stringify(first)} (see \`megabeam help\`)`);
    return 2;
  }
  let cmd: Command;
  try {
    cmd = (await hit.entry.load()).command;
  } catch (e) {
    return reportError(e, hit.entry.name, io);
  }
  return runCommand(cmd, hit.entry.name, hit.rest, io);
}
