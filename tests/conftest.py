"""Shared test setup: one thread per process (2 cores shared by the whole suite)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
