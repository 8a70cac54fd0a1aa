// Runs a TypeScript entry (node --import tsx) in a child process from the repo root and collects its output;
// `cli(args)` runs the megabeam CLI from the sources (how the tests start `megabeam launch`).
import { spawn } from 'child_process';
import * as path from 'path';

export const root = path.join(__dirname, '..', '..');
export const cliEntry = path.join(__dirname, 'cli-entry.ts');

export interface Run { code: number | null; out: string; err: string; ms: number }

/** The child is SIGKILLed after timeoutMs (its code is then null). */
export function runTs(args: string[], opts: { env?: Record<string, string>; timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const cp = spawn(process.execPath, ['--import', 'tsx', ...args], { cwd: root, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    cp.stdout.on('data', (d) => (out += d));
    cp.stderr.on('data', (d) => (err += d));
    const timer = setTimeout(() => cp.kill('SIGKILL'), opts.timeoutMs ?? 120000);
    cp.on('exit', (code) => { clearTimeout(timer); resolve({ code, out, err, ms: Date.now() - t0 }); });
  });
}

export const cli = (args: string[], timeoutMs = 120000): Promise<Run> => runTs([cliEntry, ...args], { timeoutMs });
