"""Transparent huge pages for the memory of a large index.

An HNSW graph over a million teacher embeddings is ~3 GB read at random: with 4 KiB pages most hops
miss the TLB. glibc (2.35 and newer) backs malloc's large blocks, FAISS's included, with 2 MiB
transparent huge pages when GLIBC_TUNABLES holds glibc.malloc.hugetlb=1. glibc reads that setting
once, when the process starts, so a command that wants it starts itself again with the setting added
(bench/huge_pages.py measures the gain). Nothing changes where it cannot apply: not Linux with glibc,
the kernel's huge pages set to "never", or GLIBC_TUNABLES naming glibc.malloc.hugetlb already (the
user's choice, 0 included). An older glibc ignores the setting.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
KERNEL_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")  # e.g. "always [madvise] never"


def tunables_with_huge_pages(environment: Mapping[str, str], libc: str, kernel_setting: str) -> str | None:
    """GLIBC_TUNABLES with glibc.malloc.hugetlb=1 added, or None where restarting would change nothing."""
    tunables = environment.get("GLIBC_TUNABLES", "")
    if libc != "glibc" or "[never]" in kernel_setting or not kernel_setting or TUNABLE in tunables:
        return None
    return f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"


def libc_name() -> str:
    """"glibc", or "" where the C library is another (musl) or does not say."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").split(" ")[0]
    except (ValueError, OSError):
        return ""


def kernel_huge_page_setting() -> str:
    """The kernel's transparent huge page mode line, "" where there is none (not Linux, no THP, /sys not mounted)."""
    if sys.platform != "linux":
        return ""
    try:
        return KERNEL_SETTING.read_text()
    except OSError:
        return ""


def restart_with_huge_pages() -> None:
    """Replace this process by the same command with huge pages for malloc, where that applies (see the module);
    return where it does not. Call it before the command has done anything: nothing of this process survives."""
    tunables = tunables_with_huge_pages(os.environ, libc_name(), kernel_huge_page_setting())
    if tunables is None or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "GLIBC_TUNABLES": tunables})
    except OSError:  # the interpreter cannot be started again (removed, no permission): go on with small pages
        return
