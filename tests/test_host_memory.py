"""Freed host memory is kept for reuse: large tensors stop page-faulting on every allocation."""

import platform
import resource
import subprocess
import sys
import textwrap

import pytest

from transkd import host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A 64 MiB tensor allocated and freed 20 times after 10 warm-up rounds: with glibc's defaults each
# allocation is a fresh mmap whose 16,384 pages fault in again; with freed memory kept, the heap has
# grown to hold it during the warm-up (alignment may take it a few rounds) and is reused.
_PROBE = textwrap.dedent("""
    import resource, sys, torch
    from transkd.host_memory import host_allocator, reuse_freed_memory
    if sys.argv[1] == "reuse":
        reuse_freed_memory()
    for _ in range(10):
        torch.empty(16 * 2**20).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.empty(16 * 2**20).fill_(1.0)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, host_allocator())
""")


def _faults(mode: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         check=True, env=env).stdout.split(maxsplit=1)
    return int(out[0]), out[1].strip()


@pytest.mark.skipif(not GLIBC, reason="the setting exists on glibc only")
def test_reuse_removes_the_page_faults_of_large_allocations():
    system_faults, system_state = _faults("system")
    reuse_faults, reuse_state = _faults("reuse")
    assert system_state == "system"
    assert reuse_state.startswith("reuse")
    assert system_faults > 20 * 16_000  # every allocation faulted its 64 MiB in again
    assert reuse_faults < 16_384  # less than one allocation's pages in 20


@pytest.mark.skipif(not GLIBC, reason="the setting exists on glibc only")
def test_environment_variable_keeps_the_system_defaults(monkeypatch):
    import os

    env = dict(os.environ, **{host_memory.ENV_VAR: "system"})
    faults, state = _faults("reuse", env)
    assert state == f"system ({host_memory.ENV_VAR}=system)"
    assert faults > 20 * 16_000


def test_state_is_recorded_and_the_call_is_idempotent(monkeypatch):
    monkeypatch.setattr(host_memory, "_state", "system")
    first = host_memory.reuse_freed_memory()
    assert host_memory.reuse_freed_memory() == first == host_memory.host_allocator()
    assert first.startswith("reuse") == GLIBC
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0
