// Process groups (the `dist` namespace): the Group contract and its backends.
// "local": W virtual ranks in one process on one device (tests, single-GPU measurement of the ring).
export type { Backend, ReduceOp, CommOptions, P2POp, Group } from './types';
export { localGroups, LocalGroupOptions } from './local';
