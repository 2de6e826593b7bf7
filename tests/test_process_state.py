"""The process is left as guard.py promises (issue 18): `smooth` never changes glibc's malloc.

Any `mallopt` of the mmap or trim thresholds switches glibc's adaptive mmap threshold off
for the rest of the process, which no call can undo; `smooth(..., fast=True)` did it on
every call. The probe reads glibc's own decision: a block's chunk header says whether it was
mapped. With the adaptive rule, a freed 30 MiB mapped block raises the threshold, so the
next 30 MiB block comes from the heap; with fixed thresholds both stay as they were.
Each case runs in a fresh process (the state cannot be reset in this one).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = r'''
import ctypes, sys
import torch
import smoothgrad as sg

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]


def mapped(size):
    """Whether glibc served malloc(size) with mmap (IS_MMAPPED in the chunk's size field)."""
    block = libc.malloc(size)
    flag = bool(ctypes.c_size_t.from_address(block - 8).value & 2)
    libc.free(block)
    return flag


model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                            torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)).eval()
x = torch.rand(1, 3, 8, 8)
case = sys.argv[1]
if case == "smooth":
    sg.smooth(model, x, samples=4, fast=True)
    sg.smooth(model, x, samples=4)
elif case == "guard":
    with sg.guard.reusing_freed_memory() as tuned:
        inside = mapped(40 * 2**20)
    print("inside", tuned, inside)
size = 30 * 2**20
print("after", mapped(size), mapped(size))
'''


def probe(case: str) -> dict[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", PROBE, case], capture_output=True, text=True,
                          timeout=300, check=True)
    return {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()}


@pytest.fixture(scope="module")
def glibc() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc is Linux's")
    from smoothgrad.guard import _glibc

    if _glibc() is None:
        pytest.skip("not glibc")


def test_smooth_leaves_glibcs_adaptive_threshold_alone(glibc: None) -> None:
    untouched = probe("nothing")["after"]
    assert untouched == ["True", "False"]  # adaptive: the freed block raised the threshold
    assert probe("smooth")["after"] == untouched  # issue 18: it was ["False", "False"]


def test_the_opt_in_guard_does_what_its_docstring_says(glibc: None) -> None:
    """Inside: no block is mapped. After: thresholds at 32 MiB, adaptivity off for good."""
    seen = probe("guard")
    assert seen["inside"] == ["True", "False"]
    assert seen["after"] == ["False", "False"]
