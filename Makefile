# dam_dist — Differentiable Adaptive Merging over MPI.  `make help` lists the targets.
# The CPU backend (C + OpenBLAS) is always built; CUDA is detected and reported.

CC        := mpicc
HDF5_DIR  ?= /usr/lib/x86_64-linux-gnu/hdf5/openmpi
HDF5_INC  ?= /usr/include/hdf5/openmpi
OPT       ?= -O3 -march=x86-64-v3 -ffp-contract=off
CFLAGS    ?= $(OPT) -g
CFLAGS    += $(CFLAGS_EXTRA) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -fno-strict-aliasing \
             -Isrc -Impi -I$(HDF5_INC) -I/usr/include/cjson
# any CBLAS links (BLAS_LIBS=-lblis, -lmkl_rt, ...): OpenBLAS's own functions are looked up at run time
BLAS_LIBS ?= -lopenblas
LDLIBS    := -L$(HDF5_DIR) -Wl,-rpath,$(HDF5_DIR) -lhdf5 -lcjson $(BLAS_LIBS) -lpcre2-8 -lm -lpthread -ldl
BUILD     ?= build

NVCC      := $(shell command -v nvcc 2>/dev/null)
ifneq ($(NVCC),)
  HAVE_CUDA := yes
else
  HAVE_CUDA := no
endif

LIB_SRC   := $(filter-out src/main.c,$(wildcard src/*.c)) $(wildcard mpi/*.c)
LIB_OBJ   := $(patsubst %.c,$(BUILD)/%.o,$(LIB_SRC))
TEST_SRC  := $(wildcard tests/test_*.c)
TEST_BIN  := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
MPI_TEST_BIN := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/mpi_*.c tests/tool_*.c))
BENCH_SRC := $(wildcard bench/bench_*.c)
BENCH_BIN := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))
DEPS      := $(BUILD)/.deps-ok

# ---- CUDA backend (engineer C): `make CUDA=1` adds cuda/ and NCCL; `make CUDA=1 cuda-check` compiles
# every CUDA source without a GPU. Self-contained in cuda/cuda.mk; it appends to LIB_OBJ, CFLAGS and
# LDLIBS, so it stays here, after their definitions and before the rules that use them.
-include cuda/cuda.mk
# ---- end of the CUDA block

.PHONY: all help deps test test-asan test-asan-run demo bench format format-check cppcheck clean info fixtures fuzz

all: info dam_dist

help:
	@echo "make            build ./dam_dist (CPU backend; reports what it detected)"
	@echo "make test       install missing Debian packages, build, run every test (summary: N passed, N failed)"
	@echo "make test-asan  the same suite built with AddressSanitizer + UBSan"
	@echo "make demo       toy base + specialists, a short DAM run, the table DAM vs plain average"
	@echo "make bench      benchmarks (bench/, tables; results go to bench/RESULTS.md by hand)"
	@echo "make fixtures   regenerate tests/fixtures with torch/transformers/tokenizers (needs Python; not CI)"
	@echo "make format     clang-format every C file;  make format-check  fail on unformatted files"
	@echo "make cppcheck   static analysis"
	@echo "make fuzz       libFuzzer (clang) on the safetensors and config.json parsers, FUZZ_TIME seconds each"
	@echo "make clean"

info:
	@echo "dam_dist build: CPU backend (OpenBLAS) on; MPI via $(CC); parallel HDF5 from $(HDF5_DIR); CUDA toolkit: $(HAVE_CUDA) (CUDA backend: not built yet)"

deps: $(DEPS)
$(DEPS): tools/install-deps.sh
	@bash tools/install-deps.sh
	@mkdir -p $(BUILD) && touch $@

dam_dist: $(BUILD)/src/main.o $(BUILD)/libdam.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libdam.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/%.o: %.c | $(DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/tests/%: tests/%.c $(BUILD)/libdam.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(BUILD)/libdam.a $(LDLIBS) -lcmocka

$(BUILD)/bench/%: bench/%.c $(BUILD)/libdam.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libdam.a $(LDLIBS)

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
	@BUILD=$(BUILD) DAM_BIN=$(BUILD)/dam_dist_asan ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 bash tests/run_tests.sh

$(BUILD)/dam_dist: $(BUILD)/src/main.o $(BUILD)/libdam.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

demo: $(DEPS) dam_dist
	@bash tools/demo.sh

bench: $(DEPS) dam_dist $(BENCH_BIN)
	@bash bench/run_bench.sh

fixtures:
	python3 tests/fixtures/make_model_fixtures.py
	python3 tests/fixtures/make_tokenizer_fixtures.py

format:
	clang-format -i src/*.c src/*.h mpi/*.c mpi/*.h tests/*.c tests/*.h bench/*.c 2>/dev/null || true

format-check:
	clang-format --dry-run --Werror src/*.c src/*.h mpi/*.c mpi/*.h tests/*.c tests/*.h bench/*.c

cppcheck:
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability --inline-suppr -D__GNUC__ \
	  --suppress=missingIncludeSystem -Isrc -Impi src mpi

FUZZ_CC    ?= clang
FUZZ_FLAGS := -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
              -Isrc -I/usr/include/cjson
FUZZ_TIME  ?= 60

fuzz: $(BUILD)/fuzz/fuzz_safetensors $(BUILD)/fuzz/fuzz_hfconfig
	@mkdir -p $(BUILD)/fuzz/corpus_st $(BUILD)/fuzz/corpus_cfg
	$(BUILD)/fuzz/fuzz_safetensors -max_total_time=$(FUZZ_TIME) -close_fd_mask=2 -dict=tests/fuzz/safetensors.dict \
	  $(BUILD)/fuzz/corpus_st tests/fuzz/seeds_safetensors
	$(BUILD)/fuzz/fuzz_hfconfig -max_total_time=$(FUZZ_TIME) -close_fd_mask=2 -dict=tests/fuzz/hfconfig.dict \
	  $(BUILD)/fuzz/corpus_cfg tests/fixtures/configs

$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_alloc.h src/safetensors.c src/hfconfig.c src/util.c src/json_util.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(if $(findstring safetensors,$*),src/safetensors.c,src/hfconfig.c) src/util.c src/json_util.c -lcjson -lm

clean:
	rm -rf build build-asan dam_dist

-include $(LIB_OBJ:.o=.d) $(BUILD)/src/main.d
