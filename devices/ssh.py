"""Linux boards (Raspberry Pi, Jetson, any board with sshd and Python 3.8+) over the system OpenSSH client.

Why the system ``ssh`` and not a Python SSH library: users' ``~/.ssh/config`` host aliases, agents,
ProxyJump hosts, certificates and known_hosts all just work, and nothing new needs trusting.

Why only ``ssh`` (no ``scp``/``sftp``): files go up as one tar stream on ``ssh``'s stdin, unpacked by
the device's own Python, and come back with ``cat``. That is one connection per step, needs nothing on
the board beyond the Python the runner needs anyway (Dropbear boards have no sftp-server; scp's
protocol changed in OpenSSH 9), and no remote path is ever parsed by a second program.

Safety: ``ssh`` is always called with an argument list. The remote side does run a shell (that is
how SSH works), so every remote command is built with ``shlex.join`` from fixed words plus values
that are quoted: the interpreter path and working folder from the inventory. Hosts and users were
validated in ``target.py`` (no leading ``-``) and go after ``--``.

Options always set: ``BatchMode=yes`` (never prompt for a password or a host key: a prompt would
hang an unattended run), ``ConnectTimeout``, keep-alives, ``LogLevel=ERROR``. Failures are sorted
into one line each: unreachable (refused, timed out, no route, unknown host), authentication
rejected, unknown host key, no Python on the device.
"""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from micronet.errors import MicronetError

from .base import AuthError, DeviceError, UnreachableError
from .remote import WORKDIR_PREFIX, RunnerDevice, Transport, check_workdir, probe_source
from .target import DeviceSpec

SSH_ERROR_EXIT = 255

_UNPACK = (
    "import sys, tarfile\n"
    "kw = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}\n"
    "with tarfile.open(fileobj=sys.stdin.buffer, mode='r|') as t:\n"
    "    for m in t:\n"
    "        if m.isfile() and '/' not in m.name:\n"
    "            t.extract(m, sys.argv[1], **kw)\n"
)
_MKDTEMP = ("import os, sys, tempfile\n"
            "base = sys.argv[2] or None\n"
            "if base: os.makedirs(base, exist_ok=True)\n"
            "print(tempfile.mkdtemp(prefix=sys.argv[1], dir=base))\n")


def ssh_base_args(target: DeviceSpec, program: str = "ssh") -> list[str]:
    """``ssh`` and its options for ``target``, up to (not including) the destination."""
    o = target.options
    args = [program, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={o.connect_timeout_s}",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", "LogLevel=ERROR"]
    if o.ssh_config is not None:
        args += ["-F", str(o.ssh_config)]
    if o.identity is not None:
        args += ["-i", str(o.identity)]
    if target.port is not None:
        args += ["-p", str(target.port)]
    for option in o.ssh_options:
        args += ["-o", option]
    return args


def ssh_command(target: DeviceSpec, remote_argv: list[str]) -> list[str]:
    """The full argument list for running ``remote_argv`` on the device; the remote shell sees it quoted."""
    return [*ssh_base_args(target), "--", target.ssh_destination, shlex.join(remote_argv)]


def classify_failure(stderr: str, target: DeviceSpec) -> DeviceError | None:
    """Turn ``ssh``'s own error output into one line, or None if the error is not ``ssh``'s."""
    where = target.text
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    ssh_lines = [line for line in lines if line.startswith(("ssh:", "kex_exchange", "Connection closed", "banner"))
                 or "Permission denied" in line or "Host key verification failed" in line]
    last = ssh_lines[-1] if ssh_lines else ""
    text = "\n".join(lines)
    if "Permission denied" in text or "Too many authentication failures" in text:
        line = next(line for line in lines if "Permission denied" in line or "Too many" in line)
        return AuthError(f"{where}: authentication failed ({line.removeprefix('ssh: ')}): check the user name, "
                         "the key (identity = in devices.toml, or ssh-agent) and ~/.ssh/authorized_keys on the device")
    if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return AuthError(f"{where}: the device's host key is unknown or has changed; connect once by hand "
                         f"(ssh{' -p ' + str(target.port) if target.port else ''} {target.ssh_destination}) to check and "
                         "accept it (micronet runs ssh with BatchMode and never answers prompts)")
    if "Could not resolve hostname" in text:
        return UnreachableError(f"{where}: unreachable: cannot resolve host name {target.host}")
    for needle, why in (("Connection refused", "connection refused (no SSH server on that port?)"),
                        ("timed out", f"connection timed out after {target.options.connect_timeout_s} s"),
                        ("No route to host", "no route to host"), ("Network is unreachable", "network is unreachable"),
                        ("Connection reset", "connection reset by the device"),
                        ("Connection closed", "the device closed the connection"),
                        ("kex_exchange_identification", "the device closed the connection")):
        if needle in text:
            return UnreachableError(f"{where}: unreachable: {why}")
    if last:
        return DeviceError(f"{where}: ssh failed: {last.removeprefix('ssh: ')}")
    return None


