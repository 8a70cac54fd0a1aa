// Process groups (the `dist` namespace): the Group contract and its backends.
// "local": W virtual ranks in one process on one device (tests, single-GPU measurement of the ring).
export type { Backend, ReduceOp, CommOptions, P2POp, Group } from './types';
export { localGroups, LocalGroupOptions } from './local';
export { init, group, distEnv, defaultTimeoutMs, InitOptions, GroupOptions } from './init';
export { ncclInfo, NcclInfo, NcclGroup } from './nccl';
export { TcpGroup, TcpGroupOptions } from './tcp';
export { readDistEnv, DistEnv, EnvSource } from './rendezvous';
