// The CLI: help and version, one flag parser, one-line coded errors, --json alone on stdout, doctor.
// Most cases call main() in this process (fast); the ones that need a fresh process (a bad
// MEGABEAM_ADDON, the bin wrapper) spawn node.
import t, { Test } from 'tap';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Command, commandNames, main, runCommand } from '../lib/cli';
import { parseCommandLine, parseFlags, parseSize } from '../lib/cli/args';
import { cudaStatus, doctor } from '../lib/cli/doctor';
import { cuda } from '../lib/device';
import { native } from '../lib/native';
import { throwsCode } from './helpers/assert';
import { hasCuda } from './helpers/devices';

const root = path.join(__dirname, '..');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string };

interface Run { code: number; out: string[]; err: string[]; json: unknown[] }
async function run(...argv: string[]): Promise<Run> {
  const r: Run = { code: -1, out: [], err: [], json: [] };
  // stdout as the process would see it: plain lines plus JSON values (each its own write).
  r.code = await main(argv, {
    out: (s) => r.out.push(s), err: (s) => r.err.push(s),
    json: (v) => { r.json.push(v); r.out.push(JSON.stringify(v)); },
  });
  return r;
}

/** Asserts exit code and exactly one error line "megabeam <cmd>: CODE: ... (hint)" and nothing on stdout. */
type T = Test;
function oneLineError(t: T, r: Run, cmd: string, code: string, exit: number, what: string, extra?: RegExp) {
  t.equal(r.code, exit, `${what}: exit ${exit}`);
  const errors = r.err.filter((l) => !l.includes(': warning: '));
  t.equal(errors.length, 1, `${what}: one error line (${JSON.stringify(r.err)})`);
  t.match(errors[0] ?? '', new RegExp(`^megabeam${cmd ? ' ' + cmd : ''}: ${code}: .+ \\(.+\\)$`), `${what}: code and hint`);
  t.notMatch(r.err.join('\n'), /\n\s+at /, `${what}: no stack trace`);
  t.same(r.out, [], `${what}: nothing on stdout`);
  if (extra) t.match(errors[0] ?? '', extra, `${what}: names the problem`);
}

t.test('--version, help, <cmd> --help for every command (exit 0)', async (t) => {
  const v = await run('--version');
  t.equal(v.code, 0);
  t.same(v.out, [pkg.version]);
  for (const argv of [['help'], ['--help'], ['-h']]) {
    const r = await run(...argv);
    t.equal(r.code, 0, argv.join(' '));
    t.match(r.out.join('\n'), /usage: megabeam <command>/);
    for (const name of commandNames()) t.match(r.out.join('\n'), name, `${argv.join(' ')} lists ${name}`);
  }
  const none = await run();
  t.equal(none.code, 2, 'no command: exit 2');
  t.match(none.err.join('\n'), /usage: megabeam <command>/);
  for (const name of commandNames(true)) {
    const words = name.split(' ');
    for (const argv of [[...words, '--help'], [...words, '-h'], ['help', ...words]]) {
      const r = await run(...argv);
      t.equal(r.code, 0, `${argv.join(' ')}: exit 0`);
      t.match(r.out.join('\n'), new RegExp(`^usage: megabeam ${name === 'info' ? 'doctor' : name}`), `${argv.join(' ')}: usage`);
      t.match(r.out.join('\n'), /--help/, 'lists --help');
      t.same(r.err, [], 'nothing on stderr');
    }
  }
  const bench = await run('bench', '--help');
  t.equal(bench.code, 0, 'bench --help');
  t.match(bench.out.join('\n'), /bench attention/);
  oneLineError(t, await run('bench', 'nope'), 'bench', 'ERR_ARG', 2, 'unknown bench');
  oneLineError(t, await run('nope'), '', 'ERR_ARG', 2, 'unknown command');
  oneLineError(t, await run('help', 'nope'), 'help', 'ERR_ARG', 2, 'help of an unknown command');
});

