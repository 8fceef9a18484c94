# dam_dist — Differentiable Adaptive Merging over MPI.  `make help` lists the targets.
# The CPU backend (C + any CBLAS) is always built; `make CUDA=1` adds the CUDA backend (cuda/cuda.mk).
# Building needs no root and runs no package manager: `make deps` (as root, Debian) installs the
# packages; on a cluster load modules and set the variables below (`make info` prints them; every
# one can be given on the command line: make HDF5_DIR=... BLAS_LIBS=-lmkl_rt MARCH=native).

# ---------------------------------------------------------------- where things are
# CC: the MPI compiler wrapper (Open MPI's or MPICH's mpicc, Intel MPI's mpiicc ...)
ifeq ($(origin CC),default)
  CC      := mpicc
endif
# HDF5 with parallel support, built against the same MPI: its lib and include directories
HDF5_DIR  ?= /usr/lib/x86_64-linux-gnu/hdf5/openmpi
HDF5_INC  ?= /usr/include/hdf5/openmpi
HDF5_LIBS ?= -L$(HDF5_DIR) -Wl,-rpath,$(HDF5_DIR) -lhdf5
CJSON_INC ?= /usr/include/cjson
CJSON_LIBS ?= -lcjson
PCRE2_LIBS ?= -lpcre2-8
UTF8PROC_LIBS ?= -lutf8proc
# any CBLAS links (BLAS_LIBS=-lblis, -lmkl_rt, "-L/opt/openblas/lib -lopenblas", ...): OpenBLAS's own
# functions are looked up at run time
BLAS_LIBS ?= -lopenblas
# LAPACK's dsyev_ (CMA-ES of `evolve`): in OpenBLAS, so empty with it; -llapack with a BLAS that has none
LAPACK_LIBS ?=
# oneDNN (optional; Debian: libdnnl-dev): bf16 GEMMs for parallel.cpu_matmul "bf16" on CPUs with
# AVX512-BF16 or AMX. Found when its header is there; DNNL=0 builds without it.
DNNL_INC  ?= /usr/include
DNNL_LIBS ?= -ldnnl
DNNL      ?= $(if $(wildcard $(DNNL_INC)/oneapi/dnnl/dnnl.h),1,0)
# CUDA=1: build the CUDA backend too (needs cuda/cuda.mk); CUDA and NCCL install locations
CUDA      ?= 0
CUDA_HOME ?= $(or $(CUDA_PATH),/usr/local/cuda)
NCCL_HOME ?= $(CUDA_HOME)
MARCH     ?= $(if $(filter x86_64,$(shell uname -m)),x86-64-v3,native)
PREFIX    ?= /usr/local
BUILD     ?= build

OPT       ?= -O3 -march=$(MARCH) -ffp-contract=off
CFLAGS    ?= $(OPT) -g
# src/ in layers (README "Source layout"; tests/cli_layers.sh checks that none includes a layer above
# it); headers are included by plain name
SRC_DIRS  := src/util src/formats src/tokenizer src/engine src/store src/commands
SRC_INC   := -Isrc $(addprefix -I,$(SRC_DIRS))
CFLAGS    += $(CFLAGS_EXTRA) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -fno-strict-aliasing \
             $(SRC_INC) -Impi -I$(HDF5_INC) -I$(CJSON_INC)
LDLIBS    := $(HDF5_LIBS) $(CJSON_LIBS) $(BLAS_LIBS) $(LAPACK_LIBS) $(PCRE2_LIBS) $(UTF8PROC_LIBS) -lm -lpthread -ldl
ifeq ($(DNNL),1)
  CFLAGS  += -DDAM_WITH_DNNL $(if $(filter-out /usr/include,$(DNNL_INC)),-I$(DNNL_INC))
  LDLIBS  += $(DNNL_LIBS)
  # the CPU backend's thread pool runs on oneDNN's OpenMP threads under bf16 GEMMs (threadpool.c)
  CFLAGS  += -fopenmp
  LDLIBS  += -fopenmp
endif

NVCC      := $(shell command -v nvcc 2>/dev/null || { test -x $(CUDA_HOME)/bin/nvcc && echo $(CUDA_HOME)/bin/nvcc; })

# ---------------------------------------------------------------- version
DAM_VERSION := 0.1.0
GIT_COMMIT := $(shell [ "$$(git -C $(CURDIR) rev-parse --show-toplevel 2>/dev/null)" = "$(CURDIR)" ] \
                && git -C $(CURDIR) describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)
