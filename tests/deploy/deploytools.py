"""Shared helpers for the deployment checks in tests/deploy (run by `make deploy-check`).

Every check is a plain script that prints what it checked and exits non-zero on the first
class of failure it finds. The tools come from .venv (scripts/deploy-tools.txt) and
tests/deploy/node_modules; scripts/install-test-deps.sh installs both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Sequence

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "tests" / "deploy"
VENV_BIN = ROOT / ".venv" / "bin"
# Where cargo put the service binaries (their check-config validates configs).
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")

# The Kubernetes versions every manifest is validated against: the oldest we support and
# the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")


class CheckFailed(Exception):
    pass


def tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        raise CheckFailed(f"{path} is missing: run scripts/install-test-deps.sh")
    return str(path)


def run(cmd: Sequence[str], *, expect_ok: bool | None = True, input: str | None = None,
        cwd: Path | None = None, env: dict | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a command, capturing output; raise CheckFailed with its output if the exit status
    is not what was expected (`expect_ok=None`: either is fine)."""
    proc = subprocess.run(list(cmd), input=input, capture_output=True, text=True,
                          cwd=cwd or ROOT, env={**os.environ, **(env or {})}, timeout=timeout)
    ok = proc.returncode == 0
    if expect_ok is not None and ok != expect_ok:
        want = "succeed" if expect_ok else "fail"
        raise CheckFailed(
            f"expected `{' '.join(map(str, cmd))}` to {want} (exit {proc.returncode})\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def load_docs(path: Path) -> list[dict]:
    """Every non-empty YAML document in a file."""
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kubernetes_validate(files: Iterable[Path], versions: Sequence[str] = KUBERNETES_VERSIONS) -> str:
    """Built-in kinds against the real OpenAPI schemas, strictly (unknown fields fail).
    Returns what it printed: warnings, such as "Couldn't find schema" for a kind it skipped."""
    files = [str(f) for f in files]
    output = ""
    for version in versions:
        output += run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, *files]).stdout
    return output


# API groups Kubernetes serves itself. Any other group is a custom resource (validate_crds),
# *.k8s.io groups served by CRDs such as gateway.networking.k8s.io included.
BUILTIN_API_GROUPS = frozenset({
    "", "admissionregistration.k8s.io", "apiextensions.k8s.io", "apiregistration.k8s.io", "apps",
    "authentication.k8s.io", "authorization.k8s.io", "autoscaling", "batch", "certificates.k8s.io",
    "coordination.k8s.io", "discovery.k8s.io", "events.k8s.io", "flowcontrol.apiserver.k8s.io",
    "networking.k8s.io", "node.k8s.io", "policy", "rbac.authorization.k8s.io", "resource.k8s.io",
    "scheduling.k8s.io", "storage.k8s.io", "storagemigration.k8s.io",
})


def is_custom_resource(doc: dict) -> bool:
    """Whether a manifest's kind comes from a CRD rather than Kubernetes itself."""
    group, _, _ = str(doc.get("apiVersion", "")).rpartition("/")
    return group not in BUILTIN_API_GROUPS


def write_docs(path: Path, docs: Iterable[dict]) -> Path:
    """Write manifests to one multi-document YAML file; returns the path."""
    path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    return path


def validate_crds(files: Iterable[Path]) -> str:
    """Custom resources against their @kubernetes-models CRD models, plus the strict pass
    for unknown fields (tests/deploy/validate-crds.mjs). Returns its report."""
    return run(["node", str(DEPLOY / "validate-crds.mjs"), *map(str, files)]).stdout


def envoy_validate(config: Path) -> None:
    """An Envoy bootstrap loads in .venv's Envoy (`envoy --mode validate`: every field known,
    every typed config resolvable; nothing is bound or connected), without deprecated fields."""
    proc = run([tool("envoy"), "--mode", "validate", "--log-level", "warning", "-c", str(config)])
    deprecated = [line for line in proc.stderr.splitlines() if "Deprecated field" in line]
    if deprecated:
        raise CheckFailed(f"{config}: deprecated fields:\n" + "\n".join(deprecated))


def trivy_config(path: Path, file_patterns: str | None = None) -> None:
    """`trivy config` offline with its embedded checks: no HIGH or CRITICAL finding.
    `file_patterns` as trivy's --file-patterns (e.g. "dockerfile:^Dockerfile$")."""
    patterns = ["--file-patterns", file_patterns] if file_patterns else []
    run([tool("trivy"), "config", "--quiet", "--skip-check-update", "--exit-code", "1",
         "--severity", "HIGH,CRITICAL", *patterns, str(path)])


# Podman with this project's settings (runc, ulimits): tests/deploy/containers.conf.
PODMAN_ENV = {"CONTAINERS_CONF": str(DEPLOY / "containers.conf")}


def podman(*args: str, expect_ok: bool | None = True, timeout: float | None = 120) -> subprocess.CompletedProcess:
    return run(["podman", *args], expect_ok=expect_ok, env=PODMAN_ENV, timeout=timeout)


def eventually(what: str, probe, timeout: float, logs=lambda: "") -> object:
    """Retry `probe` (a true result when satisfied; OSError counts as not yet) every 0.25 s
    until it is, or fail naming `what`, the last error and `logs()`."""
    import time
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except OSError as e:
            last = e
        time.sleep(0.25)
    raise CheckFailed(f"{what}: not within {timeout}s (last error: {last})\n{logs()}")


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the kernel's pick)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(checks: Sequence) -> None:
    """Run each check (a function), print ok/FAILED per check, and exit 1 if any failed."""
    failed = 0
    for check in checks:
        name = check.__name__
        try:
            note = check()
            print(f"ok      {name}" + (f": {note}" if note else ""))
        except CheckFailed as e:
            failed += 1
            print(f"FAILED  {name}\n{e}", file=sys.stderr)
    if failed:
        print(f"{failed} of {len(checks)} checks failed", file=sys.stderr)
        sys.exit(1)
