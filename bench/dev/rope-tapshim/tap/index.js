// A minimal stand-in for the `tap` API used by test/rope.test.ts, for running the compiled test on a
// device machine that has node but no node_modules: NODE_PATH=bench/dev/rope-tapshim node <test.js>.
// Subtests run in order; failures are printed; the exit code is the number of failures (capped).
'use strict';
const util = require('util');

let pass = 0, fail = 0, skip = 0;
const queue = [];

function eq(a, b) {
  if (Object.is(a, b)) return true;
  if (a == null || b == null || typeof a !== 'object' || typeof b !== 'object') return a == b; // eslint-disable-line eqeqeq
  if (ArrayBuffer.isView(a) || Array.isArray(a)) {
    if (!(ArrayBuffer.isView(b) || Array.isArray(b)) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!eq(a[i], b[i])) return false;
    return true;
  }
  const ka = Object.keys(a), kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k) => eq(a[k], b[k]));
}

function makeT(prefix) {
  const sub = [];
  const t = {
    comment: (m) => console.log(`# ${prefix}${m}`),
    ok: (v, m) => report(!!v, m),
    pass: (m) => report(true, m),
    fail: (m) => report(false, m),
    equal: (a, b, m) => report(Object.is(a, b) || a === b, m, () => `got ${util.inspect(a)} want ${util.inspect(b)}`),
    same: (a, b, m) => report(eq(a, b), m, () => 'deep values differ'),
    test: (name, opts, fn) => { if (typeof opts === 'function') { fn = opts; opts = {}; } sub.push({ name, opts, fn }); },
  };
  function report(ok, m, why) {
    if (ok) pass++;
    else { fail++; console.log(`not ok - ${prefix}${m ?? ''}${why ? ` (${why()})` : ''}`); }
  }
  t._run = async () => {
    for (const s of sub) {
      if (s.opts && s.opts.skip) { skip++; console.log(`# SKIP ${prefix}${s.name}: ${s.opts.skip}`); continue; }
      const c = makeT(`${prefix}${s.name} > `);
      const t0 = Date.now();
      try { await s.fn(c); await c._run(); } catch (e) { fail++; console.log(`not ok - ${prefix}${s.name} threw: ${e && e.stack || e}`); }
      console.log(`# done ${prefix}${s.name} (${Date.now() - t0} ms)`);
    }
  };
  return t;
}

const root = makeT('');
module.exports = root;
module.exports.default = root;
module.exports.Test = class {};
setImmediate(async () => {
  await root._run();
  console.log(`# pass ${pass} fail ${fail} skip ${skip}`);
  process.exitCode = Math.min(fail, 100);
});