class SshTransport(Transport):
    """Run commands and move files on an SSH device with the ``ssh`` client alone."""

    def __init__(self, target: DeviceSpec) -> None:
        self.target = target
        self.python = target.options.python

    # -- one ssh call -------------------------------------------------------------------------------

    def call(self, remote_argv: list[str], *, stdin: bytes | None = None, timeout_s: float | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
        """Run one remote command. With ``check``, any failure is raised as one line."""
        argv = ssh_command(self.target, remote_argv)
        limit = timeout_s if timeout_s is not None else self.target.options.connect_timeout_s + 120
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=limit)
        except FileNotFoundError:
            raise MicronetError("ssh not found: install the OpenSSH client (Debian/Ubuntu: apt-get install "
                                "openssh-client)") from None
        except subprocess.TimeoutExpired:
            if not check:
                raise  # the caller words it (the benchmark run has its own timeout_s)
            raise DeviceError(f"{self.target.text}: {remote_argv[0]} did not finish within {limit:g} s") from None
        if proc.returncode == SSH_ERROR_EXIT:
            error = classify_failure(proc.stderr.decode("utf-8", "replace"), self.target)
            if error is not None:
                raise error
        if check and proc.returncode != 0:
            raise self._remote_failure(proc, remote_argv)
        return proc

    def _remote_failure(self, proc: subprocess.CompletedProcess, remote_argv: list[str]) -> DeviceError:
        stderr = proc.stderr.decode("utf-8", "replace")
        last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "no error output")
        if proc.returncode == 127 and remote_argv[0] == self.python:
            return DeviceError(f"{self.target.text}: no Python at {self.python!r} on the device ({last}); install "
                               "python3 and numpy there, or set python = \"/path/to/python3\" in devices.toml")
        return DeviceError(f"{self.target.text}: {remote_argv[0]} failed on the device "
                           f"(exit status {proc.returncode}): {last}")

    # -- Transport ----------------------------------------------------------------------------------

    def probe(self) -> dict[str, Any]:
        proc = self.call([self.python, "-", "--probe"], stdin=probe_source())
        try:
            return json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise DeviceError(f"{self.target.text}: the probe printed no JSON (is {self.python!r} Python 3.8+?)") from None

    def make_workdir(self) -> str:
        base = self.target.options.workdir or ""
        proc = self.call([self.python, "-c", _MKDTEMP, WORKDIR_PREFIX, base])
        return check_workdir(proc.stdout.decode("utf-8", "replace"))

    def push(self, files: dict[str, Path], workdir: str) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, source in files.items():
                tar.add(str(source), arcname=name, recursive=False)
        self.call([self.python, "-c", _UNPACK, workdir], stdin=buffer.getvalue(),
                  timeout_s=self.target.options.connect_timeout_s + self.target.options.timeout_s)

    def run_runner(self, workdir: str, timeout_s: float) -> subprocess.CompletedProcess:
        return self.call([self.python, f"{workdir}/runner.py", "--supervise", f"{workdir}/request.json"],
                         timeout_s=timeout_s, check=False)

    def fetch(self, workdir: str, name: str) -> bytes:
        return self.call(["cat", "--", f"{workdir}/{name}"]).stdout

    def remove_workdir(self, workdir: str) -> None:
        self.call(["rm", "-rf", "--", check_workdir(workdir)])


class SshDevice(RunnerDevice):
    kind = "ssh"

    def __init__(self, target: DeviceSpec) -> None:
        super().__init__(target, SshTransport(target))
