// `megabeam` from the TypeScript sources, for tests that need a fresh process (node --import tsx).
import { main } from '../../lib/cli';

for (const s of [process.stdout, process.stderr]) s.on('error', (e: NodeJS.ErrnoException) => { if (e.code === 'EPIPE') process.exit(0); throw e; });
main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