t.test('unknown flags and stray arguments are errors for every command', async (t) => {
  for (const name of commandNames(true)) {
    const words = name.split(' ');
    oneLineError(t, await run(...words, '--bogus', '1'), name, 'ERR_ARG', 2, `${name} --bogus`, /unknown flag --bogus/);
    // launch takes the script and its arguments after its flags: a "stray" word is the script there;
    // plot takes the log file
    if (name !== 'launch' && name !== 'plot')
      oneLineError(t, await run(...words, 'stray'), name, 'ERR_ARG', 2, `${name} stray`, /unexpected argument "stray"/);
  }
  oneLineError(t, await run('launch'), 'launch', 'ERR_ARG', 2, 'launch without a script', /missing the script to run/);
  oneLineError(t, await run('demo', '--sequence', '512'), 'demo', 'ERR_ARG', 2, 'demo --sequence (issue 10)', /did you mean --seq/);
});

t.test('bad values: one line with code and hint, never a stack trace', async (t) => {
  oneLineError(t, await run('demo', '--seq', 'abc'), 'demo', 'ERR_ARG', 2, 'demo --seq abc', /--seq must be a size/);
  oneLineError(t, await run('demo', '--heads-kv', '3'), 'demo', 'ERR_ARG', 2, 'demo --heads-kv 3', /multiple of --kv-heads \(3\)/);
  oneLineError(t, await run('demo', '--kv-heads', '0'), 'demo', 'ERR_ARG', 2, 'demo --kv-heads 0', /≥ 1/);
  oneLineError(t, await run('demo', '--seq'), 'demo', 'ERR_ARG', 2, 'demo --seq (no value)', /needs a value/);
  oneLineError(t, await run('demo', '--seq', '1k', '--seq', '2k'), 'demo', 'ERR_ARG', 2, 'demo --seq twice', /given twice/);
  oneLineError(t, await run('demo', '--device', 'tpu'), 'demo', 'ERR_DEVICE', 1, 'demo --device tpu', /unknown device/);
  oneLineError(t, await run('bench', 'attention', '--seqs', 'abc'), 'bench attention', 'ERR_ARG', 2, 'bench attention --seqs abc');
  oneLineError(t, await run('bench', 'attention', '--seqs', '4k,'), 'bench attention', 'ERR_ARG', 2, 'bench attention --seqs 4k,');
  oneLineError(t, await run('bench', 'attention', '--dtype', 'f64'), 'bench attention', 'ERR_ARG', 2, '--dtype f64', /one of bf16, f16, f32/);
  oneLineError(t, await run('bench', 'rope', '--dtype', 'f64'), 'bench rope', 'ERR_ARG', 2, 'rope --dtype f64');
  oneLineError(t, await run('bench', 'attention', '--reps', '0'), 'bench attention', 'ERR_ARG', 2, 'attention --reps 0', /--reps must be ≥ 1/);
  oneLineError(t, await run('bench', 'rope', '--reps', '0'), 'bench rope', 'ERR_ARG', 2, 'rope --reps 0', /--reps must be ≥ 1/);
  oneLineError(t, await run('bench', 'rope', '--reps=1.5'), 'bench rope', 'ERR_ARG', 2, 'rope --reps=1.5', /integer/);
  oneLineError(t, await run('bench', 'model', '--keep-attention', 'auto,most'), 'bench model', 'ERR_ARG', 2, 'model --keep-attention auto,most', /auto, all, none or a layer count/);
  oneLineError(t, await run('bench', 'model', '--keep-attention', '33'), 'bench model', 'ERR_ARG', 2, 'model --keep-attention 33', /0\.\.32/);
  oneLineError(t, await run('bench', 'model', '--memory-budget', 'lots'), 'bench model', 'ERR_ARG', 2, 'model --memory-budget lots', /--memory-budget must be a size/);
  oneLineError(t, await run('theta', '--context', '4096', '--head-dim', '127'), 'theta', 'ERR_ARG', 2, 'theta odd head dim', /even/);
  oneLineError(t, await run('theta', '--context', '4096', '--head-dim', '128', '--base', '0.5'), 'theta', 'ERR_ROPE_CONFIG', 2, 'theta base 0.5', /base/);
  oneLineError(t, await run('doctor', '--json=maybe'), 'doctor', 'ERR_ARG', 2, 'doctor --json=maybe', /takes no value/);
  if (!hasCuda) {
    oneLineError(t, await run('demo', '--device', 'cuda'), 'demo', 'ERR_NO_CUDA', 1, 'demo --device cuda without a GPU', /doctor/);
    oneLineError(t, await run('bench', 'attention', '--device', 'cuda:0'), 'bench attention', 'ERR_NO_CUDA', 1, 'bench --device cuda:0 without a GPU');
  } else {
    oneLineError(t, await run('demo', '--device', `cuda:${cuda.deviceCount()}`), 'demo', 'ERR_DEVICE', 1, 'demo on a CUDA device that does not exist');
  }
});

