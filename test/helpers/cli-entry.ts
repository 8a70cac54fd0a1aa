// Runs the CLI from the TypeScript sources (tests start `megabeam launch` with it: node --import tsx).
import { main } from '../../lib/cli';
main(process.argv.slice(2)).then((c) => { process.exitCode = c; }, (e) => { console.error(e); process.exitCode = 1; });
