// SplitKernel for head dims padded to 256 (see cuda_attention_kernel.cuh).
#include "attention/cuda_attention_kernel_impl.cuh"

namespace msa::attention::cuda {

template Status SplitKernelOccupancy<256>(int, int, int*);
template Status LaunchSplitKernel<256>(const SplitParams&, int, int, cudaStream_t);

}  // namespace msa::attention::cuda
