// `megabeam` from the TypeScript sources, for tests that need a fresh process (node --import tsx).
import { main } from '../../lib/cli';

main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
