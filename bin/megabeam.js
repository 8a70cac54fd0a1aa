#!/usr/bin/env node
'use strict';
// The CLI lives in dist/cli.js (built from lib/cli.ts by `npm run build:ts`).
require('../dist/cli.js')
  .main(process.argv.slice(2))
  .then((code) => { process.exitCode = code; }, (e) => { console.error(e && e.stack ? e.stack : e); process.exitCode = 1; });
