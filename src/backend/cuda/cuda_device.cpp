#include <cuda_runtime.h>

#include "backend/cuda/cuda_runner.h"

namespace cascade {

bool cuda_device_available() {
  int count = 0;
  // With no driver this returns cudaErrorNoDevice / cudaErrorInsufficientDriver; never aborts.
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return false;
  }
  return count > 0;
}

}  // namespace cascade
