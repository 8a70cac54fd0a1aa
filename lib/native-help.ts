// The message of ERR_NATIVE when the addon cannot be loaded: one line (the CLI prints one line), saying
// what failed and what to do. npm 11 skips dependencies' install scripts unless allowed, so an install
// on a platform without a prebuild "succeeds" and this message is the first thing the user sees.

export function nativeLoadMessage(e: unknown, override: string | undefined): string {
  const reason = (e instanceof Error ? e.message : String(e)).split('\n')[0].trim();
  if (override) {
    return `MEGABEAM_ADDON=${override} could not be loaded (${reason}); unset it to use the installed addon, or point it at a megabeam.node built for this platform`;
  }
  const where = `${process.platform}-${process.arch}`;
  return `megabeam's native addon could not be loaded on ${where} (${reason}). Prebuilds cover linux-x64 and linux-arm64 ` +
    '(glibc >= 2.32, GCC 12 runtime); elsewhere install Python 3, make and a C++17 compiler, then run ' +
    '`npm rebuild megabeam` (npm >= 11 first needs `npm install-scripts approve megabeam`), or set MEGABEAM_ADDON to a built megabeam.node';
}
