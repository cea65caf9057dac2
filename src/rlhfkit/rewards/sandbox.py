"""Run untrusted Python (a model's code) in a contained child process, and say how it ended.

Each program runs in a fresh ``python -I -S`` process (isolated mode: no user site, no
``PYTHON*`` variables, no current directory on ``sys.path``) in its own session, in a
throwaway working directory that is deleted afterwards. Before the program's first line, a
trusted bootstrap in the child puts up these layers, each against something else:

==========================  =======================================================================
layer                       contains
==========================  =======================================================================
RLIMIT_CPU                  busy loops: SIGXCPU after ``cpu_s`` of CPU time
wall-clock timeout          sleeping or blocked programs: the parent kills the process group
RLIMIT_AS                   memory bombs: allocations past ``memory_mb`` raise MemoryError
RLIMIT_NPROC + throwaway    fork bombs. The kernel does not apply RLIMIT_NPROC to root, so when
uid (root only)             we run as root the child drops to an unused uid of its own (and no
                            groups): the limit then counts only its processes, and it loses
                            root's power to write anywhere or signal other processes. Without
                            root the limit counts all of the user's processes (stricter, shared).
RLIMIT_FSIZE                output floods: stdout, stderr and any file it writes stop at
                            ``output_kb`` (SIGXFSZ); the parent reads at most that much
network namespace           the network: ``unshare(CLONE_NEWNET)`` (as root, else in a new user
                            namespace where the kernel allows one) leaves only a loopback that
                            is down, so nothing is reachable, by any socket type
Landlock (Linux >= 5.13)    writes outside the working directory, TCP bind/connect (ABI 4), and
                            signals or abstract sockets reaching outside the sandbox (ABI 6);
                            enforced by the kernel, whatever the program calls (ctypes too)
audit hook                  records *why* a program failed: creating a socket or opening a file
                            for writing outside the working directory is refused with
                            PermissionError and noted in the verdict, even if the program
                            catches the error. Python-level only (a fallback where the kernel
                            layers are missing: ctypes or a C extension can go around it)
==========================  =======================================================================

``sandbox_layers()`` says which kernel layers this machine grants. The verdict reaches the
parent through a file descriptor the program never opened, stamped with a random nonce, so a
program that exits early (``os._exit(0)``) or prints "passed" does not pass. This contains
accidents and the shortcuts a policy stumbles on, not a determined attacker: a program that
reads the bootstrap's memory could forge the nonce, and Linux is the only system supported.
For hostile code use a VM or a container with seccomp (gVisor, nsjail, firejail).
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

REASONS = (
    "passed",  # the program (the tests) ran to the end
    "failed",  # an assertion failed
    "error",  # another exception (TypeError, NameError, ...)
    "syntax_error",
    "timeout",  # wall clock or CPU time
    "memory",
    "processes",  # could not start another process: the fork limit
    "output",  # wrote more than the output limit
    "network",  # tried to open a socket
    "filesystem",  # tried to write outside its working directory
    "exited",  # left before the end (sys.exit, os._exit, a signal of its own)
    "crashed",  # killed by a signal (a segfault in a C extension ...)
)
_THROWAWAY_UID = 1_500_000_000  # far above any real account; the child adds pid and a counter
_uids = itertools.count()


@dataclass(frozen=True)
class Limits:
    """What one program may use."""

    wall_s: float = 10.0
    """Seconds of wall-clock time before the whole process group is killed."""
    cpu_s: int = 5
    """Seconds of CPU time (RLIMIT_CPU)."""
    memory_mb: int = 1024
    """Address space (RLIMIT_AS): allocations past it raise MemoryError."""
    processes: int = 16
    """Processes (RLIMIT_NPROC) of the throwaway uid; without root, of the whole user."""
    output_kb: int = 1024
    """Size of stdout, stderr and each file written (RLIMIT_FSIZE)."""


@dataclass(frozen=True)
class Outcome:
    """How a program ended: ``reason`` is one of ``REASONS``; ``detail`` the last error line."""

    reason: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.reason == "passed"


def run_program(program: str, limits: Limits = Limits()) -> Outcome:
    """Run ``program`` in the sandbox (module docstring) and say how it ended."""
    nonce = secrets.token_hex(16)
    as_root = os.geteuid() == 0
    uid = _THROWAWAY_UID + (os.getpid() % 65536) * 4096 + next(_uids) % 4096 if as_root else -1
    with tempfile.TemporaryDirectory(prefix="rlhfkit-sandbox-") as scratch:
        root = Path(scratch)
        work = root / "work"
        work.mkdir()
        if as_root:
            os.chmod(root, 0o711)  # the throwaway uid may enter work/, not read the logs
            os.chown(work, uid, uid)
        with (
            open(root / "stdout", "wb") as out,
            open(root / "stderr", "wb") as err,
            open(root / "verdict", "wb") as verdict,
        ):
            settings = {
                **asdict(limits),
                "program": program,
                "nonce": nonce,
                "uid": uid,
                "verdict_fd": verdict.fileno(),
                "work": str(work),
            }
            child = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", "-c", _BOOTSTRAP],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                pass_fds=(verdict.fileno(),),
                cwd=work,
                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
                start_new_session=True,
            )
            timed_out = False
            try:
                child.communicate(json.dumps(settings).encode(), timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_all(child, uid)
        stamped = _read_tail(root / "verdict", limits.output_kb)
        stderr = _read_tail(root / "stderr", 4)
    return _outcome(child.returncode, timed_out, stamped, stderr, nonce)


def run_programs(
    programs: Sequence[str], limits: Limits = Limits(), workers: int = 0
) -> list[Outcome]:
    """``run_program`` for each program, ``workers`` at a time (0: one per CPU core, at most 4)."""
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda p: run_program(p, limits), programs))


def sandbox_layers() -> dict[str, bool]:
    """Which kernel layers this machine grants the sandbox (the module docstring's table)."""
    outcome = run_program("import json\nassert False, json.dumps(LAYERS)")
    return json.loads(outcome.detail.removeprefix("AssertionError: "))


def _outcome(returncode: int, timed_out: bool, stamped: str, stderr: str, nonce: str) -> Outcome:
    """The reason, from what the bootstrap stamped, the exit status and the timeout."""
    lines = [line.removeprefix(nonce + " ") for line in stamped.splitlines() if nonce in line]
    blocked = [line for line in lines if line.startswith(("network", "filesystem"))]
    if blocked:  # even if the program caught the PermissionError and carried on
        reason, _, detail = blocked[0].partition(" ")
        return Outcome(reason, detail)
    if timed_out or returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return Outcome("timeout", "past the wall-clock or CPU-time limit")
    if returncode == -signal.SIGXFSZ:
        return Outcome("output", "wrote past the output limit")
    final = [line for line in lines if not line.startswith(("network", "filesystem"))]
    if final:
        reason, _, detail = final[-1].partition(" ")
        if reason == "passed" and returncode != 0:
            return Outcome("exited", f"exit status {returncode} after the tests")
        return Outcome(reason, detail)
    if returncode < 0:
        return Outcome("crashed", f"killed by {signal.Signals(-returncode).name}")
    tail = stderr.strip().splitlines()
    return Outcome(
        "exited",
        f"exit status {returncode} before the tests ended" + (f": {tail[-1]}" if tail else ""),
    )


def _kill_all(child: subprocess.Popen, uid: int) -> None:
    """Kill the program's process group, then (running as root) every process of its uid:
    a forked child may have left the group with setsid()."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    child.wait()
    if uid < 0:
        return
    for _ in range(20):  # a fork bomb may fork while we kill; its limit keeps this short
        pids = _pids_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _pids_of(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue  # gone already
        for line in status.splitlines():
            if line.startswith("Uid:"):
                if int(line.split()[1]) == uid:
                    found.append(int(entry))
                break
    return found


def _read_tail(path: Path, kilobytes: int) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - kilobytes * 1024))
        return f.read().decode("utf-8", "replace")


# The trusted start of the child: read the settings, put up the layers, run the program.
# Everything here runs before any untrusted line; names are kept local to main().
_BOOTSTRAP = r"""
import ctypes, json, os, resource, sys

def main():
    settings = json.loads(sys.stdin.buffer.read())
    sys.stdin.close()
    nonce, work, fd = settings["nonce"], settings["work"], settings["verdict_fd"]
    me = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)
    linux = sys.platform.startswith("linux")  # the namespaces, capabilities and Landlock
    layers = {"network_namespace": False, "landlock": False, "throwaway_uid": False}

    def stamp(text):
        if os.getpid() == me:  # a forked child's verdict is not the program's
            os.write(fd, f"{nonce} {text}\n".encode("utf-8", "replace")[:4096])

    # 1. no network: a namespace of our own (root), else inside a new user namespace
    CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000
    for flags in (CLONE_NEWNET, CLONE_NEWNET | CLONE_NEWUSER) if linux else ():
        if libc.unshare(flags) == 0:
            layers["network_namespace"] = True
            break

    # 2. resource limits; the hard CPU limit one second later turns SIGXCPU into SIGKILL
    limit = resource.setrlimit
    limit(resource.RLIMIT_CPU, (settings["cpu_s"], settings["cpu_s"] + 1))
    limit(resource.RLIMIT_AS, (settings["memory_mb"] << 20,) * 2)
    limit(resource.RLIMIT_FSIZE, (settings["output_kb"] << 10,) * 2)
    limit(resource.RLIMIT_NPROC, (settings["processes"],) * 2)
    limit(resource.RLIMIT_CORE, (0, 0))

    # 3. root: become a throwaway uid, so the process limit applies and root's rights go
    if settings["uid"] >= 0:
        if linux:
            libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS: keep the permitted set across setuid
        os.setgroups([])
        os.setgid(settings["uid"])
        os.setuid(settings["uid"])
        layers["throwaway_uid"] = not linux or keep_reading(libc)

    # 4. Landlock: writes only under work/, no TCP, no signals or abstract sockets outside
    layers["landlock"] = linux and landlock(libc, work)

    # 5. the audit hook names what was refused, even if the program catches the error
    def audit(event, args):
        if event == "socket.__new__":
            stamp("network socket creation refused")
            raise PermissionError("sandbox: no network")
        if event == "open" and args[0] is not None and writes(args[1], args[2]):
            name = args[0]
            if isinstance(name, int):
                return
            path = os.path.realpath(os.fsdecode(name))
            if path != work and not path.startswith(work + os.sep):
                stamp(f"filesystem write to {path} refused")
                raise PermissionError(f"sandbox: no writing outside {work}")

    def writes(mode, flags):
        if isinstance(mode, str):
            return any(c in mode for c in "wax+")
        return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND))

    sys.addaudithook(audit)
    namespace = {"__name__": "__main__", "LAYERS": layers}
    try:
        code = compile(settings["program"], "<program>", "exec")
    except (SyntaxError, ValueError) as e:
        stamp(f"syntax_error {type(e).__name__}: {e}")
        return
    try:
        exec(code, namespace)
    except AssertionError as e:
        stamp(f"failed AssertionError: {e}")
    except MemoryError:
        stamp("memory MemoryError")
    except BlockingIOError as e:  # EAGAIN from fork: the process limit
        stamp(f"processes {e}")
    except OSError as e:
        reason = "output" if e.errno == 27 else "error"  # EFBIG: the file-size limit
        stamp(f"{reason} {type(e).__name__}: {e}")
    except SystemExit as e:
        stamp(f"exited sys.exit({e.code!r})")
    except BaseException as e:
        stamp(f"error {type(e).__name__}: {e}")
    else:
        stamp("passed")

