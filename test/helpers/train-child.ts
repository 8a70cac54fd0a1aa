// Child process of test/train.test.ts: trains (args: kind dir log resume(0|1) hangAtStep), and when
// hangAtStep > 0 signals readiness by a file at that step's batch and then waits to be SIGKILLed mid-step.
import * as fs from 'fs';
import * as path from 'path';
import { run, passkeyBatch } from './train-run';
import type { BatchContext } from '../../lib/train/train';

const [kind, dir, log, resume, hang] = process.argv.slice(2);
const hangAt = Number(hang);
const base = passkeyBatch();
const data = async (ctx: BatchContext) => {
  if (ctx.step === hangAt && ctx.micro === 1) {
    fs.writeFileSync(path.join(dir, 'HANGING'), String(ctx.step));
    await new Promise((r) => setTimeout(r, 60_000));
  }
  return base(ctx);
};
run(kind as 'passkey', { data, checkpoint: { dir, every: 3, keep: 2 }, resume: resume === '1', log, modelSeed: resume === '1' ? 77 : 5 })
  .then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
