/* A stand-in for libnccl.so.2 that only tests the run-time loader (symbols, version check, error
 * messages): built by test/dist-tcp.test.ts with the C compiler. FAKE_NCCL_VERSION sets ncclGetVersion's
 * answer; -DFAKE_NCCL_MISSING leaves ncclCommAbort out. Nothing here communicates. */
#include <string.h>
#ifndef FAKE_NCCL_VERSION
#define FAKE_NCCL_VERSION 22803
#endif
typedef struct { char internal[128]; } ncclUniqueId;
int ncclGetVersion(int* v) { *v = FAKE_NCCL_VERSION; return 0; }
int ncclGetUniqueId(ncclUniqueId* id) { memset(id, 7, sizeof *id); return 0; }
const char* ncclGetErrorString(int r) { (void)r; return "fake"; }
#define STUB(name) int name(void) { return 3; }
STUB(ncclCommInitRank) STUB(ncclCommInitAll) STUB(ncclCommDestroy) STUB(ncclCommGetAsyncError)
STUB(ncclGroupStart) STUB(ncclGroupEnd) STUB(ncclSend) STUB(ncclRecv) STUB(ncclAllReduce) STUB(ncclAllGather)
STUB(ncclReduceScatter) STUB(ncclBroadcast)
#ifndef FAKE_NCCL_MISSING
STUB(ncclCommAbort)
#endif
