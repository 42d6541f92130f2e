# Developer shortcuts for the optional C core (docs/speedups.md).

PYTHON ?= python

.PHONY: speedups speedups-clean

# Strict in-place build (-O2 -Wall -Wextra -Werror) for the active interpreter.
speedups:
	METALIO_STRICT_BUILD=1 $(PYTHON) setup.py -q build_ext --inplace --force

speedups-clean:
	rm -f src/metalio/_speedups.*.so
	rm -rf build/
