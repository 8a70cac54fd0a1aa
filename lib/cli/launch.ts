// `megabeam launch --nproc N [--nnodes M --node-rank R --master host:port] script.js [args]`
//
// Starts N ranks of a script on this node (node R of M), each a child process running the same Node
// binary (with this process's --import/--require flags, so a .ts script runs when the launcher runs under
// tsx). Each rank gets MEGABEAM_RANK / _WORLD_SIZE / _LOCAL_RANK / _LOCAL_WORLD_SIZE / _MASTER_ADDR /
// _MASTER_PORT / MEGABEAM_DEVICE (cuda:<local rank> when --device cuda) and torchrun's RANK, WORLD_SIZE,
// LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT. Output lines are prefixed "[rank N]".
// SIGINT/SIGTERM are forwarded. When a rank fails, the others get a grace period to exit on their own
// (their groups report the dead peer), then SIGTERM, then SIGKILL; the launcher says which rank died and how
// and exits non-zero.
import type { Command } from '../cli';
import { CliIO, FlagValues } from './args';
import { MegabeamError } from '../errors';
import { ChildProcess, spawn } from 'child_process';
import * as net from 'net';
import * as fs from 'fs';
import * as path from 'path';

/** bin/megabeam.js of this package (from lib/cli/ under tsx and from dist/cli/ alike). */
export const MEGABEAM_BIN = path.join(__dirname, '..', '..', 'bin', 'megabeam.js');

type IO = { out: (s: string) => void; err: (s: string) => void };

const USAGE = `usage: megabeam launch --nproc N [--nnodes M --node-rank R --master host:port] [--grace-ms MS]
                       [--device cpu|cuda] script.js [script args...]
       megabeam launch --nproc N megabeam <command> [args...]   (e.g. megabeam train: sequence parallel)

  --nproc N        ranks on this node (default 1)
  --nnodes M       nodes in the job (default 1); world size = N x M
  --node-rank R    this node's index (default 0); ranks R*N .. R*N+N-1 run here
  --master H:P     rank 0's address (default 127.0.0.1 and a free port on one node; required with --nnodes > 1)
  --grace-ms MS    after a rank fails, how long the others may take to exit before they are killed (default 10000)
  --device D       cuda: give rank i MEGABEAM_DEVICE=cuda:<local rank>; cpu: MEGABEAM_DEVICE=cpu (default: unset,
                   dist.init() picks cuda:<local rank> when CUDA is usable)
`;

export interface LaunchOptions {
  nproc: number;
  nnodes: number;
  nodeRank: number;
  masterAddr: string;
  masterPort: number;
  graceMs: number;
  device?: 'cpu' | 'cuda';
  script: string;
  args: string[];
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

export async function parseLaunchArgs(argv: string[]): Promise<LaunchOptions | string> {
  const o: Partial<LaunchOptions> = { nproc: 1, nnodes: 1, nodeRank: 0, graceMs: 10000 };
  let master: string | undefined;
  let i = 0;
  const num = (flag: string, v: string | undefined, min: number): number | string => {
    const n = Number(v);
    return v !== undefined && Number.isSafeInteger(n) && n >= min ? n : `${flag} needs an integer >= ${min}, got ${v ?? 'nothing'}`;
  };
  for (; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) break;
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const val = (): string | undefined => inline ?? argv[++i];
    let r: number | string;
    switch (flag) {
      case '--nproc': case '--nproc-per-node': case '--nproc_per_node': r = num(flag, val(), 1); if (typeof r === 'string') return r; o.nproc = r; break;
      case '--nnodes': r = num(flag, val(), 1); if (typeof r === 'string') return r; o.nnodes = r; break;
      case '--node-rank': case '--node_rank': r = num(flag, val(), 0); if (typeof r === 'string') return r; o.nodeRank = r; break;
      case '--grace-ms': r = num(flag, val(), 0); if (typeof r === 'string') return r; o.graceMs = r; break;
      case '--master': master = val(); break;
      case '--device': { const d = val(); if (d !== 'cpu' && d !== 'cuda') return `--device must be cpu or cuda, got ${d}`; o.device = d; break; }
      case '--help': return 'help';
      case '--': i++; break;
      default: return `unknown option ${flag}`;
    }
    if (flag === '--') break;
  }
  if (i >= argv.length) return 'missing the script to run';
  // `megabeam launch --nproc 4 megabeam train ...`: the word megabeam (when no such file is here) is this
  // package's own CLI, so the ranks run megabeam commands without a path to bin/megabeam.js.
  o.script = argv[i] === 'megabeam' && !fs.existsSync(argv[i]) ? MEGABEAM_BIN : argv[i];
  o.args = argv.slice(i + 1);
  if (o.nodeRank! >= o.nnodes!) return `--node-rank ${o.nodeRank} must be below --nnodes ${o.nnodes}`;
  if (master) {
    const m = /^(.+):(\d+)$/.exec(master);
    if (!m || Number(m[2]) > 65535) return `--master must be host:port, got ${master}`;
    o.masterAddr = m[1].replace(/^\[(.*)\]$/, '$1');
    o.masterPort = Number(m[2]);
  } else {
    if (o.nnodes! > 1) return '--master host:port is required with --nnodes > 1 (the address of node 0)';
    o.masterAddr = '127.0.0.1';
    o.masterPort = Number(process.env.MASTER_PORT) || (await freePort());
  }
  return o as LaunchOptions;
}