t.test('one flag parser: --x=y and --x y, sizes, deprecated aliases', async (t) => {
  const specs = {
    seq: { type: 'size', help: '' }, seqs: { type: 'sizes', help: '' }, 'kv-heads': { type: 'int', help: '', aliases: ['heads-kv'] },
    base: { type: 'number', help: '' }, json: { type: 'bool', help: '' }, dtype: { type: 'choice', choices: ['bf16'], help: '' },
  } as const;
  t.same(parseFlags(['--seq=4k', '--base', '75e6', '--json'], specs), { seq: 4096, base: 75e6, json: true });
  t.same(parseFlags(['--seq', '4k', '--base=75e6', '--json=false'], specs), { seq: 4096, base: 75e6, json: false });
  t.same(parseFlags(['--seqs', '16k,64K,1M,512'], specs), { seqs: [16384, 65536, 1048576, 512] });
  const warnings: string[] = [];
  t.same(parseFlags(['--heads-kv', '8'], specs, (w) => warnings.push(w)), { 'kv-heads': 8 }, 'alias maps to the canonical name');
  t.match(warnings.join(), /--heads-kv is deprecated; use --kv-heads/);
  t.equal(parseSize('512K', 'x'), 524288);
  t.equal(parseSize('1G', 'x'), 2 ** 30);
  for (const bad of ['4kb', '-1', '1.5k', '', 'k', '0x10', '1e3']) throwsCode(t, () => parseSize(bad, '--seq'), 'ERR_ARG', `size ${JSON.stringify(bad)}`);
  throwsCode(t, () => parseFlags(['--base', 'NaN'], specs), 'ERR_ARG', '--base NaN');
  throwsCode(t, () => parseFlags(['--base', 'Infinity'], specs), 'ERR_ARG', '--base Infinity');
  throwsCode(t, () => parseFlags(['--kv-heads', '8', '--heads-kv', '8'], specs), 'ERR_ARG', 'alias and name both given');
  throwsCode(t, () => parseFlags(['-x'], specs), 'ERR_ARG', 'single-dash flag');
  throwsCode(t, () => parseFlags(['--seq', '--json'], specs), 'ERR_ARG', 'a flag where a value belongs');
  // Commands that take arguments (launch): the first non-flag, or --, ends the flags; the rest is untouched.
  const nproc = { nproc: { type: 'int', help: '' } } as const;
  t.same(parseCommandLine(['--nproc', '2', 'train.js', '--lr', '3'], nproc, () => {}, true), { values: { nproc: 2 }, args: ['train.js', '--lr', '3'] });
  t.same(parseCommandLine(['--nproc=2', '--', '--weird'], nproc, () => {}, true), { values: { nproc: 2 }, args: ['--weird'] });
  throwsCode(t, () => parseCommandLine(['--lr', '3', 'train.js'], nproc, () => {}, true), 'ERR_ARG', 'unknown flag before the script');
  const seen: string[][] = [];
  const launchLike: Command = { usage: 'megabeam x [flags] script [args...]', description: '', flags: nproc, takesArgs: true,
    run: async (_o, _io, args) => { seen.push(args); return 0; } };
  t.equal(await runCommand(launchLike, 'x', ['--nproc', '1', 's.js', '--a'], { out: () => {}, err: () => {} }), 0);
  t.same(seen, [['s.js', '--a']], 'run() receives the arguments');
  // Every command spells the shared concepts the same way.
  for (const name of commandNames()) {
    const r = await run(...name.split(' '), '--help');
    const text = r.out.join('\n');
    t.notMatch(text, /--heads-q |--heads-kv /, `${name}: no old head flag names as primary names`);
    if (/--json/.test(text)) t.match(text, /--json\s+print the result as JSON alone on stdout/, `${name}: --json means JSON on stdout`);
  }
});