VERSION_DEFS := -DDAM_VERSION='"$(DAM_VERSION)"' -DDAM_GIT_COMMIT='"$(GIT_COMMIT)"' \
                -DDAM_BUILD_CC='"$(strip $(CC))"' -DDAM_BUILD_MARCH='"$(MARCH)"' \
                -DDAM_BUILD_BLAS='"$(strip $(BLAS_LIBS))"' -DDAM_BUILD_LAPACK='"$(strip $(LAPACK_LIBS))"'

LIB_SRC   := $(foreach d,$(SRC_DIRS),$(wildcard $(d)/*.c)) $(wildcard mpi/*.c)
LIB_OBJ   := $(patsubst %.c,$(BUILD)/%.o,$(LIB_SRC))
TEST_SRC  := $(wildcard tests/test_*.c)
TEST_BIN  := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
MPI_TEST_BIN := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/mpi_*.c tests/tool_*.c))
BENCH_SRC := $(wildcard bench/bench_*.c)
BENCH_BIN := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))
# `make deps test`: deps first even with -j (only when deps is asked for; a plain build never runs it)
DEPS      := $(filter deps,$(MAKECMDGOALS))
# `make deps X`: deps installs the packages while make reads its makefiles, before anything is
# decided from them: it is the recipe of the included $(BUILD)/deps.mk, and GNU make reads every
# makefile again after remaking one, so X is built with what deps installed (DNNL=1 once
# libdnnl-dev is there; before, the first build of a fresh machine lacked oneDNN and the next make
# rebuilt everything). A failed install stops make there. Not under make -n/-q/-t (make remakes
# its makefiles even then): deps is then an ordinary target that prints its command.
NOEXEC    := $(findstring n,$(firstword -$(MAKEFLAGS)))$(findstring q,$(firstword -$(MAKEFLAGS)))$(findstring t,$(firstword -$(MAKEFLAGS)))
ifneq ($(DEPS),)
  ifeq ($(MAKE_RESTARTS)$(NOEXEC),)
    include $(BUILD)/deps.mk
    $(BUILD)/deps.mk: deps-force
	@bash tools/install-deps.sh
	@mkdir -p $(@D) && echo '# written by make deps (tools/install-deps.sh ran); sets nothing' > $@
    deps-force: ;
  endif
endif

# ---------------------------------------------------------------- CUDA backend
# `make CUDA=1` adds cuda/ and NCCL (cuda/cuda.mk appends CUDA_OBJ to LIB_OBJ, -DDAM_WITH_CUDA
# -DDAM_WITH_NCCL to CFLAGS and CUDA_LDLIBS to LDLIBS, so it is read after their definitions);
# `make CUDA=1 cuda-check` compiles every CUDA source without a GPU.
.DEFAULT_GOAL := all
-include cuda/cuda.mk
include cuda/emu/emu.mk
ifeq ($(CUDA),1)
  ifeq ($(wildcard cuda/cuda.mk),)
    $(error CUDA=1 needs cuda/cuda.mk (the CUDA backend); it is not in this tree)
  endif
  ifeq ($(strip $(CUDA_OBJ)),)
    $(error CUDA=1: cuda/cuda.mk defines no CUDA_OBJ)
  endif
  CUDA_BUILT := yes
else
  CUDA_BUILT := no
endif
EXTRA_OBJ :=

.PHONY: cuda-emu-test all help deps deps-slurm test test-asan test-asan-run demo experiment bench format format-check cppcheck clean info fixtures \
        fuzz install cuda-dry-run

all: info dam_dist

help:
	@echo "make            build ./dam_dist (CPU backend; prints the settings, as make info does)"
	@echo "make deps       install the missing Debian packages (root; the only target that does, with deps-slurm)"
	@echo "make deps-slurm slurm-wlm and munge for tests/cli_slurm*.sh (daemons: not on a node that runs Slurm)"
	@echo "make info       compilers, MPI, HDF5, BLAS, CUDA/NCCL locations, -march, version: the variables to set"
	@echo "make install    PREFIX=DIR: bin/dam_dist, share/dam_dist/{configs,jobs,docs,README.md}"
	@echo "make test       build, run every test (summary: N passed, N failed, N skipped); make deps test on a fresh machine"
	@echo "make test-asan  the same suite built with AddressSanitizer + UBSan"
	@echo "make demo       toy base + specialists, a short DAM run, the table DAM vs plain average"
	@echo "make experiment DAM vs linear, task arithmetic, TIES, DARE-TIES and evolve on fine-tuned task"
	@echo "                specialists: experiment/results.md and PNG plots (SIZE=ci|full, default ci)"
	@echo "make bench      benchmarks (bench/, tables; results go to bench/RESULTS.md by hand)"
	@echo "make fixtures   regenerate tests/fixtures with torch/transformers/tokenizers (needs Python; not CI)"
	@echo "make format     clang-format every C file;  make format-check  fail on unformatted files"
	@echo "make cppcheck   static analysis"
	@echo "make cuda-dry-run  link every CUDA program, dry-run tests/cuda/run.sh as on a bare GPU machine"
	@echo "                (no GPU, no ssh, only the carried libraries; tests/cuda/dry_run.sh; needs nvcc)"
	@echo "make cuda-emu-test  the CUDA backend's kernels and host code run on the CPU under an emulation of"
	@echo "                CUDA's rules (cuda/emu), with ASan: check_kernels, NCCL on 2 ranks, the toy merges"
	@echo "make fuzz       libFuzzer (clang) on the safetensors, config.json, tokenizer.json and run-config parsers, FUZZ_TIME s each"
	@echo "make clean"

info:
	@echo "dam_dist $(DAM_VERSION) (commit $(GIT_COMMIT)); make VAR=value to change any of these:"
	@echo "  CC          = $(strip $(CC))  ($(shell $(CC) --version 2>/dev/null | head -1 || echo not found))"
	@echo "  MPI         = $(shell $(CC) --showme:version 2>/dev/null || $(CC) -show 2>/dev/null | cut -c1-60 || echo unknown)"
	@echo "  HDF5_DIR    = $(HDF5_DIR)$(if $(wildcard $(HDF5_DIR)/libhdf5.so $(HDF5_DIR)/libhdf5.a),, (no libhdf5 there!))"
	@echo "  HDF5_INC    = $(HDF5_INC)$(if $(wildcard $(HDF5_INC)/hdf5.h),, (no hdf5.h there!))"
	@echo "  CJSON_INC   = $(CJSON_INC)   CJSON_LIBS = $(CJSON_LIBS)   PCRE2_LIBS = $(PCRE2_LIBS)   UTF8PROC_LIBS = $(UTF8PROC_LIBS)"
	@echo "  BLAS_LIBS   = $(BLAS_LIBS)   LAPACK_LIBS = $(LAPACK_LIBS)"
	@echo "  DNNL        = $(DNNL) (oneDNN bf16 GEMMs, parallel.cpu_matmul \"bf16\": $(if $(filter 1,$(DNNL)),enabled,disabled: no $(DNNL_INC)/oneapi/dnnl/dnnl.h; Debian: libdnnl-dev))   DNNL_LIBS = $(DNNL_LIBS)"
	@echo "  MARCH       = $(MARCH)   (OPT = $(OPT))"
	@echo "  CUDA        = $(CUDA) (CUDA backend built: $(CUDA_BUILT); cuda/cuda.mk: $(if $(wildcard cuda/cuda.mk),present,absent); nvcc: $(or $(NVCC),not found))"
	@echo "  CUDA_HOME   = $(CUDA_HOME)   NCCL_HOME = $(NCCL_HOME)"
	@echo "  PREFIX      = $(PREFIX)   BUILD = $(BUILD)"

# (after the restart above, deps has run: nothing left to do)
deps:
	$(if $(MAKE_RESTARTS),@:,@bash tools/install-deps.sh)

# slurmctld, slurmd and munge for the tests under a one-node Slurm (tests/cli_slurm*.sh;
# slurm/local.sh): not in deps, since on a node that runs Slurm they would be installed next to it
deps-slurm:
	@bash tools/install-deps.sh --slurm

# tests/cuda/run.sh without a GPU, in a setting like the GPU machine's (tests/cuda/dry_run.sh)
cuda-dry-run:
	@bash tests/cuda/dry_run.sh

dam_dist: $(BUILD)/src/main.o $(BUILD)/libdam.a $(EXTRA_OBJ)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libdam.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/%.o: %.c | $(DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

# Stamps that change only when their text does, so that what depends on them rebuilds then: every
# object on the compiler and its flags (MARCH, CUDA=1, CFLAGS_EXTRA ...), version.o on the version,
# the commit and the libraries it names (read and written while the Makefile is parsed; make >= 4.2)
FLAGS_SIG := $(strip $(CC) $(CFLAGS))
VERSION_SIG := $(strip $(VERSION_DEFS) cuda=$(CUDA_BUILT))
ifeq ($(findstring n,$(firstword -$(MAKEFLAGS))),)   # not under make -n
  $(if $(wildcard $(BUILD)),,$(shell mkdir -p $(BUILD)))
  ifneq ($(file < $(BUILD)/flags.stamp),$(FLAGS_SIG))
    $(file > $(BUILD)/flags.stamp,$(FLAGS_SIG))
  endif
  ifneq ($(file < $(BUILD)/version.stamp),$(VERSION_SIG))
    $(file > $(BUILD)/version.stamp,$(VERSION_SIG))
  endif
endif
$(BUILD)/flags.stamp $(BUILD)/version.stamp: ;
$(LIB_OBJ) $(BUILD)/src/main.o: $(BUILD)/flags.stamp
$(BUILD)/src/commands/version.o: $(BUILD)/version.stamp
$(BUILD)/src/commands/version.o: CFLAGS += $(VERSION_DEFS)

$(BUILD)/tests/%: tests/%.c $(BUILD)/libdam.a $(EXTRA_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(BUILD)/libdam.a $(EXTRA_OBJ) $(LDLIBS) -lcmocka

$(BUILD)/bench/%: bench/%.c $(BUILD)/libdam.a $(EXTRA_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libdam.a $(EXTRA_OBJ) $(LDLIBS)

test: $(DEPS) dam_dist $(TEST_BIN) $(MPI_TEST_BIN)
	@BUILD=$(BUILD) bash tests/run_tests.sh

test-asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	  DAM_BIN=build-asan/dam_dist test-asan-run

# Leak checking covers the test binaries (our code); the dam_dist processes they start also load
# Open MPI's plugins, whose leaks at exit LeakSanitizer cannot attribute to a library to suppress,
# so those run with detect_leaks=0 (ASan and UBSan errors still abort them).
test-asan-run: $(DEPS) $(BUILD)/dam_dist $(TEST_BIN) $(MPI_TEST_BIN)
	@printf '#!/bin/sh\nASAN_OPTIONS=detect_leaks=0 exec $(CURDIR)/$(BUILD)/dam_dist "$$@"\n' > $(BUILD)/dam_dist_asan
	@chmod +x $(BUILD)/dam_dist_asan
	@BUILD=$(BUILD) DAM_BIN=$(BUILD)/dam_dist_asan DAM_SKIP="cli_experiment cli_cuda_dryrun $(DAM_SKIP)" ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 bash tests/run_tests.sh

$(BUILD)/dam_dist: $(BUILD)/src/main.o $(BUILD)/libdam.a $(EXTRA_OBJ)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# bin/dam_dist, and share/dam_dist/ with configs/, jobs/, docs/ and the README. The jobs get the
# path of share/dam_dist written into their installed_home line: sbatch runs a copy of a job from
# its spool, where the job cannot find its configs/, jobs/dam_job.sh and ../../bin/dam_dist by
# its own path
install: dam_dist
	@case '$(PREFIX)' in /*) ;; *) echo "make install: PREFIX=$(PREFIX) is not an absolute path (the jobs record it)" >&2; exit 1 ;; esac
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/dam_dist/configs/models \
	  $(DESTDIR)$(PREFIX)/share/dam_dist/jobs $(DESTDIR)$(PREFIX)/share/dam_dist/docs
	install -m 755 dam_dist $(DESTDIR)$(PREFIX)/bin/dam_dist
	install -m 644 configs/*.json $(DESTDIR)$(PREFIX)/share/dam_dist/configs/
	install -m 644 configs/models/*.json $(DESTDIR)$(PREFIX)/share/dam_dist/configs/models/
	install -m 755 jobs/*.sh $(DESTDIR)$(PREFIX)/share/dam_dist/jobs/
	sed -i "s|^installed_home=''|installed_home='$(PREFIX)/share/dam_dist'|" $(DESTDIR)$(PREFIX)/share/dam_dist/jobs/*.sh
	install -m 644 docs/*.md $(DESTDIR)$(PREFIX)/share/dam_dist/docs/
	install -m 644 README.md $(DESTDIR)$(PREFIX)/share/dam_dist/
	@echo "installed: $(DESTDIR)$(PREFIX)/bin/dam_dist and $(DESTDIR)$(PREFIX)/share/dam_dist/"

demo: $(DEPS) dam_dist
	@bash tools/demo.sh

experiment: $(DEPS) dam_dist
	@bash tools/experiment.sh experiment

bench: $(DEPS) dam_dist $(BENCH_BIN)
	@bash bench/run_bench.sh

fixtures:
	python3 tests/fixtures/make_model_fixtures.py
	python3 tests/fixtures/make_tokenizer_fixtures.py
	python3 tests/fixtures/make_nfc_fixtures.py

format:
	clang-format -i src/*.c src/*/*.c src/*/*.h mpi/*.c mpi/*.h tests/*.c tests/*.h bench/*.c cuda/*.cu cuda/*.cuh cuda/*.h cuda/emu/*.cc cuda/emu/*.h cuda/emu/include/*.h tests/cuda/*.c 2>/dev/null || true

format-check:
	clang-format --dry-run --Werror src/*.c src/*/*.c src/*/*.h mpi/*.c mpi/*.h tests/*.c tests/*.h bench/*.c cuda/*.cu cuda/*.cuh cuda/*.h cuda/emu/*.cc cuda/emu/*.h cuda/emu/include/*.h tests/cuda/*.c

cppcheck:
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability --inline-suppr -D__GNUC__ \
	  --suppress=missingIncludeSystem $(SRC_INC) -Impi src mpi

FUZZ_CC    ?= clang
FUZZ_FLAGS := -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
              $(SRC_INC) -I/usr/include/cjson
FUZZ_TIME  ?= 60

FUZZ_TARGETS := safetensors hfconfig tokenizer config
fuzz: $(patsubst %,$(BUILD)/fuzz/fuzz_%,$(FUZZ_TARGETS))
	@mkdir -p $(BUILD)/fuzz/corpus_st $(BUILD)/fuzz/corpus_cfg $(BUILD)/fuzz/corpus_tok $(BUILD)/fuzz/corpus_run \
	  $(BUILD)/fuzz/seeds_tok
	@for d in tests/fixtures/tokenizers/*/; do cp $$d/tokenizer.json $(BUILD)/fuzz/seeds_tok/$$(basename $$d).json; done
	$(BUILD)/fuzz/fuzz_safetensors -max_total_time=$(FUZZ_TIME) -close_fd_mask=2 -dict=tests/fuzz/safetensors.dict \
	  $(BUILD)/fuzz/corpus_st tests/fuzz/seeds_safetensors
	$(BUILD)/fuzz/fuzz_hfconfig -max_total_time=$(FUZZ_TIME) -close_fd_mask=2 -dict=tests/fuzz/hfconfig.dict \
	  $(BUILD)/fuzz/corpus_cfg tests/fixtures/configs
	$(BUILD)/fuzz/fuzz_tokenizer -max_total_time=$(FUZZ_TIME) -close_fd_mask=3 -max_len=65536 \
	  -dict=tests/fuzz/tokenizer.dict $(BUILD)/fuzz/corpus_tok $(BUILD)/fuzz/seeds_tok
	$(BUILD)/fuzz/fuzz_config -max_total_time=$(FUZZ_TIME) -close_fd_mask=3 -dict=tests/fuzz/config.dict \
	  $(BUILD)/fuzz/corpus_run configs

FUZZ_SRC_safetensors := src/formats/safetensors.c
FUZZ_SRC_hfconfig    := src/formats/hfconfig.c src/formats/arch.c
FUZZ_SRC_tokenizer   := $(wildcard src/tokenizer/*.c)
FUZZ_SRC_config      := src/engine/config.c
FUZZ_LIBS_tokenizer  := $(PCRE2_LIBS) $(UTF8PROC_LIBS)
FUZZ_LIBS_config     := -Wl,--wrap=dam_read_file
$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_alloc.h src/formats/safetensors.c src/formats/hfconfig.c src/util/util.c src/util/json_util.c \
                      src/engine/config.c src/formats/arch.c $(wildcard src/tokenizer/*.c)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(SRC_INC) -Impi $(shell mpicc --showme:compile 2>/dev/null) -I$(HDF5_INC) -o $@ $< $(FUZZ_SRC_$*) src/util/util.c \
	  src/util/json_util.c -lcjson $(FUZZ_LIBS_$*) -lm

-include $(LIB_OBJ:.o=.d) $(BUILD)/src/main.d
