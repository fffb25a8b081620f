# natten-mlx: the two commands the README promises.
#   make test   -- build everything from a fresh clone and run every test
#   make demo   -- set up, then run the profiler and the quick-start examples
# Everything else here is a step of those two.

PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
BUILD       ?= build
JOBS        ?= 2
MLX_VERSION ?= 0.32.4
FUZZ_SECONDS ?= 60

PY_DEPS := "mlx[cpu]==$(MLX_VERSION)" numpy pytest packaging nanobind==3.1.0 \
           scikit-build-core scikit-learn tqdm

.PHONY: all test demo venv lib ctest sanitize fuzz ext pytest clean cuda-compile cuda-test

all: lib ext

$(VENV)/.stamp:
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PY_DEPS)
	touch $@

venv: $(VENV)/.stamp

lib:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DNATTEN_BUILD_TESTS=ON
	cmake --build $(BUILD) -j$(JOBS)

ctest: lib
	cd $(BUILD) && ctest --output-on-failure

# AddressSanitizer + UndefinedBehaviorSanitizer over the same C test driver.
sanitize:
	cmake -S . -B $(BUILD)-asan -DCMAKE_BUILD_TYPE=Debug -DNATTEN_BUILD_TESTS=ON \
	      -DNATTEN_SANITIZE=address,undefined
	cmake --build $(BUILD)-asan -j$(JOBS)
	cd $(BUILD)-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	      ctest --output-on-failure

# libFuzzer over descriptor validation and tiny problems, bounded in time.
fuzz:
	CC=clang cmake -S . -B $(BUILD)-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	      -DNATTEN_BUILD_TESTS=OFF -DNATTEN_BUILD_FUZZ=ON
	cmake --build $(BUILD)-fuzz -j$(JOBS)
	$(MAKE) -C . fuzz-run FUZZ_DIR=$(BUILD)-fuzz

# FUZZ_SECONDS is the total budget, split evenly over the harnesses.  New
# inputs go to $(FUZZ_DIR)/corpus/<harness>; tests/fuzz/corpus/<harness> is
# the committed seed corpus and is only read.
fuzz-run:
	@set -e; n=$$(ls $(FUZZ_DIR)/tests/fuzz/ | grep -c '^fuzz_' || true); \
	[ "$$n" -gt 0 ] || { echo "no fuzz harnesses in $(FUZZ_DIR)/tests/fuzz"; exit 1; }; \
	per=$$(( $(FUZZ_SECONDS) / n )); [ "$$per" -ge 1 ] || per=1; \
	for f in $(FUZZ_DIR)/tests/fuzz/fuzz_*; do \
	  [ -x "$$f" ] || continue; name=$$(basename "$$f"); \
	  mkdir -p $(FUZZ_DIR)/corpus/$$name; \
	  echo "== $$name ($${per}s)"; \
	  if "$$f" -max_total_time=$$per -rss_limit_mb=2048 -print_final_stats=1 \
	        -artifact_prefix=$(FUZZ_DIR)/ $(FUZZ_DIR)/corpus/$$name tests/fuzz/corpus/$$name \
	        > $(FUZZ_DIR)/$$name.log 2>&1; then \
	    grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' $(FUZZ_DIR)/$$name.log || true; \
	  else \
	    tail -n 60 $(FUZZ_DIR)/$$name.log; echo "$$name FAILED (log: $(FUZZ_DIR)/$$name.log)"; exit 1; \
	  fi; \
	done

# The MLX extension, built in place so `import natten_mlx` works from the repo.
ext: venv
	cmake -S . -B $(BUILD)-py -DCMAKE_BUILD_TYPE=Release -DNATTEN_BUILD_TESTS=OFF \
	      -DNATTEN_BUILD_PYTHON=ON -DPython_EXECUTABLE=$(abspath $(PY))
	cmake --build $(BUILD)-py -j$(JOBS)
	cmake --install $(BUILD)-py --component natten_mlx_ext --prefix $(CURDIR)

pytest: ext
	$(PY) -m pytest -q tests/python

test: ctest sanitize fuzz pytest cuda-compile

# CUDA tier: build the nvcc harness over src/cuda (a compile check where there
# is no GPU; `make cuda-test` also runs its GPU checks when a GPU is present).
cuda-compile:
	@if command -v nvcc >/dev/null 2>&1; then \
	  mkdir -p $(BUILD)-cuda && \
	  nvcc -std=c++17 -Xcompiler -fopenmp -gencode=arch=compute_90a,code=sm_90a -Iinclude \
	       tests/cuda/test_kernels.cu -o $(BUILD)-cuda/test_kernels && echo "cuda-compile: ok"; \
	else echo "cuda-compile: nvcc not found, skipped"; fi

cuda-test: cuda-compile
	$(BUILD)-cuda/test_kernels

demo: ext
	$(PY) -m natten_mlx.profiler --backprop
	$(PY) examples/quickstart.py

clean:
	rm -rf $(BUILD) $(BUILD)-asan $(BUILD)-fuzz $(BUILD)-py
