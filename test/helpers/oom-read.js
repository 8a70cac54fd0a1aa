// Child process for test/runtime.test.ts, plain JS (TypeScript loaders need WebAssembly, which a small
// address-space limit forbids): under `ulimit -v`, reading back a tensor too large to copy out must
// reject with ERR_OOM (not abort in V8), and the process keeps working.
const n = require(process.env.MEGABEAM_ADDON);
(async () => {
  const count = Number(process.argv[2]);
  const x = n.empty([count], 0, -1);
  n.fill(x, 1);
  let code = 'resolved';
  try {
    await n.read(x, false);
  } catch (e) {
    code = `${e.code || String(e)}`; if (process.env.OOM_DEBUG) console.log(e.message);
  }
  x.dispose();
  const y = n.empty([10], 0, -1);
  n.fill(y, 2);
  const v = await n.read(y, false);
  console.log(`RESULT ${code} ${v.length === 10 && v[9] === 2 ? 'alive' : 'broken'}`);
})().catch((e) => { console.log(`FAIL ${e && e.stack}`); process.exitCode = 1; });
