// Device strings: 'cpu', 'cuda' (= 'cuda:0') and 'cuda:N'.
import { DeviceError } from './errors';
import { native } from './native';

export type DeviceString = 'cpu' | `cuda:${number}`;
export type DeviceLike = 'cpu' | 'cuda' | `cuda:${number}`;

export interface CudaDeviceInfo { index: number; name: string; totalMemory: number }
interface CudaInfo { built: boolean; available: boolean; count: number; reason: string; devices: CudaDeviceInfo[]; cpuThreads: number }

let info: CudaInfo | undefined;
function cudaInfo(): CudaInfo {
  return (info ??= native().cudaInfo() as CudaInfo);
}

export const cuda = {
  /** True when the addon was built with CUDA and a usable GPU and driver are present. */
  isAvailable: (): boolean => cudaInfo().available,
  deviceCount: (): number => cudaInfo().count,
  /** Why CUDA cannot be used ('' when it can). */
  unavailableReason: (): string => cudaInfo().reason,
  /** Whether this addon contains CUDA kernels at all. */
  isBuilt: (): boolean => cudaInfo().built,
  devices: (): CudaDeviceInfo[] => cudaInfo().devices.map((d) => ({ ...d })),
};

/** Devices usable now: 'cpu' then each CUDA device. */
export function devices(): DeviceString[] {
  const out: DeviceString[] = ['cpu'];
  for (let i = 0; i < cuda.deviceCount(); i++) out.push(`cuda:${i}`);
  return out;
}

export function cpuThreads(): number {
  return cudaInfo().cpuThreads;
}

/** Parses and checks a device; returns its native index (-1 for the CPU) and canonical name. */
export function parseDevice(d: unknown, what = 'device'): { index: number; name: DeviceString } {
  if (d === undefined || d === 'cpu') return { index: -1, name: 'cpu' };
  if (typeof d !== 'string') throw new DeviceError(`${what}: expected 'cpu', 'cuda' or 'cuda:N', got ${typeof d}`);
  const m = /^cuda(?::(\d+))?$/.exec(d);
  if (!m) throw new DeviceError(`${what}: unknown device ${JSON.stringify(d)} (expected 'cpu', 'cuda' or 'cuda:N')`);
  const index = m[1] === undefined ? 0 : Number(m[1]);
  if (!cuda.isAvailable()) throw new DeviceError(`${what} ${d}: ${cuda.unavailableReason()}`, 'ERR_NO_CUDA');
  if (!Number.isSafeInteger(index) || index >= cuda.deviceCount())
    throw new DeviceError(`${what}: ${d} does not exist (${cuda.deviceCount()} CUDA device(s))`);
  return { index, name: `cuda:${index}` };
}

export function deviceIndex(name: DeviceString): number {
  return name === 'cpu' ? -1 : Number(name.slice(5));
}
