// CUDA error checking and device-memory ownership for the CUDA backend.
// CUDA_TRY turns a failed runtime call into cascade::Error(kCuda) naming the call and file:line;
// DeviceBuffer<T> owns one cudaMalloc allocation.
// Include from .cpp files only: nvcc cannot compile fmt's consteval format strings in C++20 mode,
// so .cu files hold kernels and launchers that return cudaError_t, and .cpp callers throw.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "core/error.h"

#define CUDA_TRY(expr)                                                                       \
  do {                                                                                       \
    const cudaError_t cascade_cuda_err_ = (expr);                                            \
    if (cascade_cuda_err_ != cudaSuccess) [[unlikely]] {                                     \
      ::cascade::throw_error(::cascade::ErrorCode::kCuda, "{}:{}: {} failed: {} ({})",       \
                             __FILE__, __LINE__, #expr, cudaGetErrorName(cascade_cuda_err_), \
                             cudaGetErrorString(cascade_cuda_err_));                         \
    }                                                                                        \
  } while (0)

namespace cascade::cuda {

// One device allocation of `size` elements of T (uninitialised). Move-only.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t size) { resize(size); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }

  // Reallocates to exactly `size` elements (contents lost) unless the size is unchanged.
  void resize(std::size_t size) {
    if (size == size_ && ptr_ != nullptr) return;
    release();
    if (size > 0) {
      void* p = nullptr;
      const cudaError_t err = cudaMalloc(&p, size * sizeof(T));
      if (err != cudaSuccess) {
        throw_error(ErrorCode::kCuda, "cudaMalloc of {} bytes failed: {}", size * sizeof(T),
                    cudaGetErrorString(err));
      }
      ptr_ = static_cast<T*>(p);
    }
    size_ = size;
  }
  // Grows to at least `size` elements (contents lost when it grows).
  void reserve(std::size_t size) {
    if (size > size_) resize(size);
  }

  T* get() const { return ptr_; }
  std::size_t size() const { return size_; }
  std::size_t bytes() const { return size_ * sizeof(T); }

 private:
  void release() noexcept {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    size_ = 0;
  }
  T* ptr_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace cascade::cuda