t.test('--json: stdout is the JSON value alone; tables and progress go to stderr', async (t) => {
  const dir = t.testdir({});
  const cwd = process.cwd();
  process.chdir(dir);  // nothing may be written into the caller's directory by default
  t.teardown(() => process.chdir(cwd));
  const cases: [string[], (v: Record<string, unknown>) => boolean][] = [
    [['demo', '--device', 'cpu', '--seq', '128', '--heads', '2', '--kv-heads', '1', '--head-dim', '64', '--json'], (v) => v.seq === 128 && v.passed === true],
    [['bench', 'attention', '--device', 'cpu', '--seqs', '128,256', '--heads', '2', '--kv-heads', '1', '--head-dim', '64', '--reps', '1', '--json'],
      (v) => Array.isArray(v.rows) && (v.rows as { seq: number }[]).map((x) => x.seq).join() === '128,256'],
    [['bench', 'attention', '--device', 'cpu', '--seqs', '128', '--heads', '2', '--kv-heads', '1', '--head-dim', '64', '--reps', '1', '--rope', '--json'],
      (v) => Array.isArray(v.rows) && (v.rows as Record<string, unknown>[]).every((r) => typeof r.fwd_rope_s === 'number' &&
        r.fwd_rope_s > 0 && typeof r.bwd_rope_overhead_pct === 'number' && Number.isFinite(r.bwd_rope_overhead_pct) &&
        Number.isFinite(r.fwd_rope_overhead_min_pct) && (r.rope_kernel_s as number) > 0 && (r.rope_rounds as number) >= 9 &&
        (r.fwd_plain_min_s as number) <= (r.fwd_plain_batched_s as number) && (r.fwd_plain_batched_s as number) <= (r.fwd_plain_max_s as number))],
    [['bench', 'rope', '--device', 'cpu', '--tokens', '256', '--heads', '2', '--kv-heads', '1', '--head-dim', '64', '--reps', '1', '--json'],
      (v) => Array.isArray(v.rows) && (v.rows as unknown[]).length > 0],
    [['theta', '--context', '4k', '--head-dim', '64', '--base', '1e5', '--json'], (v) => v.context === 4096],
    [['doctor', '--json'], (v) => v.version === pkg.version],
    [['bench', 'gemm', '--device', 'cpu', '--tokens', '64', '--shapes', 'o', '--passes', 'fwd', '--reps', '1', '--json'],
      (v) => Array.isArray(v.rows) && (v.rows as { tokens: number }[]).every((r) => r.tokens === 64)],
    [['bench', 'nn', '--device', 'cpu', '--tokens', '64', '--hidden', '64', '--ffn', '128', '--vocab', '256', '--ce-tokens', '16', '--reps', '1', '--json'],
      (v) => Array.isArray(v.rows) && (v.rows as unknown[]).length > 0],
  ];
  for (const [argv, check] of cases) {
    const r = await run(...argv);
    t.equal(r.code, 0, `${argv.slice(0, 2).join(' ')}: exit 0 (${r.err.join(' | ').slice(0, 300)})`);
    t.equal(r.json.length, 1, 'one JSON value');
    t.equal(r.out.length, 1, 'stdout holds only the JSON value');
    t.doesNotThrow(() => JSON.parse(r.out[0]), 'stdout parses as JSON');
    t.ok(check(r.json[0] as Record<string, unknown>), `${argv.slice(0, 2).join(' ')}: content`);
  }
  // bench ring exits 1 when its timing bar fails (noise on a shared CPU): only the output contract is checked.
  const ring = await run('bench', 'ring', '--device', 'cpu', '--world', '2', '--seq', '256', '--heads', '2', '--kv-heads', '1',
    '--head-dim', '16', '--dtype', 'f32', '--json');
  t.ok(ring.code === 0 || ring.code === 1, `bench ring: exit ${ring.code} (${ring.err.join(' | ').slice(0, 300)})`);
  t.equal(ring.out.length, 1, 'bench ring: stdout holds only the JSON value');
  t.equal((ring.json[0] as { seq?: number } | undefined)?.seq, 256, 'bench ring: content');
  oneLineError(t, await run('bench', 'gemm', '--device', 'cpu', '--shapes', 'qkv,nope'), 'bench gemm', 'ERR_ARG', 2, 'bench gemm --shapes nope', /"nope" is not one of/);
  t.same(fs.readdirSync(dir), [], 'no files written into the working directory');
  const out = path.join(dir, 'sub', 'rope.json');
  const r = await run('bench', 'rope', '--device', 'cpu', '--tokens', '128', '--heads', '2', '--kv-heads', '1', '--head-dim', '32', '--reps', '1', '--out', out);
  t.equal(r.code, 0);
  t.ok(Array.isArray(JSON.parse(fs.readFileSync(out, 'utf8')).rows), '--out FILE writes the JSON there');
});

