// Preload for running examples/*.js against the TypeScript sources (no dist/ build needed in tests):
// `require('megabeam')` resolves to lib/index.ts, compiled on the fly by tsx.
const Module = require('module');
const path = require('path');
const orig = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  if (request === 'megabeam') return path.join(__dirname, '..', '..', 'lib', 'index.ts');
  return orig.call(this, request, ...rest);
};
