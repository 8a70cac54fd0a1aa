// Which devices the tests can use, and a skip reason for CUDA cases on machines without a GPU.
import { cuda } from '../../lib/device';

export const hasCuda = cuda.isAvailable();
export const cudaCount = hasCuda ? cuda.deviceCount() : 0;
export const noCudaReason = hasCuda ? false : `no usable CUDA GPU: ${cuda.unavailableReason()}`;
/** Test options: { skip: reason } when there is no GPU. */
export const gpu = { skip: noCudaReason };
export const gpu2 = { skip: cudaCount >= 2 ? false : `needs 2 CUDA GPUs (have ${cudaCount})` };
/** Devices to run a device-generic test on. */
export const testDevices: ('cpu' | 'cuda')[] = hasCuda ? ['cpu', 'cuda'] : ['cpu'];
