# cuda/cuda.mk — the CUDA build, included by the Makefile (its "CUDA backend" block).
#
#   make CUDA=1              dam_dist with the CPU and the CUDA backends, NCCL for device collectives
#   make CUDA=1 cuda-check   compile every CUDA source (cuda/*.cu, mpi/nccl_comm.c, tests/cuda/*.c):
#                            needs nvcc and the headers only, no GPU (CI runs it)
#   make CUDA=1 cuda-test    the GPU test programs in $(BUILD)/cuda: check_kernels, check_nccl,
#                            bench_gpu (no MPI, HDF5, cJSON or BLAS needed: tests/cuda/run.sh builds them
#                            on the GPU machine)
#   make CUDA=1 cuda-info    what was found where
#
# Variables: CUDA_HOME (default /usr/local/cuda), NCCL_HOME (optional), CUDA_ARCH (default sm_90
# machine code + compute_90 PTX). Libraries are searched in $(CUDA_HOME)/lib64, $(CUDA_HOME)/lib,
# $(NCCL_HOME)/lib and Python's site-packages/nvidia/*/lib (where pip's nvidia-* wheels keep cuBLAS and
# NCCL, often with only a versioned file name: $(BUILD)/cudalib gets unversioned links for -l).

CUDA_WANTED := $(if $(filter 1 yes,$(CUDA))$(filter cuda-%,$(MAKECMDGOALS)),yes)

ifeq ($(CUDA_WANTED),yes)

CUDA_HOME ?= /usr/local/cuda
NCCL_HOME ?=
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
CUDA_NVCC := $(firstword $(wildcard $(CUDA_HOME)/bin/nvcc) $(shell command -v nvcc 2>/dev/null))