/** Forwards a child's stream line by line with a prefix. */
function prefixLines(stream: NodeJS.ReadableStream, prefix: string, write: (s: string) => void): Promise<void> {
  return new Promise((resolve) => {
    let rest = '';
    stream.setEncoding?.('utf8');
    stream.on('data', (chunk: string) => {
      const parts = (rest + chunk).split('\n');
      rest = parts.pop()!;
      for (const l of parts) write(`${prefix}${l}\n`);
    });
    stream.on('end', () => { if (rest) write(`${prefix}${rest}\n`); resolve(); });
    stream.on('error', () => resolve());
  });
}

export async function launch(o: LaunchOptions, io: IO): Promise<number> {
  const world = o.nproc * o.nnodes;
  // Node flags that load code (tsx, --require hooks) go to the children; debugger flags do not (ports).
  const execArgv = process.execArgv.filter((a) => !a.startsWith('--inspect') && !a.startsWith('--debug'));
  const children: { rank: number; cp: ChildProcess; exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> }[] = [];
  let firstFailure: { rank: number; code: number | null; signal: NodeJS.Signals | null } | null = null;
  let stopping = false;
  let killTimer: NodeJS.Timeout | undefined;
  const writeOut = (s: string): void => { process.stdout.write(s); };
  const writeErr = (s: string): void => { process.stderr.write(s); };

  const stopAll = (signal: NodeJS.Signals): void => {
    for (const c of children) if (c.cp.exitCode === null && c.cp.signalCode === null) c.cp.kill(signal);
  };
  const onFailure = (): void => {
    if (stopping) return;
    stopping = true;
    // Give the survivors time to notice the dead peer and exit with their own error; then end them.
    killTimer = setTimeout(() => {
      stopAll('SIGTERM');
      killTimer = setTimeout(() => stopAll('SIGKILL'), 3000);
    }, o.graceMs);
  };
  const forward = (sig: NodeJS.Signals) => (): void => {
    io.err(`megabeam launch: ${sig}, forwarding to the ranks`);
    stopping = true;
    stopAll(sig);
    clearTimeout(killTimer);
    killTimer = setTimeout(() => stopAll('SIGKILL'), Math.max(o.graceMs, 3000));
  };
  const onInt = forward('SIGINT'), onTerm = forward('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);

  const failures: { rank: number; code: number | null; signal: NodeJS.Signals | null }[] = [];
  let decideTimer: NodeJS.Timeout | undefined;
  const decide = (): void => {
    if (firstFailure || failures.length === 0) return;
    const f = failures.find((x) => x.signal) ?? failures[0];
    firstFailure = f;
    io.err(`megabeam launch: rank ${f.rank} ${f.signal ? `was killed by ${f.signal}` : `exited with code ${f.code}`}; ` +
      `stopping the other ranks (grace ${o.graceMs} ms)`);
    onFailure();
  };
  const pipes: Promise<void>[] = [];
  // One id per job (the same on every node when given; else per launcher, so single-node only): the
  // rendezvous refuses processes of another job that reach the same port.
  const jobId = process.env.MEGABEAM_JOB_ID || (o.nnodes === 1 ? `${process.pid}-${Date.now().toString(36)}` : '');
  for (let l = 0; l < o.nproc; l++) {
    const rank = o.nodeRank * o.nproc + l;
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      MEGABEAM_RANK: String(rank), MEGABEAM_WORLD_SIZE: String(world),
      MEGABEAM_LOCAL_RANK: String(l), MEGABEAM_LOCAL_WORLD_SIZE: String(o.nproc),
      MEGABEAM_MASTER_ADDR: o.masterAddr, MEGABEAM_MASTER_PORT: String(o.masterPort), MEGABEAM_JOB_ID: jobId,
      RANK: String(rank), WORLD_SIZE: String(world), LOCAL_RANK: String(l), LOCAL_WORLD_SIZE: String(o.nproc),
      GROUP_RANK: String(o.nodeRank), MASTER_ADDR: o.masterAddr, MASTER_PORT: String(o.masterPort),
    };
    if (o.device === 'cuda') env.MEGABEAM_DEVICE = `cuda:${l}`;
    else if (o.device === 'cpu') env.MEGABEAM_DEVICE = 'cpu';
    const cp = spawn(process.execPath, [...execArgv, o.script, ...o.args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const prefix = `[rank ${rank}] `;
    pipes.push(prefixLines(cp.stdout!, prefix, writeOut), prefixLines(cp.stderr!, prefix, writeErr));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      cp.on('error', (e) => { io.err(`megabeam launch: rank ${rank} could not start: ${e.message}`); resolve({ code: 127, signal: null }); });
      cp.on('exit', (code, signal) => resolve({ code, signal }));
    });
    exited.then(({ code, signal }) => {
      if (code === 0 || stopping) return;
      failures.push({ rank, code, signal });
      // The survivors of a crash notice within milliseconds and exit with their own errors, and exit events
      // can arrive in any order: decide who died first after a short window, preferring a rank that was
      // killed by a signal (nobody here sent one yet) over ranks that exited reporting an error.
      if (!decideTimer) decideTimer = setTimeout(decide, 300);
    });
    children.push({ rank, cp, exited });
  }
  const results = await Promise.all(children.map((c) => c.exited));
  await Promise.all(pipes);
  clearTimeout(decideTimer);
  decide();
  clearTimeout(killTimer);
  process.off('SIGINT', onInt);
  process.off('SIGTERM', onTerm);
  const bad = results.map((r, i) => ({ ...r, rank: children[i].rank })).filter((r) => r.code !== 0);
  if (bad.length === 0) return 0;
  const how = (r: { code: number | null; signal: NodeJS.Signals | null }): string => (r.signal ? `signal ${r.signal}` : `exit code ${r.code}`);
  const f = firstFailure as { rank: number; code: number | null; signal: NodeJS.Signals | null } | null;
  io.err(`megabeam launch: failed` + (f ? `: rank ${f.rank} died first (${how(f)})` : '') +
    `; ranks not ending cleanly: ${bad.map((r) => `${r.rank} (${how(r)})`).join(', ')}`);
  return f && f.code && f.code > 0 ? f.code : 1;
}

