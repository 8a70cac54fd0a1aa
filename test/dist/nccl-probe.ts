// Prints what a fresh process sees of NCCL (the loader runs once per process, so tests that change
// MEGABEAM_NCCL start this script): { info, group: error code + message of dist.group({devices:[0]}) }.
import { ncclInfo, group } from '../../lib/dist/init';
import { MegabeamError } from '../../lib/errors';

(async () => {
  const out: Record<string, unknown> = { info: ncclInfo() };
  try {
    const gs = await group({ devices: [0] });
    out.group = 'ok';
    await Promise.all(gs.map((g) => g.destroy()));
  } catch (e) {
    out.group = { code: (e as MegabeamError).code, message: (e as Error).message };
  }
  console.log(JSON.stringify(out));
})();
