/* cub/device/device_radix_sort.cuh of the CUDA emulation: DeviceRadixSort::SortKeysDescending for
 * float keys, with CUB's two-phase temporary-storage protocol and its key order (emu_libs.cc). */
#pragma once
#include "cuda_runtime.h"

namespace emu {
cudaError_t radix_sort_desc_f32(void *temp, size_t &temp_bytes, const float *in, float *out, int n, int begin_bit,
                                int end_bit, cudaStream_t s);
}

namespace cub {
struct DeviceRadixSort {
    static cudaError_t SortKeysDescending(void *temp, size_t &temp_bytes, const float *in, float *out, int n,
                                          int begin_bit = 0, int end_bit = 32, cudaStream_t s = 0) {
        return emu::radix_sort_desc_f32(temp, temp_bytes, in, out, n, begin_bit, end_bit, s);
    }
};
} // namespace cub
