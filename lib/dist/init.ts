// Entry points for process groups: init() joins the job this process belongs to (by environment variables),
// group() makes one group over several GPUs of this process.
import { DeviceLike, DeviceString, cuda, parseDevice } from '../device';
import { ArgumentError, DeviceError, NcclUnavailableError } from '../errors';
import type { Backend, Group } from './types';
import { DistEnv, readDistEnv } from './rendezvous';
import { TcpGroup } from './tcp';
import { NcclGroup, ncclInfo, ncclLocalGroups, ncclProcessGroup } from './nccl';

/** Default timeout of every call: MEGABEAM_TIMEOUT_MS, else 5 minutes. */
export function defaultTimeoutMs(): number {
  const v = process.env.MEGABEAM_TIMEOUT_MS;
  if (v !== undefined && v !== '') {
    const n = Number(v);
    if (!(n > 0)) throw new ArgumentError(`MEGABEAM_TIMEOUT_MS=${JSON.stringify(v)} is not a positive number`);
    return n;
  }
  return 300_000;
}

export interface InitOptions {
  /** 'nccl' (default when the device is CUDA) or 'tcp' (default for the CPU). */
  backend?: Exclude<Backend, 'local'>;
  /** Default timeout of every call and of the rendezvous, ms. */
  timeoutMs?: number;
  /** This rank's device. Default: MEGABEAM_DEVICE, else cuda:<local rank> when CUDA is usable, else cpu. */
  device?: DeviceLike;
  /** Override what the environment says (all four, or none). */
  rank?: number;
  worldSize?: number;
  masterAddr?: string;
  masterPort?: number;
}

function checkTimeout(t: unknown): number {
  const v = t ?? defaultTimeoutMs();
  if (typeof v !== 'number' || !(v > 0)) throw new ArgumentError(`timeoutMs must be a positive number, got ${String(t)}`);
  return v;
}

/** Where this process sits in its job (launcher variables; see rendezvous.ts). */
export function distEnv(): DistEnv {
  return readDistEnv(process.env);
}

/**
 * Joins this process's job: rendezvous at the master (rank 0), then a TCP group (CPU tensors) or an NCCL
 * communicator (CUDA tensors; the unique id travels over TCP).
 */
export async function init(opts: InitOptions = {}): Promise<Group> {
  if (opts === null || typeof opts !== 'object') throw new ArgumentError('init: options must be an object');
  const env = distEnv();
  const rank = opts.rank ?? env.rank;
  const worldSize = opts.worldSize ?? env.worldSize;
  const masterAddr = opts.masterAddr ?? env.masterAddr;
  const masterPort = opts.masterPort ?? env.masterPort;
  const timeoutMs = checkTimeout(opts.timeoutMs);
  let dev: DeviceLike | undefined = opts.device ?? (process.env.MEGABEAM_DEVICE as DeviceLike | undefined);
  if (dev === undefined) dev = opts.backend !== 'tcp' && cuda.isAvailable() ? (`cuda:${env.localRank % cuda.deviceCount()}` as DeviceLike) : 'cpu';
  const backend = opts.backend ?? (dev === 'cpu' ? 'tcp' : 'nccl');
  if (backend !== 'tcp' && backend !== 'nccl') throw new ArgumentError(`init: backend must be 'tcp' or 'nccl', got ${JSON.stringify(backend)}`);
  if (backend === 'nccl' && dev === 'cpu') throw new DeviceError("init: the nccl backend needs a CUDA device (use backend 'tcp' for CPU tensors)");
  const { index, name } = parseDevice(dev, 'init: device');
  if (backend === 'nccl') {
    const info = ncclInfo();
    if (!info.found) throw new NcclUnavailableError(info.error ?? 'NCCL was not found');
  }
  const tcp = await TcpGroup.connect({ rank, worldSize, masterAddr, masterPort, timeoutMs, device: backend === 'tcp' ? name : 'cpu' });
  if (backend === 'tcp') return tcp;
  try {
    return await ncclProcessGroup(tcp, index, timeoutMs);
  } catch (e) {
    tcp.abort(`NCCL setup failed on rank ${rank}: ${(e as Error).message}`);
    await tcp.destroy();
    throw e;
  }
}

export interface GroupOptions {
  /** CUDA device indices (or 'cuda:N'), one rank each, in rank order. */
  devices: readonly (number | DeviceString)[];
  timeoutMs?: number;
}

/** One process driving several GPUs: a group of devices.length ranks over NCCL (ncclCommInitAll). */
export async function group(opts: GroupOptions): Promise<Group[]> {
  if (!opts || typeof opts !== 'object' || !Array.isArray(opts.devices) || opts.devices.length === 0)
    throw new ArgumentError('group: give { devices: [0, 1, ...] } (CUDA device indices)');
  const timeoutMs = checkTimeout(opts.timeoutMs);
  if (!cuda.isAvailable()) throw new DeviceError(`group: NCCL groups need CUDA GPUs: ${cuda.unavailableReason()}`, 'ERR_NO_CUDA');
  const idx = opts.devices.map((d) => (typeof d === 'number' ? parseDevice(`cuda:${d}`, 'group: device').index : parseDevice(d, 'group: device').index));
  if (new Set(idx).size !== idx.length) throw new ArgumentError('group: a device is listed twice');
  const info = ncclInfo();
  if (!info.found) throw new NcclUnavailableError(info.error ?? 'NCCL was not found');
  return ncclLocalGroups(idx, timeoutMs);
}

export { ncclInfo, NcclGroup, TcpGroup };
