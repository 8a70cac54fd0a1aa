// `megabeam plot log.jsonl --out loss.svg` (the command lives with `megabeam train` in ./train).
import { plotCommand, plotCli } from './train';

export const command = plotCommand;
export { plotCli };