t.test('doctor: version, addon, build, CUDA status, optional library probes', async (t) => {
  const rep = await doctor();
  t.equal(rep.version, pkg.version);
  t.equal(rep.addon.loaded, true);
  t.ok(rep.addon.path && fs.existsSync(rep.addon.path), `addon path exists: ${rep.addon.path}`);
  t.ok(['prebuild', 'local build', 'MEGABEAM_ADDON'].includes(rep.addon.kind), `kind ${rep.addon.kind}`);
  t.ok(rep.build, 'buildInfo() is exported');
  t.equal(rep.build!.cuda, cuda.isBuilt(), 'buildInfo().cuda agrees with cudaInfo().built');
  if (rep.build!.cuda) {
    t.ok(rep.cuda!.architectures.length > 0 && rep.cuda!.architectures.every((a) => /^(sm|compute)_\d+a?$/.test(a)), `archs ${rep.cuda!.architectures}`);
    t.ok(rep.cuda!.compiledWith, 'compiled CUDA version');
  }
  t.equal(rep.cuda!.usable, cuda.isAvailable());
  if (rep.build!.cuda && !cuda.isAvailable() && rep.build!.libcudaFound === false) {
    // A CUDA build on a machine without a driver (CI): the reason says so, not "driver too old".
    t.match(cuda.unavailableReason(), /no NVIDIA driver installed/);
    t.notMatch(cuda.unavailableReason(), /insufficient|older/i);
    t.match(rep.cuda!.status, /no NVIDIA driver installed/);
  }
  t.equal(rep.gpus.length, cuda.deviceCount());
  const m = native() as unknown as Record<string, unknown>;
  const had = { nccl: m.ncclInfo, gemm: m.gemmInfo };
  if (typeof had.nccl !== 'function') t.equal(rep.libraries.nccl, 'not checked (this build has no probe)');
  // A probe, once a helper adds one, is called and shown as it answers.
  m.ncclInfo = () => ({ found: true, path: '/opt/nccl/libnccl.so.2', version: '2.28.3' });
  m.gemmInfo = () => { throw new Error('boom'); };
  t.teardown(() => { if (had.nccl) m.ncclInfo = had.nccl; else delete m.ncclInfo; if (had.gemm) m.gemmInfo = had.gemm; else delete m.gemmInfo; });
  const r = await run('doctor');
  t.equal(r.code, 0);
  const text = r.out.join('\n');
  t.match(text, /nccl\s+found 2\.28\.3 \(\/opt\/nccl\/libnccl\.so\.2\)/);
  t.match(text, /cublasLt \(gemm\)\s+not found: boom/);
  t.match(text, new RegExp(`megabeam\\s+${pkg.version.replace(/\./g, '\\.')}`));
  t.match(text, /addon\s+(prebuild|local build|MEGABEAM_ADDON): \//);
});

t.test('doctor: no driver is not "driver too old"', async (t) => {
  const base = { cuda: true, cudaArchs: ['sm_90a'], napiVersion: 8, compiler: 'gcc', arch: 'x64', cudaCompiledVersion: 13000, cudaRuntimeVersion: 13000 };
  const none = cudaStatus({ ...base, libcudaFound: false, cudaDriverVersion: 0, deviceCountError: 'cudaErrorInsufficientDriver' }, false, 'CUDA is not usable: cudaErrorInsufficientDriver', 0);
  t.match(none, /no NVIDIA driver installed/);
  t.notMatch(none, /older|too old|update/);
  const old = cudaStatus({ ...base, libcudaFound: true, cudaDriverVersion: 12020, deviceCountError: 'cudaErrorInsufficientDriver' }, false, '', 0);
  t.match(old, /driver \(CUDA 12\.2\) is older than this addon's CUDA runtime \(13\.0\)/);
  t.match(cudaStatus({ ...base, libcudaFound: true, cudaDriverVersion: 13000, deviceCountError: 'cudaErrorNoDevice' }, false, '', 0), /no CUDA device visible/);
  t.match(cudaStatus({ ...base, cuda: false }, false, '', 0), /CPU-only/);
});

// Fresh processes: a broken MEGABEAM_ADDON and the bin wrapper.
const tsxMain = ['--import', 'tsx', path.join(__dirname, 'helpers', 'cli-main.ts')];
function spawnCli(args: string[], env: Record<string, string | undefined>) {
  return spawnSync(process.execPath, [...tsxMain, ...args], { cwd: root, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120000 });
}

t.test('a bad MEGABEAM_ADDON: one coded line, and doctor explains', async (t) => {
  const bad = path.join(os.tmpdir(), 'megabeam-no-such-addon.node');
  const r = spawnCli(['demo', '--seq', '64'], { MEGABEAM_ADDON: bad, MEGABEAM_DEBUG: '' });
  t.equal(r.status, 1, `exit 1 (${r.stderr})`);
  const lines = r.stderr.trim().split('\n');
  t.equal(lines.length, 1, `one line: ${r.stderr}`);
  t.match(lines[0], /^megabeam demo: ERR_NATIVE: .* \(run `megabeam doctor`/);
  t.equal(r.stdout, '');
  const d = spawnCli(['doctor'], { MEGABEAM_ADDON: bad });
  t.equal(d.status, 1, 'doctor exits 1 when the addon cannot load');
  t.match(d.stdout, /addon\s+NOT LOADED: /);
  t.match(d.stdout, /MEGABEAM_ADDON is set/);
  t.notMatch(d.stderr, /\n\s+at /, 'no stack trace');
});

const dist = path.join(root, 'dist', 'cli.js');
const distFresh = fs.existsSync(dist) && fs.statSync(dist).mtimeMs >= fs.statSync(path.join(root, 'lib', 'cli.ts')).mtimeMs;
t.test('bin/megabeam.js (the built CLI)', { skip: distFresh ? false : 'dist/cli.js missing or older than lib/cli.ts (npm run build:ts)' }, async (t) => {
  const bin = path.join(root, 'bin', 'megabeam.js');
  const v = spawnSync(process.execPath, [bin, '--version'], { encoding: 'utf8' });
  t.equal(v.status, 0);
  t.equal(v.stdout.trim(), pkg.version);
  const e = spawnSync(process.execPath, [bin, 'demo', '--seq', 'abc'], { encoding: 'utf8' });
  t.equal(e.status, 2);
  t.match(e.stderr, /^megabeam demo: ERR_ARG: --seq must be a size/);
  t.equal(e.stderr.trim().split('\n').length, 1);
  // A closed pipe (`| head -1`) ends quietly, without an EPIPE stack trace.
  const p = spawnSync('sh', ['-c', `"${process.execPath}" "${bin}" theta --context 64k --head-dim 128 --base 1e6 | head -1`], { encoding: 'utf8' });
  t.equal(p.stdout.trim().split('\n').length, 1);
  t.notMatch(p.stderr, /EPIPE|\n\s+at /, 'no EPIPE trace');
});

t.test('an unwritable --out / --plot path is a one-line ERR_ARG', async (t) => {
  const missing = path.join(os.tmpdir(), 'megabeam-no-such-dir', 'x', 'p.svg');
  oneLineError(t, await run('theta', '--context', '1k', '--head-dim', '16', '--base', '1e4', '--plot', missing), 'theta', 'ERR_ARG', 2, 'theta --plot into a missing dir', /ENOENT/);
  const file = path.join(t.testdir({ f: 'x' }), 'f');
  oneLineError(t, await run('bench', 'rope', '--device', 'cpu', '--tokens', '64', '--heads', '1', '--kv-heads', '1', '--head-dim', '16', '--reps', '1',
    '--out', path.join(file, 'r.json')), 'bench rope', 'ERR_ARG', 2, 'bench rope --out under a file', /EEXIST|ENOTDIR/);
});
