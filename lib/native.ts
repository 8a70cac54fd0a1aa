// Loads the addon on first use: a prebuild or build/Release through node-gyp-build, or the file
// named by MEGABEAM_ADDON (for side builds). A failure becomes ERR_NATIVE with the reason.
import * as path from 'path';
import { NativeLoadError } from './errors';
import { nativeLoadMessage } from './native-help';

/* eslint-disable @typescript-eslint/no-explicit-any */
export type NativeHandle = { dispose(): void; isDisposed(): boolean };
export type Native = Record<string, any> & {
  TensorHandle: new () => NativeHandle;
};

let cached: Native | undefined;
let failure: Error | undefined;

export function native(): Native {
  if (cached) return cached;
  if (failure) throw failure;
  try {
    const override = process.env.MEGABEAM_ADDON;
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    cached = override ? require(path.resolve(override)) : require('node-gyp-build')(path.join(__dirname, '..'));
    return cached!;
  } catch (e) {
    failure = new NativeLoadError(nativeLoadMessage(e, process.env.MEGABEAM_ADDON));
    throw failure;
  }
}