CUDA_PY_SITES := $(shell python3 -c 'import site; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
CUDA_PY_LIBDIRS := $(wildcard $(addsuffix /nvidia/*/lib,$(CUDA_PY_SITES)))
CUDA_PY_INCDIRS := $(wildcard $(addsuffix /nvidia/*/include,$(CUDA_PY_SITES)))
CUDA_LIB_DIRS := $(wildcard $(if $(NCCL_HOME),$(NCCL_HOME)/lib) $(CUDA_HOME)/lib64 $(CUDA_HOME)/lib \
                   $(CUDA_HOME)/targets/x86_64-linux/lib) $(CUDA_PY_LIBDIRS)

# the first directory holding header $(1), or nothing when the compiler's own include path has it
cuda_inc_for = $(if $(wildcard $(CUDA_HOME)/include/$(1)),,$(patsubst %/$(1),%,$(firstword $(wildcard \
                 $(if $(NCCL_HOME),$(NCCL_HOME)/include/$(1)) $(addsuffix /$(1),$(CUDA_PY_INCDIRS))))))
CUDA_INC_DIRS := $(sort $(call cuda_inc_for,cublas_v2.h) $(call cuda_inc_for,nccl.h))
CUDA_INC := -I$(CUDA_HOME)/include $(addprefix -I,$(CUDA_INC_DIRS))

# the first file for -l$(1): lib$(1).so, else a versioned lib$(1).so.N
cuda_lib_for = $(firstword $(foreach d,$(CUDA_LIB_DIRS),$(wildcard $(d)/lib$(1).so)) \
                 $(foreach d,$(CUDA_LIB_DIRS),$(wildcard $(d)/lib$(1).so.[0-9]*)))
CUDA_LIBS_NEEDED := cudart cublasLt cublas nccl
CUDA_LIB_FILES := $(foreach l,$(CUDA_LIBS_NEEDED),$(call cuda_lib_for,$(l)))
CUDA_LINKDIR := $(BUILD)/cudalib
CUDA_RPATH := $(sort $(dir $(CUDA_LIB_FILES)))
CUDA_LDLIBS := -L$(CUDA_LINKDIR) $(foreach d,$(CUDA_RPATH),-Wl,-rpath,$(d)) -lcudart -lcublasLt -lcublas -lnccl \
               -lstdc++ -ldl -lpthread -lm

NVCCFLAGS ?= -O3 -lineinfo
NVCCFLAGS += -std=c++20 $(CUDA_ARCH) -Xcompiler -Wall,-Wextra,-Wno-unused-parameter,-fno-strict-aliasing \
             $(SRC_INC) -Impi -Icuda $(CUDA_INC) -DDAM_WITH_CUDA -DDAM_WITH_NCCL

CUDA_SRC := $(wildcard cuda/*.cu)
CUDA_OBJ := $(patsubst %.cu,$(BUILD)/%.o,$(CUDA_SRC))
CUDA_HDR := $(wildcard cuda/*.cuh cuda/*.h) src/engine/backend.h src/engine/loss.h src/util/util.h

$(BUILD)/cuda/%.o: cuda/%.cu $(CUDA_HDR)
	@mkdir -p $(dir $@)
	@test -n "$(CUDA_NVCC)" || { echo "cuda: no nvcc in $(CUDA_HOME)/bin or on PATH (set CUDA_HOME)"; exit 1; }
	$(CUDA_NVCC) $(NVCCFLAGS) -c $< -o $@

# unversioned names for -l (pip's wheels ship libcublas.so.13, libnccl.so.2 only)
$(CUDA_LINKDIR)/.ok:
	@mkdir -p $(CUDA_LINKDIR)
	@for l in $(CUDA_LIBS_NEEDED); do \
	  f=$$(for x in $(CUDA_LIB_FILES); do case $$(basename $$x) in lib$$l.so|lib$$l.so.*) echo $$x; break;; esac; done); \
	  if [ -z "$$f" ]; then echo "cuda: lib$$l.so not found in: $(CUDA_LIB_DIRS)"; exit 1; fi; \
	  ln -sf "$$f" $(CUDA_LINKDIR)/lib$$l.so; done
	@touch $@

.PHONY: cuda-check cuda-test cuda-info

cuda-info:
	@echo "cuda: nvcc $(or $(CUDA_NVCC),NOT FOUND); CUDA_HOME=$(CUDA_HOME); arch: $(CUDA_ARCH)"
	@echo "cuda: extra include dirs: $(or $(CUDA_INC_DIRS),none)"
	@echo "cuda: libraries: $(or $(CUDA_LIB_FILES),NONE FOUND)"

# Every CUDA source compiled, nothing linked: the CI guard that the CUDA build does not rot.
CUDA_TEST_PROGS := check_kernels check_nccl bench_gpu
CUDA_CHECK_OBJ := $(CUDA_OBJ) $(BUILD)/cuda-check/nccl_comm.o $(patsubst %,$(BUILD)/cuda-check/%.o,$(CUDA_TEST_PROGS))
cuda-check: cuda-info $(CUDA_CHECK_OBJ)
	@echo "cuda-check: compiled $(words $(CUDA_CHECK_OBJ)) objects (no GPU needed, none used)"

$(BUILD)/cuda-check/nccl_comm.o: mpi/nccl_comm.c mpi/nccl_comm.h cuda/backend_cuda.h
	@mkdir -p $(dir $@)
	mpicc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -Werror $(SRC_INC) -Impi $(CUDA_INC) \
	  -DDAM_WITH_CUDA -DDAM_WITH_NCCL -c $< -o $@

# ---- GPU test programs (tests/cuda): no MPI, HDF5, cJSON or BLAS needed, so that they build on the GPU
# machine: the CPU reference's GEMMs come from tests/cuda/cblas_ref.c, one-rank NCCL from the MPI shim.
CUDA_TEST_CC  ?= gcc
CUDA_TEST_CPU_SRC ?= src/engine/backend_api.c src/engine/backend_cpu.c src/engine/backend_guard.c src/engine/backend.c src/engine/loss.c src/engine/threadpool.c src/util/util.c
CUDA_TEST_CFLAGS := -O2 -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -fno-strict-aliasing \
                    -ffp-contract=off $(SRC_INC) -Itests/cuda/shim -DDAM_WITH_CUDA $(CUDA_INC)
CUDA_TEST_NCCL_FLAGS := -Impi -Itests/cuda/shim_mpi -DDAM_WITH_NCCL
CUDA_TEST_LIB := $(patsubst %.c,$(BUILD)/cuda-test/%.o,$(CUDA_TEST_CPU_SRC) tests/cuda/cblas_ref.c)

$(BUILD)/cuda-test/%.o: %.c
	@mkdir -p $(dir $@)
	$(CUDA_TEST_CC) $(CUDA_TEST_CFLAGS) $(if $(findstring nccl,$@),$(CUDA_TEST_NCCL_FLAGS)) -c $< -o $@

$(BUILD)/cuda-check/%.o: tests/cuda/%.c src/engine/backend.h
	@mkdir -p $(dir $@)
	$(CUDA_TEST_CC) $(CUDA_TEST_CFLAGS) $(if $(findstring nccl,$@),$(CUDA_TEST_NCCL_FLAGS)) -Werror -c $< -o $@

$(BUILD)/cuda/check_nccl: $(BUILD)/cuda-test/mpi/nccl_comm.o
$(BUILD)/cuda/%: $(BUILD)/cuda-test/tests/cuda/%.o $(CUDA_TEST_LIB) $(CUDA_OBJ) | $(CUDA_LINKDIR)/.ok
	$(CUDA_TEST_CC) -o $@ $^ $(CUDA_LDLIBS)

cuda-test: cuda-info $(patsubst %,$(BUILD)/cuda/%,$(CUDA_TEST_PROGS))

.PRECIOUS: $(BUILD)/cuda-test/%.o # kept between builds (make would delete them as intermediates)

endif

# The C objects are the same files with or without CUDA=1 but compiled differently (backend_api.c's
# backend_cuda() stub, NCCL in devcomm.c): $(BUILD)/.flavour names the flavour of what is in $(BUILD)
# and is rewritten (so every object is rebuilt) when it changes. A first stamp for a CPU build is
# dated 1970, so that an existing CPU build is not rebuilt for it.
# (Goals that are all cuda-* build only their own objects: they leave the stamp alone.)
DAM_FLAVOUR := $(if $(filter 1 yes,$(CUDA)),cuda,cpu)
DAM_FLAVOUR_OLD := $(shell cat $(BUILD)/.flavour 2>/dev/null)
DAM_ONLY_CUDA_GOALS := $(if $(MAKECMDGOALS),$(if $(filter-out cuda-%,$(MAKECMDGOALS)),,yes))
ifeq ($(DAM_ONLY_CUDA_GOALS),)
ifneq ($(DAM_FLAVOUR_OLD),$(DAM_FLAVOUR))
  DAM_FLAVOUR_SET := $(shell mkdir -p $(BUILD) && echo $(DAM_FLAVOUR) > $(BUILD)/.flavour \
    $(if $(DAM_FLAVOUR_OLD),,$(if $(filter cpu,$(DAM_FLAVOUR)),&& touch -d @0 $(BUILD)/.flavour)))
endif
endif
$(LIB_OBJ) $(BUILD)/src/main.o: $(BUILD)/.flavour

# The whole program with CUDA: the backend's objects go into libdam.a, its libraries onto the link,
# DAM_WITH_CUDA / DAM_WITH_NCCL into every C file (backend_api.c registers "cuda", devcomm.c uses NCCL).
ifneq ($(filter 1 yes,$(CUDA)),)
CFLAGS   += -DDAM_WITH_CUDA -DDAM_WITH_NCCL $(CUDA_INC)
LIB_OBJ  += $(CUDA_OBJ)
LDLIBS   += $(CUDA_LDLIBS)
$(BUILD)/libdam.a: | $(CUDA_LINKDIR)/.ok
info: cuda-info
endif
