// A runnable process-group example. Each rank makes a tensor, the group sums it, rank 0 prints the result.
//
//   npx megabeam launch --nproc 2 examples/dist-allreduce.js            # CPU tensors over TCP
//   npx megabeam launch --nproc 2 --device cuda examples/dist-allreduce.js   # one GPU per rank over NCCL
//
// Any launcher that sets torchrun's, Slurm's or Open MPI's variables works too, e.g.
//   srun -n 8 node examples/dist-allreduce.js
'use strict';
const { dist, tensor } = require('megabeam');

async function main() {
  const g = await dist.init({ timeoutMs: 60_000 }); // backend: nccl on a CUDA device, tcp on the CPU
  console.log(`rank ${g.rank} of ${g.worldSize} on ${g.device} (${g.backend})`);

  const x = tensor([g.rank + 1, 10 * (g.rank + 1)], { dtype: 'bf16', device: g.device });
  await g.allReduce(x);                                     // in place; bf16 sums accumulate in fp32
  const all = tensor(new Float32Array(2 * g.worldSize), { dtype: 'bf16', device: g.device });
  await g.allGather(all, x);                                // every rank's (reduced) x, rank-major

  // A ring step: send to the next rank, receive from the previous one, as one batch (never deadlocks).
  const mine = tensor([g.rank], { device: g.device });
  const fromPrev = tensor([0], { device: g.device });
  await g.batchSendRecv([
    { op: 'send', tensor: mine, peer: (g.rank + 1) % g.worldSize },
    { op: 'recv', tensor: fromPrev, peer: (g.rank + g.worldSize - 1) % g.worldSize },
  ]);
  await g.barrier();
  if (g.rank === 0) console.log('sum', Array.from(await x.toArray()), 'gathered', Array.from(await all.toArray()));
  console.log(`rank ${g.rank} got ${(await fromPrev.toArray())[0]} from rank ${(g.rank + g.worldSize - 1) % g.worldSize}`);
  await g.destroy();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
