// SplitKernel for head dims padded to 128 (see cuda_attention_kernel.cuh).
#include "attention/cuda_attention_kernel_impl.cuh"

namespace msa::attention::cuda {

template Status SplitKernelOccupancy<128>(int, int, int*);
template Status LaunchSplitKernel<128>(const SplitParams&, int, int, cudaStream_t);

}  // namespace msa::attention::cuda
