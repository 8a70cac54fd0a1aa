// Where a process sits in a job: rank, world size, local rank and the master's address, read from the
// variables that launchers set. In order of precedence:
//   megabeam launch  MEGABEAM_RANK, MEGABEAM_WORLD_SIZE, MEGABEAM_LOCAL_RANK, MEGABEAM_LOCAL_WORLD_SIZE,
//                    MEGABEAM_MASTER_ADDR, MEGABEAM_MASTER_PORT (it sets torchrun's names as well)
//   torchrun         RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
//   Slurm (srun)     SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; master: MASTER_ADDR, else the first host of
//                    SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST); port: MASTER_PORT, else from SLURM_JOB_ID
//   Open MPI         OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK/LOCAL_SIZE;
//                    master: MASTER_ADDR (127.0.0.1 when every rank is on this host)
// With none of them: a world of one.
import { ArgumentError } from '../errors';

export type EnvSource = 'megabeam' | 'torchrun' | 'slurm' | 'openmpi' | 'none';

export interface DistEnv {
  rank: number;
  worldSize: number;
  localRank: number;
  localWorldSize: number;
  masterAddr: string;
  masterPort: number;
  source: EnvSource;
}

export const DEFAULT_PORT = 29500;

type Env = Record<string, string | undefined>;

function int(env: Env, name: string, min = 0): number | undefined {
  const v = env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min) throw new ArgumentError(`${name}=${JSON.stringify(v)} is not an integer >= ${min}`);
  return n;
}

/** First host of a Slurm node list: "gpu[03-05,9],cpu1" -> "gpu03". */
export function firstSlurmHost(list: string): string {
  const s = list.trim();
  const m = /^([^,[]+)(?:\[([^\]]+)\])?/.exec(s);
  if (!m) return s;
  if (!m[2]) return m[1];
  const first = m[2].split(',')[0].split('-')[0];
  return m[1] + first;
}

function port(env: Env, fallback: number): number {
  const p = int(env, 'MASTER_PORT', 0);
  if (p !== undefined && p > 65535) throw new ArgumentError(`MASTER_PORT=${p} is not a TCP port`);
  return p ?? fallback;
}

export function readDistEnv(env: Env = process.env): DistEnv {
  const check = (d: DistEnv): DistEnv => {
    if (d.worldSize < 1) throw new ArgumentError(`${d.source}: world size must be >= 1`);
    if (d.rank >= d.worldSize) throw new ArgumentError(`${d.source}: rank ${d.rank} is not below the world size ${d.worldSize}`);
    if (d.masterPort < 0 || d.masterPort > 65535) throw new ArgumentError(`${d.source}: master port ${d.masterPort} is not a TCP port`);
    return d;
  };
  const mbRank = int(env, 'MEGABEAM_RANK');
  if (mbRank !== undefined) {
    const worldSize = int(env, 'MEGABEAM_WORLD_SIZE', 1) ?? 1;
    return check({
      rank: mbRank, worldSize,
      localRank: int(env, 'MEGABEAM_LOCAL_RANK') ?? mbRank,
      localWorldSize: int(env, 'MEGABEAM_LOCAL_WORLD_SIZE', 1) ?? worldSize,
      masterAddr: env.MEGABEAM_MASTER_ADDR || '127.0.0.1',
      masterPort: int(env, 'MEGABEAM_MASTER_PORT') ?? DEFAULT_PORT,
      source: 'megabeam',
    });
  }
  const rank = int(env, 'RANK');
  const world = int(env, 'WORLD_SIZE', 1);
  if (rank !== undefined && world !== undefined) {
    return check({
      rank, worldSize: world,
      localRank: int(env, 'LOCAL_RANK') ?? rank,
      localWorldSize: int(env, 'LOCAL_WORLD_SIZE', 1) ?? world,
      masterAddr: env.MASTER_ADDR || '127.0.0.1',
      masterPort: port(env, DEFAULT_PORT),
      source: 'torchrun',
    });
  }
  const sRank = int(env, 'SLURM_PROCID');
  const sWorld = int(env, 'SLURM_NTASKS', 1);
  if (sRank !== undefined && sWorld !== undefined) {
    const nodes = env.SLURM_STEP_NODELIST || env.SLURM_JOB_NODELIST || '';
    const jobId = int(env, 'SLURM_JOB_ID');
    const perNode = env.SLURM_NTASKS_PER_NODE ? Number.parseInt(env.SLURM_NTASKS_PER_NODE, 10) : NaN;
    return check({
      rank: sRank, worldSize: sWorld,
      localRank: int(env, 'SLURM_LOCALID') ?? 0,
      localWorldSize: Number.isSafeInteger(perNode) && perNode > 0 ? perNode : sWorld,
      masterAddr: env.MASTER_ADDR || (nodes ? firstSlurmHost(nodes) : '127.0.0.1'),
      // Every rank computes the same port; jobs sharing a node get different ones.
      masterPort: port(env, jobId !== undefined ? 20000 + (jobId % 20000) : DEFAULT_PORT),
      source: 'slurm',
    });
  }
  const oRank = int(env, 'OMPI_COMM_WORLD_RANK');
  const oWorld = int(env, 'OMPI_COMM_WORLD_SIZE', 1);
  if (oRank !== undefined && oWorld !== undefined) {
    const localSize = int(env, 'OMPI_COMM_WORLD_LOCAL_SIZE', 1) ?? oWorld;
    if (!env.MASTER_ADDR && localSize !== oWorld)
      throw new ArgumentError('Open MPI across hosts: set MASTER_ADDR (and MASTER_PORT) to rank 0\'s host, e.g. mpirun -x MASTER_ADDR=host0');
    return check({
      rank: oRank, worldSize: oWorld,
      localRank: int(env, 'OMPI_COMM_WORLD_LOCAL_RANK') ?? oRank,
      localWorldSize: localSize,
      masterAddr: env.MASTER_ADDR || '127.0.0.1',
      masterPort: port(env, DEFAULT_PORT),
      source: 'openmpi',
    });
  }
  return { rank: 0, worldSize: 1, localRank: 0, localWorldSize: 1, masterAddr: '127.0.0.1', masterPort: 0, source: 'none' };
}
