# ixgs_ros — the two commands of the README are `make demo` and `make test`; both run setup first.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
OUT   ?= demo_out

.PHONY: setup demo test test-core test-all bench bench-quick clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/ixgs demo --out $(OUT)

test: setup
	$(PY) -m pytest -m "not slow" -q -ra

# the ROS-free packages only (no rclpy, no message build): a fast loop while working on the core and engine
test-core: setup
	$(PY) -m pytest -m "not slow and not ros" -q -ra

test-all: setup
	$(PY) -m pytest -q -ra

bench-quick: setup
	$(VENV)/bin/ixgs bench --quick --out bench_out

bench: setup
	$(VENV)/bin/ixgs bench --cases T12-roi-only-arc160,T12-full-body-arc160 --views 25 --out bench_out

clean:
	rm -rf build install log demo_out bench_out
