"""Two process-wide settings that make training on a CPU faster, both about memory pages.

A training step frees and reallocates the same large buffers every step: the logits of a 49k
vocabulary, the dense gradient of a tied embedding, each layer's activations. How the C
allocator and the kernel hand that memory back and forth cost the demo's PPO step a fifth of
its time on 2 CPU cores. Every ``rlhfkit`` command applies both settings before it imports torch
(``cli.main``); in your own Python code call them first. A user's own setting of either wins.
"""

from __future__ import annotations

import ctypes
import os
import platform

GLIBC_MALLOC_VARIABLES = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "MALLOC_ARENA_MAX",
)
"""glibc's own malloc variables: a user who set one has chosen, and ``keep_freed_memory`` stays
out of it."""

KEEP_BYTES = 2**31 - 1
"""Both thresholds ``keep_freed_memory`` sets: mallopt takes an int, so 2 GB is the most."""

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's <malloc.h>


def use_huge_pages_for_tensors() -> None:
    """Ask torch to back CPU tensors of 2 MB and more with transparent huge pages.

    Each large buffer a step allocates is faulted in page by page: about 23M page faults in one
    ``rlhfkit demo`` with 4 KB pages. With ``THP_MEM_ALLOC_ENABLE=1`` torch aligns such tensors
    to 2 MB and madvises them into huge pages, which halves the faults and made the demo's PPO
    step about 8% faster (bench/README.md). torch reads the variable at its first allocation, so
    this must run before torch allocates; a user's own ``THP_MEM_ALLOC_ENABLE=0`` wins.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep the memory a step frees, so the next step reuses it mapped.

    By default glibc serves an allocation above its mmap threshold (128 KB, rising to at most
    32 MB) with a fresh mapping and unmaps it when freed, and hands free memory at the top of its
    heap back to the kernel past 128 KB. So every step the kernel zeroes and faults in again each
    large buffer of the step before. With both thresholds at 2 GB, allocations come from the heap
    and freed ones stay there for the next: on 2 CPU cores the demo's PPO step took 0.80x its
    time and a GRPO step of SmolLM2 under autocast went from 3.95 to 2.9 s (bench/README.md).
    The cost is memory, kept until the process ends as torch's CUDA caching allocator keeps GPU
    memory: a freed buffer of one size cannot always serve a request of another, so the heap
    grows past what glibc would keep mapped (the whole demo peaked at 5.7 GB against 4.4).

    Takes effect for allocations after the call. Returns whether it applied: not on another C
    library (macOS, musl), and not when the user set one of glibc's malloc variables
    (``GLIBC_MALLOC_VARIABLES``, or ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``):
    ``MALLOC_TRIM_THRESHOLD_=131072 rlhfkit ...`` keeps glibc's own behaviour.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(
        name in os.environ for name in GLIBC_MALLOC_VARIABLES
    ) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the process's own glibc
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # the mmap threshold first: setting it also stops glibc from adjusting it by itself
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)
    )
