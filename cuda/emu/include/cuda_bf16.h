/* cuda_bf16.h of the CUDA emulation: __nv_bfloat16 and its conversions (in emu_device.h). */
#include "cuda_runtime.h"
