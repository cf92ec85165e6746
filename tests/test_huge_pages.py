"""`facekd index` restarts itself with huge pages for malloc where that applies (pipeline/huge_pages.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.huge_pages import KERNEL_SETTING, kernel_huge_page_setting, libc_name, tunables_with_huge_pages

REPO = Path(__file__).parents[1]
needs_huge_pages = pytest.mark.skipif(
    tunables_with_huge_pages({}, libc_name(), kernel_huge_page_setting()) is None,
    reason="needs Linux, glibc and transparent huge pages not 'never'",
)


@pytest.mark.parametrize(("environment", "libc", "kernel_setting", "expected"), [
    ({}, "glibc", "always [madvise] never\n", "glibc.malloc.hugetlb=1"),
    ({}, "glibc", "[always] madvise never\n", "glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "glibc", "always [madvise] never\n",
     "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "glibc", "always [madvise] never\n", None),  # the user's choice
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "glibc", "always [madvise] never\n", None),  # restarted already
    ({}, "glibc", "always madvise [never]\n", None),
    ({}, "glibc", "", None),
    ({}, "", "always [madvise] never\n", None),  # musl, or a libc that does not say
])
def test_tunables_with_huge_pages(environment: dict, libc: str, kernel_setting: str, expected: str | None) -> None:
    assert tunables_with_huge_pages(environment, libc, kernel_setting) == expected


def run_facekd_main(*arguments: str, tunables: str | None = None) -> list[str]:
    """stdout of facekd's entry point run with `arguments`, each start of the process printing its GLIBC_TUNABLES."""
    code = ("import os, sys; print('started with', os.environ.get('GLIBC_TUNABLES'), flush=True); "
            f"sys.argv = ['facekd', *{list(arguments)!r}]; from stages.cli import main; main()")
    environment = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    if tunables is not None:
        environment["GLIBC_TUNABLES"] = tunables
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@needs_huge_pages
def test_index_restarts_once_with_huge_pages_keeping_its_arguments_and_other_tunables() -> None:
    output = run_facekd_main("index", "--help", tunables="glibc.malloc.arena_max=2")
    starts = [line for line in output if line.startswith("started with")]
    assert starts == ["started with glibc.malloc.arena_max=2", "started with glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"]
    assert sum("Usage: facekd index" in line for line in output) == 1


@needs_huge_pages
def test_other_commands_and_a_users_own_setting_are_not_restarted() -> None:
    assert [line for line in run_facekd_main("mine", "--help") if line.startswith("started with")] == ["started with None"]
    output = run_facekd_main("index", "--help", tunables="glibc.malloc.hugetlb=0")
    assert [line for line in output if line.startswith("started with")] == ["started with glibc.malloc.hugetlb=0"]


@needs_huge_pages
def test_the_setting_puts_large_allocations_in_huge_pages() -> None:
    """What the restart is for: with the setting, glibc's malloc (which FAISS allocates with) backs a large block
    with huge pages; without it, none where the kernel gives them only on request (numpy requests them itself)."""
    code = ("import ctypes; libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; "
            "block = libc.malloc(256 << 20); ctypes.memset(block, 1, 256 << 20); "
            "print(next(line.split()[1] for line in open('/proc/self/smaps_rollup') if line.startswith('AnonHugePages:')))")

    def huge_kb(tunables: str) -> int:
        environment = {**os.environ, "GLIBC_TUNABLES": tunables}
        result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return int(result.stdout)

    assert huge_kb("glibc.malloc.hugetlb=1") >= 128 << 10
    if "[madvise]" in KERNEL_SETTING.read_text():
        assert huge_kb("glibc.malloc.hugetlb=0") == 0