/** `megabeam launch` on the shared command table (flags parsed by lib/cli/args.ts; the script and its
 * arguments reach run() untouched). */
export const command: Command = {
  usage: 'megabeam launch [--nproc N] [--nnodes M --node-rank R --master host:port] script.js [args...]',
  description: USAGE.split('\n').slice(1).join('\n').trim(),
  flags: {
    nproc: { type: 'int', min: 1, max: 4096, help: 'processes (ranks) on this node', default: '1', aliases: ['nproc-per-node', 'nproc_per_node'] },
    nnodes: { type: 'int', min: 1, max: 65536, help: 'nodes in the job', default: '1' },
    'node-rank': { type: 'int', min: 0, max: 65535, help: "this node's index", default: '0', aliases: ['node_rank'] },
    master: { type: 'string', metavar: 'host:port', help: "node 0's rendezvous address (required with --nnodes > 1)" },
    'grace-ms': { type: 'int', min: 0, max: 3_600_000, help: 'after a rank fails, wait this long before ending the others', default: '10000' },
    device: { type: 'choice', choices: ['cpu', 'cuda'], help: 'device of the ranks (default: cuda when usable)' },
  },
  takesArgs: true,
  async run(opts: FlagValues, io: CliIO, args: string[]): Promise<number> {
    const argv: string[] = [];
    for (const k of ['nproc', 'nnodes', 'node-rank', 'master', 'grace-ms', 'device'])
      if (opts[k] !== undefined) argv.push(`--${k}`, String(opts[k]));
    const o = await parseLaunchArgs([...argv, '--', ...args]);
    if (o === 'help') { io.out(USAGE); return 0; }
    if (typeof o === 'string') throw new MegabeamError('ERR_ARG', o);
    return launch(o, io as unknown as IO);
  },
};

export async function launchCli(argv: string[], io: IO): Promise<number> {
  const o = await parseLaunchArgs(argv);
  if (o === 'help') { io.out(USAGE); return 0; }
  if (typeof o === 'string') { io.err(`megabeam launch: ${o}\n\n${USAGE}`); return 2; }
  return launch(o, io);
}
