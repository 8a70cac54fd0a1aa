// NCCL, loaded at run time. The addon never links libnccl: it is found and dlopen'ed on first use, so
// megabeam loads (and runs on one GPU or the CPU) on machines without NCCL, and multi-GPU calls say
// what is missing (ERR_NO_NCCL). The build machine has no nccl.h, so the small part of NCCL's C ABI
// we call is declared here. It is the stable 2.x ABI (unchanged since 2.10 for what we use; checked
// against nccl.h of 2.18-2.28): ncclUniqueId is 128 bytes passed by value, enums are C ints.
//
// This header needs no CUDA headers (streams are void*), so the loader and ncclInfo() are in every
// build; the code that issues collectives (nccl_comm.cpp) is compiled only with MEGABEAM_CUDA.
#pragma once
#include <string>

namespace mb {
namespace nccl {

struct ncclComm;
typedef ncclComm* ncclComm_t;
constexpr int kUniqueIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES
struct ncclUniqueId { char internal[kUniqueIdBytes]; };
static_assert(sizeof(ncclUniqueId) == 128, "ncclUniqueId is 128 bytes");

// ncclResult_t
typedef int Result;
enum : int {
  ncclSuccess = 0, ncclUnhandledCudaError = 1, ncclSystemError = 2, ncclInternalError = 3,
  ncclInvalidArgument = 4, ncclInvalidUsage = 5, ncclRemoteError = 6, ncclInProgress = 7,
};
// ncclRedOp_t (ncclAvg since 2.10)
typedef int RedOp;
enum : int { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 };
// ncclDataType_t (ncclBfloat16 = 9 since 2.10)
typedef int DataType;
enum : int {
  ncclInt8 = 0, ncclUint8 = 1, ncclInt32 = 2, ncclUint32 = 3, ncclInt64 = 4, ncclUint64 = 5,
  ncclFloat16 = 6, ncclFloat32 = 7, ncclFloat64 = 8, ncclBfloat16 = 9,
};

// The entry points, by the names NCCL exports. `stream` is a cudaStream_t.
struct Api {
  Result (*GetVersion)(int* version);
  Result (*GetUniqueId)(ncclUniqueId* id);
  Result (*CommInitRank)(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank);
  Result (*CommInitAll)(ncclComm_t* comms, int ndev, const int* devlist);
  Result (*CommAbort)(ncclComm_t comm);
  Result (*CommDestroy)(ncclComm_t comm);
  Result (*CommGetAsyncError)(ncclComm_t comm, Result* async_error);
  const char* (*GetErrorString)(Result r);
  Result (*GroupStart)();
  Result (*GroupEnd)();
  Result (*Send)(const void* buf, size_t count, DataType dt, int peer, ncclComm_t comm, void* stream);
  Result (*Recv)(void* buf, size_t count, DataType dt, int peer, ncclComm_t comm, void* stream);
  Result (*AllReduce)(const void* send, void* recv, size_t count, DataType dt, RedOp op, ncclComm_t comm, void* stream);
  Result (*AllGather)(const void* send, void* recv, size_t sendcount, DataType dt, ncclComm_t comm, void* stream);
  Result (*ReduceScatter)(const void* send, void* recv, size_t recvcount, DataType dt, RedOp op, ncclComm_t comm,
                          void* stream);
  Result (*Broadcast)(const void* send, void* recv, size_t count, DataType dt, int root, ncclComm_t comm, void* stream);
};

struct LoadInfo {
  bool found = false;
  std::string path;     // the file that was loaded (or, with MEGABEAM_NCCL, the one that failed)
  int version = 0;      // NCCL_VERSION_CODE, e.g. 22803 for 2.28.3
  std::string version_string;  // "2.28.3"
  std::string error;    // why it was not loaded, and how to get it
};

// Loads NCCL once (thread-safe) and reports what happened. Never throws.
const LoadInfo& load_info();
// The API, or throws ERR_NO_NCCL with load_info().error.
const Api& api();
// "ncclAllReduce failed: unhandled system error (…)" — uses GetErrorString when loaded.
std::string error_string(Result r);

}  // namespace nccl
}  // namespace mb
