"""Run a Flower App on a local federation: Flower's simulation runtime or a TLS deployment.

Everything binds 127.0.0.1 on free ports, lives in one temporary directory (its own FLWR_HOME,
certificates, databases, logs), is bounded in time, and on exit stops exactly the processes it
started (each in its own process group, so the ClientApp/ServerApp subprocesses go too).

* :func:`make_tls`: a CA and a server certificate for 127.0.0.1 (``cryptography``).
* :class:`LocalFederation`: ``flower-superlink`` (``--simulation`` or TLS deployment), N
  ``flower-supernode`` processes with ``partition-id``/``num-partitions`` node configs, and
  ``flwr run <app> <connection>``; ``kill_supernode(i)`` sends SIGKILL to one SuperNode.

Used by the slow tests (tests/test_flower_slow.py) and the deployment benchmark (``main``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_tls(directory: Path) -> dict[str, Path]:
    """A self-signed CA and a server key/certificate for 127.0.0.1 and localhost."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "secagg test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        "ca": directory / "ca.crt",
        "cert": directory / "server.pem",
        "key": directory / "server.key",
    }
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class LocalFederation:
    """A SuperLink plus (in deployment) N SuperNodes on loopback; a context manager.

    Args:
        nodes: SuperNodes (deployment) or simulated nodes (simulation).
        simulation: Flower's simulation runtime (Ray) instead of real SuperNodes.
        tls: TLS between SuperNodes and the SuperLink (deployment only).
        workdir: where everything goes (a fresh temporary directory by default).
    """

    def __init__(
        self,
        nodes: int,
        *,
        simulation: bool = False,
        tls: bool = True,
        workdir: Path | None = None,
    ) -> None:
        self.nodes, self.simulation, self.tls = nodes, simulation, tls and not simulation
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="flwr-")
        self.dir = Path(workdir if workdir is not None else self._tmp.name)  # type: ignore[union-attr]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.supernodes: list[subprocess.Popen[bytes]] = []
        self.env = dict(os.environ, FLWR_HOME=str(self.dir / "flwr-home"))
        self.env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        self.env["PATH"] = f"{BIN}{os.pathsep}{self.env.get('PATH', '')}"
        # Flower 1.42 serves the Control, Fleet and Runtime APIs over HTTP on one port.
        self.port = free_port()

    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        home = self.dir / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        link = [
            str(BIN / "flower-superlink"),
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database",
            str(self.dir / "state.db"),
            # The apps run in this environment (secagg, torch): no per-run virtualenv.
            "--disable-runtime-dependency-installation",
        ]
        connection = [f'address = "127.0.0.1:{self.port}"']
        if self.simulation:
            link += ["--simulation", "--insecure"]
            connection.append("insecure = true")
        elif self.tls:
            self.certs = make_tls(self.dir / "certificates")
            link += [
                "--ssl-ca-certfile",
                str(self.certs["ca"]),
                "--ssl-certfile",
                str(self.certs["cert"]),
                "--ssl-keyfile",
                str(self.certs["key"]),
            ]
            connection.append(f'root-certificates = "{self.certs["ca"]}"')
        else:
            link.append("--insecure")
            connection.append("insecure = true")
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "test"\n\n[superlink.test]\n' + "\n".join(connection) + "\n"
        )
        self._spawn("superlink", link)
        self._wait_port(self.port, 60)
        if not self.simulation:
            for i in range(self.nodes):
                self.supernodes.append(self._spawn_supernode(i))

    def _spawn_supernode(self, i: int) -> subprocess.Popen[bytes]:
        args = [
            str(BIN / "flower-supernode"),
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--node-config",
            f"partition-id={i} num-partitions={self.nodes}",
            "--isolation",
            "subprocess",
            "--port",
            str(free_port()),
            "--max-retries",
            "3",
        ]
        if self.tls:
            args += ["--root-certificates", str(self.certs["ca"])]
        else:
            args.append("--insecure")
        return self._spawn(f"supernode-{i}", args)

    def _wait_port(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a Flower process exited early: see {self.dir}/*.log")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"port {port} did not open within {timeout} s")

    def run(
        self, app: Path, run_config: dict[str, Any], *, timeout: float = 900.0
    ) -> subprocess.Popen[bytes]:
        """Start ``flwr run`` (streaming the logs to ``flwr-run.log``); returns the process."""
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        args = [str(BIN / "flwr"), "run", str(app), "test", "--stream", "--run-config", overrides]
        if self.simulation:
            args += [
                "--federation-config",
                f"num-supernodes={self.nodes} client-resources-num-cpus=1 init-args-num-cpus=2",
            ]
        self.run_deadline = time.monotonic() + timeout
        return self._spawn("flwr-run", args)

    def wait(self, proc: subprocess.Popen[bytes]) -> int:
        remaining = max(1.0, self.run_deadline - time.monotonic())
        try:
            return proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"flwr run did not finish in time: see {self.dir}") from None

    def kill_supernode(self, i: int) -> None:
        """SIGKILL SuperNode ``i`` and its ClientApp processes (its process group)."""
        proc = self.supernodes[i]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop every process this federation started, and everything they started (Flower's
        SuperExec, the simulation, Ray's workers live in process groups of their own)."""
        tree = _descendants({p.pid for p in self.procs if p.poll() is None})
        groups = {_pgid(pid) for pid in tree} - {None, os.getpgid(0)}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for group in groups:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, sig)  # type: ignore[arg-type]
            for pid in tree:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and any(_alive(pid) for pid in tree):
                for proc in self.procs:
                    proc.poll()
                time.sleep(0.2)
        for proc in self.procs:
            proc.poll()
        if self._tmp is not None and not os.environ.get("SECAGG_KEEP_FLWR_DIR"):
            self._tmp.cleanup()


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def _descendants(roots: set[int]) -> set[int]:
    """``roots`` and every process below them (read from /proc)."""
    children = _children()
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stack.extend(children.get(pid, []))
    return seen


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


APP = Path(__file__).resolve().parents[1] / "examples" / "flower_parameter_parts"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--simulation", action="store_true")
    p.add_argument("--no-tls", action="store_true")
    a = p.parse_args(argv)
    with LocalFederation(a.nodes, simulation=a.simulation, tls=not a.no_tls) as fed:
        results = fed.dir / "results.json"
        start = time.perf_counter()
        proc = fed.run(
            APP,
            {
                "num-server-rounds": a.rounds,
                "min-nodes": a.nodes,
                "results-file": str(results),
            },
        )
        rc = fed.wait(proc)
        wall = time.perf_counter() - start
        out = json.loads(results.read_text()) if results.exists() else None
        print(json.dumps({"rc": rc, "wall_seconds": wall, "results": out}))
        if rc != 0 or out is None:
            print(fed.log("flwr-run")[-3000:], file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
