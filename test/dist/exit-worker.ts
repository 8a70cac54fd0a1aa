// A job for the launcher test: rank 1 fails with exit code 7, rank 0 waits (as a rank stuck in a call would).
const rank = Number(process.env.MEGABEAM_RANK);
if (rank === 1) setTimeout(() => process.exit(7), 300);
else { console.log('waiting'); setTimeout(() => {}, 60000); }
