#!/usr/bin/env node
'use strict';
// The CLI lives in dist/cli.js (built from lib/cli.ts by `npm run build:ts`). Errors are printed by the
// CLI itself as one line with a code; this wrapper only guards against a missing build or a bug.
let cli;
try {
  cli = require('../dist/cli.js');
} catch (e) {
  const missing = e && e.code === 'MODULE_NOT_FOUND' && String(e.message).includes('dist/cli.js');
  console.error(missing
    ? 'megabeam: ERR_NATIVE: dist/cli.js is missing (a git checkout needs `npm run build:ts` first)'
    : `megabeam: cannot start: ${e && e.message ? String(e.message).split('\n')[0] : e} (MEGABEAM_DEBUG=1 for details)`);
  if (process.env.MEGABEAM_DEBUG && e && e.stack) console.error(e.stack);
  process.exit(1);
}
// `megabeam theta | head`: a closed pipe ends the output quietly, not with an EPIPE stack trace.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (e) => { if (e && e.code === 'EPIPE') process.exit(process.exitCode || 0); else throw e; });
}
cli.main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (e) => {
    console.error(`megabeam: unexpected error: ${e && e.message ? String(e.message).split('\n')[0] : e} (MEGABEAM_DEBUG=1 for a stack trace)`);
    if (process.env.MEGABEAM_DEBUG && e && e.stack) console.error(e.stack);
    process.exitCode = 1;
  },
);
