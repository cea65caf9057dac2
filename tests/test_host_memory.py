"""The process-wide memory settings every rlhfkit command applies (rlhfkit.host_memory)."""

import os
import platform
import subprocess
import sys

import pytest

from rlhfkit import cli, host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A fresh process (the setting is process-wide) frees a 256 MB buffer it wrote and prints
# whether the setting applied and how many MB of resident memory the free gave the kernel back.
FREE_AND_MEASURE = """
import sys
from rlhfkit.host_memory import keep_freed_memory

def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

applied = keep_freed_memory() if sys.argv[1] == "keep" else False
buffer = bytearray(b"\\x01") * (256 * 2**20)
held = resident()
del buffer
print(applied, (held - resident()) / 2**20)
"""


def free_in_child(mode: str, **user_env: str) -> tuple[bool, float]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in host_memory.GLIBC_MALLOC_VARIABLES and key != "GLIBC_TUNABLES"
    }
    out = subprocess.run(
        [sys.executable, "-c", FREE_AND_MEASURE, mode],
        env={**env, **user_env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0] == "True", float(out[1])


@pytest.mark.skipif(not GLIBC, reason="keep_freed_memory tunes glibc's malloc")
def test_freed_memory_stays_mapped_for_reuse():
    applied, given_back = free_in_child("keep")
    assert applied
    assert given_back < 16  # the 256 MB stay in the heap for the next allocation
    applied, given_back = free_in_child("default")
    assert not applied
    assert given_back > 200  # glibc's default unmaps a buffer this large when it is freed


@pytest.mark.skipif(not GLIBC, reason="keep_freed_memory tunes glibc's malloc")
def test_a_users_own_malloc_setting_wins():
    applied, given_back = free_in_child("keep", MALLOC_TRIM_THRESHOLD_="131072")
    assert not applied
    assert given_back > 200
    applied, _ = free_in_child("keep", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")
    assert not applied


def test_commands_ask_torch_for_huge_pages_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    assert cli.main(["--version"]) == 0
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    assert cli.main(["--version"]) == 0
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
