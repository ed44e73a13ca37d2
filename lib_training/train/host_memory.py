"""Give the memory a finished run freed back to the operating system.

A training step on the CPU allocates and frees hundreds of activation tensors below glibc's
mmap threshold (which grows to 32 MB once large blocks are freed); freed, they stay in the
process's heap, and a long-lived process — the WebUI — kept ~0.9 GB more resident after each
256 px run (bench/README.md, "The WebUI case"). `malloc_trim` returns the free heap pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def return_freed_memory() -> bool:
    """malloc_trim(0) where the C library is glibc; True when it ran."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
