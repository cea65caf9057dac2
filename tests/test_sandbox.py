"""The sandbox the code reward runs programs in: each escape is contained, scored 0, and named.

The containment programs run together (``run_programs``), so the file's timeouts overlap.
"""

from __future__ import annotations

import os
import socket
import sys

import pytest

from rlhfkit.rewards import sandbox
from rlhfkit.rewards.sandbox import Limits, Outcome, run_program, run_programs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sandbox")

LIMITS = Limits(wall_s=4.0, cpu_s=1, memory_mb=256, processes=8, output_kb=64)


@pytest.fixture(scope="module")
def listener():
    """A TCP port on this machine that counts who connects to it."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    yield server
    server.close()


@pytest.fixture(scope="module")
def escapes(tmp_path_factory, listener) -> dict[str, tuple[Outcome, str]]:
    """Each hostile program's outcome, and where it tried to write."""
    outside = tmp_path_factory.mktemp("outside") / "escaped.txt"
    port = listener.getsockname()[1]
    programs = {
        "infinite loop": "while True:\n    pass\n",
        "sleeps past the wall clock": "import time\ntime.sleep(60)\n",
        "memory bomb": "hog = []\nwhile True:\n    hog.append(bytearray(50_000_000))\n",
        "fork bomb": "import os\nwhile True:\n    os.fork()\n",
        "forks that leave the process group": (
            "import os, time\nfor _ in range(6):\n    if os.fork() == 0:\n"
            "        os.setsid()\n        time.sleep(10)\nassert False, 'forked'\n"
        ),
        "write outside": f"open({str(outside)!r}, 'w').write('escaped')\n",
        "write outside, error caught": (
            f"try:\n    open({str(outside)!r}, 'w').write('escaped')\nexcept OSError:\n    pass\n"
        ),
        "network": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n",
        "output flood": "while True:\n    print('x' * 1000)\n",
        "early clean exit": "import os\nos._exit(0)\n",
        "prints passed": "print('passed')\nraise SystemExit(0)\n",
        "syntax error": "def broken(:\n",
        "failed assertion": "assert 1 + 1 == 3, 'arithmetic'\n",
    }
    outcomes = run_programs(list(programs.values()), LIMITS, workers=len(programs))
    return {name: (outcome, str(outside)) for name, outcome in zip(programs, outcomes, strict=True)}


@pytest.mark.parametrize(
    "program, reason",
    [
        ("infinite loop", "timeout"),
        ("sleeps past the wall clock", "timeout"),
        ("memory bomb", "memory"),
        ("fork bomb", "processes"),
        ("write outside", "filesystem"),
        ("write outside, error caught", "filesystem"),
        ("network", "network"),
        ("output flood", "output"),
        ("early clean exit", "exited"),
        ("prints passed", "exited"),
        ("syntax error", "syntax_error"),
        ("failed assertion", "failed"),
    ],
)
def test_each_escape_is_contained_scored_0_and_named(escapes, program, reason):
    outcome, _ = escapes[program]
    assert not outcome.passed
    assert outcome.reason == reason, outcome


def test_nothing_escaped_and_the_test_process_is_unharmed(escapes, listener, tmp_path):
    _, outside = escapes["write outside"]
    assert not os.path.exists(outside)
    with pytest.raises(TimeoutError):  # nobody connected
        listener.accept()
    assert not _sandbox_processes()  # the forked children (setsid ones included) are gone
    assert run_program("import math\nassert math.factorial(5) == 120\n", LIMITS).passed
    assert os.getcwd() and os.path.isdir(tmp_path)  # still here, still working


def test_kernel_layers_hold_without_the_audit_hook(tmp_path, listener):
    """ctypes goes around Python's audit hook; Landlock and the network namespace do not."""
    layers = sandbox.sandbox_layers()
    if not (layers["landlock"] and layers["network_namespace"]):
        pytest.skip(f"this kernel does not grant the sandbox's kernel layers: {layers}")
    target = tmp_path / "escaped-by-ctypes.txt"
    port = listener.getsockname()[1]
    write = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        f"fd = libc.open({str(target).encode()!r}, os.O_WRONLY | os.O_CREAT, 0o644)\n"
        "assert fd >= 0, f'open refused: errno {ctypes.get_errno()}'\n"
    )
    connect = (
        "import ctypes, struct\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "fd = libc.socket(2, 1, 0)\n"
        f"address = struct.pack('!HH4s8x', 0, {port}, bytes([127, 0, 0, 1]))\n"
        "address = struct.pack('<H', 2) + address[2:]\n"
        "assert libc.connect(fd, address, 16) == 0, f'refused: errno {ctypes.get_errno()}'\n"
    )
    for outcome in run_programs([write, connect], LIMITS):
        assert outcome.reason == "failed" and "refused" in outcome.detail, outcome
    assert not target.exists()
    with pytest.raises(TimeoutError):
        listener.accept()


def test_a_program_writes_in_its_own_directory_and_it_is_deleted_after():
    program = (
        "import os\nopen('notes.txt', 'w').write('kept')\n"
        "assert open('notes.txt').read() == 'kept'\nprint(os.getcwd())\n"
        "assert False, os.getcwd()\n"
    )
    outcome = run_program(program, LIMITS)
    assert outcome.reason == "failed"
    workdir = outcome.detail.removeprefix("AssertionError: ")
    assert "rlhfkit-sandbox-" in workdir and not os.path.exists(workdir)


def _sandbox_processes() -> list[int]:
    """Processes still running under a throwaway uid of this test process."""
    if os.geteuid() != 0:
        return []
    low = sandbox._THROWAWAY_UID + (os.getpid() % 65536) * 4096
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            uid = int(open(f"/proc/{entry}/status").read().split("Uid:")[1].split()[0])
        except (OSError, IndexError):
            continue
        if low <= uid < low + 4096:
            found.append(int(entry))
    return found
