"""The images: every Dockerfile lints clean (hadolint, `trivy config`), scripts/build-images.sh
builds them with podman, and each service image is small and runs locked down the way
Kubernetes and OpenShift run it.

    .venv/bin/python tests/deploy/check_images.py
"""

from __future__ import annotations

import json
import urllib.request

from deploytools import ROOT, CheckFailed, eventually, free_port, main, podman, run, tool, trivy_config

DOCKERFILES = [ROOT / "Dockerfile", ROOT / "tests/oidc/Dockerfile", ROOT / "tests/echo/Dockerfile"]
VERSION = next(line.split('"')[1] for line in (ROOT / "Cargo.toml").read_text().splitlines()
               if line.startswith("version = "))
SERVICES = {"ratelimit": 8080, "extauth": 9192, "transform": 9292}  # service -> HTTP port
MAX_IMAGE_BYTES = 40_000_000
# OpenShift's restricted-v2 runs a pod as an arbitrary UID from the namespace's range, group 0.
ARBITRARY_UID = "1000650000:0"


def dockerfiles_lint_clean():
    run([tool("hadolint"), *map(str, DOCKERFILES)])
    for dockerfile in DOCKERFILES:
        trivy_config(dockerfile.parent, file_patterns=f"dockerfile:^{dockerfile.name}$")
    return f"hadolint and trivy config (HIGH, CRITICAL): {', '.join(str(d.relative_to(ROOT)) for d in DOCKERFILES)}"


def images_build():
    run([str(ROOT / "scripts/build-images.sh")])
    sizes = {}
    for service in SERVICES:
        info = json.loads(podman("image", "inspect", f"gatehouse/{service}:{VERSION}").stdout)[0]
        sizes[service] = info["Size"]
        if info["Size"] >= MAX_IMAGE_BYTES:
            raise CheckFailed(f"gatehouse/{service}:{VERSION} is {info['Size'] / 1e6:.1f} MB, over 40 MB")
        config = info["Config"]
        if config.get("User") in (None, "", "0", "root") or not config["User"].split(":")[0].isdigit():
            raise CheckFailed(f"gatehouse/{service}: USER must be numeric and non-root, is {config.get('User')!r}")
    return ", ".join(f"{s} {b / 1e6:.1f} MB" for s, b in sizes.items())


def images_run_locked_down():
    """Each service image: read-only root, no capabilities, no-new-privileges, an arbitrary UID
    in group 0; its /healthcheck answers over the published port and its HEALTHCHECK passes."""
    config = {
        "ratelimit": (["-e", "BACKEND_TYPE=memory", "-v", f"{ROOT}/examples/ratelimit:/data/ratelimit:ro"]),
        # The directory: the policies name files next to them (the browser login's secrets).
        "extauth": (["-v", f"{ROOT}/examples/extauth:/etc/gatehouse/extauth:ro",
                     "-e", "EXTAUTH_CONFIG=/etc/gatehouse/extauth/policies.yaml"]),
        "transform": (["-v", f"{ROOT}/examples/transform/transformations.yaml:/etc/gatehouse/transform.yaml:ro"]),
    }
    for service, port in SERVICES.items():
        name = f"gatehouse-check-{service}"
        host_port = free_port()
        podman("rm", "-f", name)
        podman("run", "-d", "--name", name, "--read-only", "--cap-drop=ALL",
               "--security-opt", "no-new-privileges", "--user", ARBITRARY_UID,
               "-p", f"127.0.0.1:{host_port}:{port}", *config[service], f"gatehouse/{service}:{VERSION}")
        try:
            wait_http_ok(f"http://127.0.0.1:{host_port}/healthcheck", name)
            podman("healthcheck", "run", name)
            version = podman("exec", name, f"/usr/local/bin/gatehouse-{service}", "--version").stdout
            if not version.startswith(f"gatehouse-{service}"):
                raise CheckFailed(f"{name}: --version printed {version!r}")
        finally:
            podman("rm", "-f", "-t", "1", name)
    # Envoy Gateway starts its rate-limit container as /bin/ratelimit.
    out = podman("run", "--rm", "--read-only", "--entrypoint", "/bin/ratelimit",
                 f"gatehouse/ratelimit:{VERSION}", "--version").stdout
    if not out.startswith("gatehouse-ratelimit"):
        raise CheckFailed(f"/bin/ratelimit --version printed {out!r}")
    return f"as UID {ARBITRARY_UID}, read-only, cap-drop ALL, no-new-privileges: /healthcheck 200 and HEALTHCHECK pass; /bin/ratelimit runs"


def wait_http_ok(url: str, container: str, timeout: float = 20.0) -> None:
    def ok():
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200

    def logs():
        out = podman("logs", container, expect_ok=None)
        return out.stdout + out.stderr

    eventually(f"{url} answers 200", ok, timeout, logs)


if __name__ == "__main__":
    main([dockerfiles_lint_clean, images_build, images_run_locked_down])
