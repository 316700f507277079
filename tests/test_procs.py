"""How a worker is started: what it inherits and what it does not.

Reference: what ``subprocess.Popen(..., start_new_session=True, stdin=DEVNULL,
pass_fds=..., restore_signals=True, close_fds=True)`` gives a child, plus
``PR_SET_PDEATHSIG = SIGKILL``. Both ways clusterlab starts a worker are checked:
through util-linux ``setpriv --pdeathsig`` with ``os.posix_spawn``, and the
``prctl`` fallback for machines whose setpriv lacks the option.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from clusterlab import procs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")

# The child reports what it was given, as one JSON line.
PROBE = r"""
import ctypes, json, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
sig = ctypes.c_int()
libc.prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
fds = sorted(int(x) for x in os.listdir("/proc/self/fd"))
print(json.dumps({
    "pdeathsig": sig.value,
    "session_leader": os.getsid(0) == os.getpid(),
    "stdin": os.readlink("/proc/self/fd/0"),
    "fds": fds,
    "passed": os.read(int(sys.argv[1]), 100).decode() if len(sys.argv) > 1 else None,
}))
print("to stderr", file=sys.stderr)
"""


@pytest.fixture(params=["setpriv", "prctl"])
def spawn_mode(request, monkeypatch):
    monkeypatch.setattr(procs, "_fds_checked", False)  # as in a launcher that has not started a worker yet
    if request.param == "setpriv":
        if not procs.setpriv_prefix():
            pytest.skip("this machine's setpriv has no --pdeathsig (util-linux < 2.33)")
    else:
        monkeypatch.setattr(procs, "_setpriv", [])
    return request.param


def _run(argv, pass_fds=(), cwd=None):
    proc = procs.spawn(argv, dict(os.environ), pass_fds=pass_fds, cwd=cwd)
    out = b""
    while chunk := os.read(proc.stdout.fileno(), 65536):
        out += chunk
    err = os.read(proc.stderr.fileno(), 65536)
    code = proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    return code, out.decode(), err.decode()


def test_worker_inherits_what_popen_would_give_plus_pdeathsig(spawn_mode, tmp_path):
    leak = os.open(tmp_path, os.O_RDONLY)  # inheritable, as a shell would hand the launcher one
    os.set_inheritable(leak, True)
    r, w = os.pipe()
    os.write(w, b"through pass_fds")
    os.close(w)
    try:
        code, out, err = _run([sys.executable, "-c", PROBE, str(r)], pass_fds=(r,))
        assert not os.get_inheritable(r), "pass_fds must not stay inheritable in the agent"
    finally:
        os.close(leak)
        os.close(r)
    assert code == 0, err
    seen = json.loads(out)
    assert seen["pdeathsig"] == signal.SIGKILL
    assert seen["session_leader"] is True
    assert seen["stdin"] == os.devnull
    assert seen["passed"] == "through pass_fds"
    assert leak not in seen["fds"], seen["fds"]
    assert len(set(seen["fds"]) - {0, 1, 2, r}) <= 1, seen["fds"]  # the one listdir itself opened
    assert err == "to stderr\n"


def test_signals_start_at_their_defaults(spawn_mode):
    """Python ignores SIGPIPE for itself; as with Popen's restore_signals, a worker must not inherit
    that (``yes | head`` would never stop), nor signals the agent had blocked around a fork."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        # grep reads its own status: what the worker inherited (the shell itself blocks signals
        # around its forks, so reading the shell's status from a child races with that)
        _, out, _ = _run(["/bin/sh", "-c", "exec grep -E '^Sig(Ign|Blk)' /proc/self/status"])
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    masks = {line.split(":")[0]: int(line.split()[1], 16) for line in out.splitlines()}
    assert not masks["SigIgn"] & (1 << (signal.SIGPIPE - 1)), out
    assert masks["SigBlk"] == 0, out


def test_exit_status_and_signals_as_popen_reports_them(spawn_mode):
    assert _run([sys.executable, "-c", "raise SystemExit(3)"])[0] == 3
    proc = procs.spawn([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ))
    with pytest.raises(TimeoutError):
        proc.wait(timeout=0.05)
    assert proc.poll() is None
    procs.signal_group(proc, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stdout.close()
    proc.stderr.close()


def test_missing_program_is_an_oserror_at_once(spawn_mode, tmp_path):
    with pytest.raises(FileNotFoundError):
        procs.spawn([str(tmp_path / "no-such-program")], dict(os.environ))
    with pytest.raises(FileNotFoundError):
        procs.spawn(["no-such-program-anywhere"], dict(os.environ, PATH=str(tmp_path)))


def test_cwd_and_a_program_relative_to_it(spawn_mode, tmp_path):
    script = tmp_path / "here.sh"
    script.write_text("#!/bin/sh\npwd\n")
    script.chmod(0o755)
    before = os.getcwd()
    code, out, _ = _run(["./here.sh"], cwd=str(tmp_path))
    assert code == 0 and out.strip() == str(tmp_path)
    assert os.getcwd() == before