def keep_reading(libc):
    # keep CAP_DAC_READ_SEARCH alone: Python's own files may live where only root reads
    # (/root/.pyenv); every other power of root is gone
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    read_search = 1 << 2
    data = (ctypes.c_uint32 * 6)(read_search, read_search, 0, 0, 0, 0)  # eff, perm, inh x 2
    return libc.capset(header, data) == 0

def landlock(libc, work):
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    abi = syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, VERSION)
    if abi < 1:
        return False
    writes = sum(1 << bit for bit in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))  # write, rm, mk*
    if abi >= 2:
        writes |= 1 << 13  # refer (rename/link across directories)
    if abi >= 3:
        writes |= 1 << 14  # truncate

    class Ruleset(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class Beneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    ruleset = Ruleset(writes, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    handle = syscall(444, ctypes.byref(ruleset), size, 0)
    if handle < 0:
        return False
    directory = os.open(work, os.O_PATH | os.O_CLOEXEC)
    beneath = Beneath(writes, directory)
    ok = syscall(445, handle, 1, ctypes.byref(beneath), 0) == 0  # LANDLOCK_RULE_PATH_BENEATH
    ok = ok and libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    ok = ok and syscall(446, handle, 0) == 0  # landlock_restrict_self
    os.close(directory)
    os.close(handle)
    return ok

main()
"""
