"""Process-wide settings a worker makes for serving, once its app has started.

Both are about the C runtime under the interpreter, not about HTTP: CPython's cycle
collector (:func:`tune_gc`) and glibc's allocator (:func:`tune_malloc`). Each was
found by profiling a busy worker (``perf -e cpu-clock``) and is explained where it
is set.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
from typing import Final

logger = logging.getLogger("tether.server")

#: the cycle collector's young-generation threshold in a worker (CPython's is 700)
GC_YOUNG_THRESHOLD: Final = 20_000

#: glibc keeps this much free memory at the top of its heap before giving it back to
#: the system (its default is 128 KiB)
MALLOC_TRIM_THRESHOLD: Final = 32 * 1024 * 1024
#: allocations up to this size come from the heap, larger ones get their own mapping
#: (glibc's default starts at 128 KiB and moves; setting the trim threshold fixes it)
MALLOC_MMAP_THRESHOLD: Final = 1024 * 1024

# mallopt(3) parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3

#: an operator who sets any of these has chosen the allocator's settings: tether
#: leaves them alone (glibc reads them at startup; GLIBC_TUNABLES names glibc.malloc.*)
_OPERATOR_SETTINGS: Final = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                             "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")


def tune_gc() -> None:
    """Tune the cycle collector for a server, once the app has started.

    With CPython's default (a young collection every 700 net allocations), the
    objects of the requests in flight (64 concurrent requests hold about a thousand)
    keep crossing the threshold: the collector traverses live requests and promotes
    them to older generations, which it traverses again; perf showed 6.5% of a proxy
    worker's CPU in the collector. At 20,000 it runs only when garbage really
    accumulates (reference cycles), a few MB at most. What the app built at import and
    startup lives as long as the worker: frozen (``gc.freeze``), full collections no
    longer traverse it.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def tune_malloc() -> bool:
    """Keep glibc from giving freed memory back to the system after every large
    message; return whether the settings were made.

    A server handles the same sizes over and over: a 64 KB WebSocket message or
    body is a few buffers of 64 KB (the read, the unmasked payload, the copy the
    application gets). With glibc's defaults, freeing them leaves more than 128 KiB
    free at the top of the heap, which glibc returns to the system at once, and the
    next message faults the same pages back in, zeroed: perf showed 6% of a worker's
    CPU in page faults and page clearing on a 64 KB echo, and a trim threshold of
    32 MiB cut the CPU per echo by 12%. The cost is that a worker keeps up to 32 MiB
    it has freed, rather than returning it at once. (granian links mimalloc, which
    keeps freed memory too.)

    Nothing is changed when the operator has set glibc's own variables
    (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
    ``MALLOC_ARENA_MAX``, or ``glibc.malloc.*`` in ``GLIBC_TUNABLES``), nor off
    Linux, nor with a C library without ``mallopt``.
    """
    if not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in _OPERATOR_SETTINGS) or \
            "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success
    done: bool = mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD) == 1
    done = mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD) == 1 and done
    if not done:
        logger.debug("mallopt refused tether's allocator settings")
    return done
