// Jobs for the launcher tests. Default: rank 1 fails with exit code 7 while rank 0 waits (as a rank stuck in a
// call would). "sleep": every rank waits until a signal ends it and reports the signal.
const rank = Number(process.env.MEGABEAM_RANK);
if (process.argv[2] === 'sleep') {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => { console.log(`got ${sig}`); process.exit(130); });
  console.log('sleeping');
  setTimeout(() => {}, 60000);
} else if (rank === 1) {
  setTimeout(() => process.exit(7), 300);
} else {
  console.log('waiting');
  setTimeout(() => {}, 60000);
}
