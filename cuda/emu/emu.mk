# cuda/emu/emu.mk — the CUDA backend run on the CPU under an emulation of CUDA's rules (README.md
# beside this file), included by the Makefile.
#
#   make cuda-emu-test   build-emu/: dam_dist with the CPU and the emulated CUDA backends, NCCL over
#                        MPI, under AddressSanitizer + UBSan; then tests/cuda/emu_test.sh (check_kernels
#                        in three thread/block orders, the NCCL transport on 2 ranks, the toy merges on
#                        1 rank, dp2, pp2 and tp2 against the CPU backend). Ends with "N passed, N failed".
#
# Nothing here enters a user's build: the emulation is compiled only when CUDA_EMU=1, which only this
# target sets, in its own build directory.

EMU_BUILD ?= build-emu
EMU_OPT   := -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

cuda-emu-test:
	$(MAKE) BUILD=$(EMU_BUILD) CUDA_EMU=1 OPT="$(EMU_OPT)" $(EMU_BUILD)/dam_dist $(EMU_BUILD)/cuda/check_kernels \
	  $(EMU_BUILD)/cuda/emu_nccl
	@test -x dam_dist || $(MAKE) dam_dist # the CPU reference of the toy comparisons
	@EMU_BUILD=$(EMU_BUILD) bash tests/cuda/emu_test.sh

ifeq ($(CUDA_EMU),1)
EMU_CXX      ?= mpicxx
EMU_CXXFLAGS := -std=c++20 $(OPT) -g $(CFLAGS_EXTRA) -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas \
                -Wno-sign-compare -Wno-missing-field-initializers -fno-strict-aliasing -DOMPI_SKIP_MPICXX=1 \
                $(SRC_INC) -Impi -Icuda -Icuda/emu -Icuda/emu/include -DDAM_WITH_CUDA -DDAM_WITH_NCCL
# A grid-y cap of 2 (CUDA's is 65535, cuda/common.cuh): every row-chunked launch past 2 x 64 rows
# (check_kernels' norm, colsum and coefficient-gradient cases, the toys) takes the strided path.
EMU_GRID_Y := -DDAM_CUDA_GRID_Y_MAX=2
EMU_CXXFLAGS += $(EMU_GRID_Y)
CFLAGS  += -DDAM_WITH_CUDA -DDAM_WITH_NCCL -Icuda/emu/include
EMU_OBJ := $(BUILD)/cuda/backend_cuda.o $(BUILD)/cuda/emu/emu.o $(BUILD)/cuda/emu/emu_libs.o
LIB_OBJ += $(EMU_OBJ)
LDLIBS  += -lstdc++
EMU_HDR := $(wildcard cuda/*.cuh cuda/*.h cuda/emu/*.h cuda/emu/include/*.h cuda/emu/include/cub/device/*.cuh) \
           src/engine/backend.h src/engine/loss.h src/util/util.h src/engine/adam_bf16.h cuda/emu/emu.mk # (the cap)

$(BUILD)/cuda/backend_cuda.o: cuda/backend_cuda.cu $(EMU_HDR) $(BUILD)/flags.stamp
	@mkdir -p $(dir $@)
	$(EMU_CXX) $(EMU_CXXFLAGS) -x c++ -c $< -o $@

$(BUILD)/cuda/emu/%.o: cuda/emu/%.cc $(EMU_HDR) $(BUILD)/flags.stamp
	@mkdir -p $(dir $@)
	$(EMU_CXX) $(EMU_CXXFLAGS) -c $< -o $@

# the tests get the cap too: check_kernels sizes its case past the cap by it
$(BUILD)/cuda/%: tests/cuda/%.c $(BUILD)/libdam.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(EMU_GRID_Y) -Itests -o $@ $< $(BUILD)/libdam.a $(LDLIBS)
endif
