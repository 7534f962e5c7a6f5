#!/usr/bin/env python3
"""The integration guides' manifests (examples/k8s, docs/integrations) are valid for the
platforms and versions the guides name.

- Built-in kinds: the Kubernetes OpenAPI schemas, strictly, for 1.29 and 1.37 (and the
  apiVersion/kind must be one Kubernetes knows: kubernetes-validate only warns otherwise).
- Custom resources with a @kubernetes-models package (Gateway API, Istio, Traefik,
  Prometheus Operator): the CRD's validator plus the strict unknown-field pass of
  validate-crds.mjs.
- Envoy Gateway, kgateway and Emissary resources, which have no such package: the field
  allow-lists in tests/deploy/schemas/, derived from each project's API at the version the
  guide targets (the source is named in each file). So is Envoy Gateway's own configuration
  (the EnvoyGateway in the envoy-gateway-config ConfigMap) and istiod's meshConfig.
- Every Envoy config (envoy-equivalent.yaml, and envoy.yaml in a ConfigMap): `envoy --mode
  validate` from .venv, without deprecated fields.
- Gatehouse's own configs: gatehouse-values.yaml against the chart's values schema, and the
  rule files and policies in them (and in ConfigMaps) with the services' `check-config`.
- Each validator rejects a copy of a good manifest with one field name misspelt.

Run: .venv/bin/python tests/deploy/check_integrations.py (also `make deploy-check`).
"""

from __future__ import annotations

import copy
import json
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploytools as dt  # noqa: E402

EXAMPLES = dt.ROOT / "examples" / "k8s"
SCHEMAS = dt.DEPLOY / "schemas"
CHART = dt.ROOT / "helm" / "gatehouse"

# Custom resource groups without a @kubernetes-models package: their allow-list schema.
SCHEMA_BY_GROUP = {
    "gateway.envoyproxy.io": "envoy-gateway",
    "gateway.kgateway.dev": "kgateway",
    "getambassador.io": "emissary",
}


@dataclass
class Doc:
    path: Path
    index: int  # 1-based, as validate-crds.mjs counts documents
    data: dict
    # The allow-list schema of a document that is not a custom resource (EnvoyGateway).
    schema: str | None = None

    @property
    def where(self) -> str:
        path = self.path.relative_to(dt.ROOT) if self.path.is_relative_to(dt.ROOT) else self.path
        return f"{path}#{self.index}"

    @property
    def group(self) -> str:
        api = self.data.get("apiVersion", "")
        return api.rsplit("/", 1)[0] if "/" in api else ""

    @property
    def label(self) -> str:
        return f"{self.data.get('kind')}/{self.data.get('metadata', {}).get('name')}"


def docs_of(path: Path) -> list[Doc]:
    with open(path) as f:
        return [Doc(path, i, d) for i, d in enumerate(yaml.safe_load_all(f), 1) if d]


def files(name: str | None = None) -> list[Path]:
    found = sorted(EXAMPLES.rglob("*.yaml"))
    return [p for p in found if p.name == name] if name else found


def manifest_files() -> list[Path]:
    """Files of Kubernetes objects: everything but Envoy configs and Helm values."""
    return [p for p in files() if p.name != "envoy-equivalent.yaml" and not p.name.endswith("-values.yaml")]


def manifests() -> list[Doc]:
    docs = [d for p in manifest_files() for d in docs_of(p)]
    for d in docs:
        if not d.data.get("apiVersion") or not d.data.get("kind"):
            raise dt.CheckFailed(f"{d.where}: not a Kubernetes object (no apiVersion or kind)")
    return docs


def configmap_entries(key_matches) -> list[tuple[Doc, str, str]]:
    """(ConfigMap, key, content) for every ConfigMap data entry whose key matches."""
    return [(d, k, v) for d in manifests() if d.data["kind"] == "ConfigMap"
            for k, v in (d.data.get("data") or {}).items() if key_matches(k)]


def schema_errors(schema: dict, instance) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{e.json_path}: {e.message}" for e in
            sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))]


def load_schema(name: str) -> dict:
    with open(SCHEMAS / f"{name}.schema.json") as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def binary(service: str) -> Path | None:
    """A built gatehouse-<service> for check-config, release first; None if neither exists
    (the check does not build: run `cargo build --release` first)."""
    for profile in ("release", "debug"):
        path = dt.TARGET_DIR / profile / f"gatehouse-{service}"
        if path.exists():
            return path
    return None


# ---------------------------------------------------------------------------------------
# Validators: each takes what it validates and raises CheckFailed with the details. The
# negative test feeds them broken copies.
# ---------------------------------------------------------------------------------------

def validate_builtin(paths: list[Path], docs: list[Doc]) -> None:
    """kubernetes-validate over whole files. It only warns about a kind it has no schema for,
    which for these docs means a wrong apiVersion or kind."""
    warnings = dt.kubernetes_validate(paths)
    unknown = [f"{d.where}: Kubernetes has no {d.data['apiVersion']} {d.data['kind']}" for d in docs
               if f"schema for kind {d.data['kind']} with api version {d.data['apiVersion']} " in warnings]
    if unknown:
        raise dt.CheckFailed("\n".join(unknown))


def validate_crd_models(paths: list[Path], docs: list[Doc]) -> None:
    """validate-crds.mjs over whole files; every doc given must come back `ok`."""
    proc = dt.run(["node", str(dt.DEPLOY / "validate-crds.mjs"), *map(str, paths)], expect_ok=None)
    status = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^(ok|FAIL|no model)\s+(\S+)#(\d+)\b", line)
        if m:
            status[((dt.ROOT / m.group(2)).resolve(), int(m.group(3)))] = m.group(1)
    bad = [f"{d.where} ({status.get((d.path.resolve(), d.index), 'not reported')})"
           for d in docs if status.get((d.path.resolve(), d.index)) != "ok"]
    if bad or "FAIL" in status.values():
        raise dt.CheckFailed(f"validate-crds.mjs did not accept {', '.join(bad) or 'every document'}\n"
                             + proc.stdout + proc.stderr)


def validate_platform_schema(docs: list[Doc]) -> None:
    problems = []
    for d in docs:
        schema = d.schema or SCHEMA_BY_GROUP[d.group]
        problems += [f"{d.where} {d.label} [{schema}.schema.json] {e}" for e in schema_errors(load_schema(schema), d.data)]
    if problems:
        raise dt.CheckFailed("\n".join(problems))


def validate_istio_mesh(docs: list[Doc]) -> None:
    schema = load_schema("istio-meshconfig")
    problems = [f"{d.where} [istio-meshconfig.schema.json] {e}" for d in docs for e in schema_errors(schema, d.data)]
    if problems:
        raise dt.CheckFailed("\n".join(problems))


def validate_chart_values(docs: list[Doc]) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    problems = [f"{d.where} [helm/gatehouse/values.schema.json] {e}" for d in docs for e in schema_errors(schema, d.data)]
    if problems:
        raise dt.CheckFailed("\n".join(problems))


def validate_envoy(paths: list[Path]) -> None:
    for path in paths:
        dt.envoy_validate(path)


def check_config(service: str, origin: str, text: str) -> None:
    """`gatehouse-<service> check-config` on one config file (a rule file is checked in a
    directory of its own: each is a domain)."""
    exe = binary(service)
    if not exe:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text)
        try:
            dt.run([str(exe), "check-config", tmp if service == "ratelimit" else str(path)])
        except dt.CheckFailed as e:
            raise dt.CheckFailed(f"{origin}: gatehouse-{service} check-config rejects it\n{e}")


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------

def builtin_kinds():
    docs = [d for d in manifests() if not dt.is_custom_resource(d.data)]
    paths = sorted({d.path for d in docs})
    validate_builtin(paths, docs)
    kinds = sorted({d.data["kind"] for d in docs})
    return (f"{len(docs)} objects in {len(paths)} files, strict, Kubernetes "
            f"{' and '.join(dt.KUBERNETES_VERSIONS)}: {', '.join(kinds)}")


def crds_with_models():
    docs = [d for d in manifests() if dt.is_custom_resource(d.data) and d.group not in SCHEMA_BY_GROUP]
    paths = sorted({d.path for d in docs})
    validate_crd_models(paths, docs)
    groups = sorted({d.data["apiVersion"] for d in docs})
    return f"{len(docs)} objects in {len(paths)} files (validate-crds.mjs): {', '.join(groups)}"


def crds_with_allow_lists():
    docs = [d for d in manifests() if d.group in SCHEMA_BY_GROUP]
    # Envoy Gateway's configuration file, inside its ConfigMap.
    docs += [Doc(cm.path, cm.index, yaml.safe_load(text), schema="envoy-gateway")
             for cm, _, text in configmap_entries(lambda k: k == "envoy-gateway.yaml")]
    validate_platform_schema(docs)
    by_schema = {}
    for d in docs:
        by_schema.setdefault(d.schema or SCHEMA_BY_GROUP[d.group], set()).add(d.data["kind"])
    return f"{len(docs)} objects: " + "; ".join(f"{s}: {', '.join(sorted(k))}" for s, k in sorted(by_schema.items()))


def istio_mesh_config():
    docs = [d for p in files("istiod-values.yaml") for d in docs_of(p)]
    validate_istio_mesh(docs)
    return f"{', '.join(d.where for d in docs)}: meshConfig.extensionProviders"


def envoy_configs():
    paths = files("envoy-equivalent.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        embedded = []
        for cm, key, text in configmap_entries(lambda k: k == "envoy.yaml"):
            embedded.append(Path(tmp) / f"{cm.path.parent.name}-{cm.data['metadata']['name']}.yaml")
            embedded[-1].write_text(text)
        validate_envoy(paths + embedded)
    names = [str(p.relative_to(EXAMPLES)) for p in paths] + [f"{p.stem} (ConfigMap)" for p in embedded]
    return f"envoy --mode validate: {', '.join(names)}"


def gatehouse_configs():
    """The values files against the chart's values schema, and every Gatehouse config in them
    or in a ConfigMap with the service's own check-config."""
    notes = []
    values = [d for p in files("gatehouse-values.yaml") for d in docs_of(p)]
    if (CHART / "values.schema.json").exists():
        validate_chart_values(values)
        notes.append(f"{len(values)} values files match helm/gatehouse/values.schema.json")
    else:
        notes.append("helm/gatehouse/values.schema.json absent: values files not checked against it")

    configs = gatehouse_configs_in(values)
    missing = [s for s in configs if configs[s] and not binary(s)]
    if missing:
        notes.append(f"no built gatehouse-{'/'.join(missing)}: check-config skipped for them")
    for service, entries in configs.items():
        for origin, text in entries:
            check_config(service, origin, text)
    counted = ", ".join(f"{len(e)} {s}" for s, e in configs.items() if e)
    notes.append(f"check-config: {counted}")
    return "; ".join(notes)


def gatehouse_configs_in(values: list[Doc]) -> dict[str, list[tuple[str, str]]]:
    """service -> [(where, config text)]: the inline configs of Helm values, and rule files
    in ConfigMaps (a YAML entry with a domain and descriptors)."""
    configs = {"ratelimit": [], "extauth": [], "transform": []}
    for d in values:
        for name, text in ((d.data.get("ratelimit") or {}).get("config") or {}).get("inline", {}).items():
            configs["ratelimit"].append((f"{d.where} ratelimit.config.inline.{name}", text))
        for service in ("extauth", "transform"):
            text = ((d.data.get(service) or {}).get("config") or {}).get("inline")
            if text:
                configs[service].append((f"{d.where} {service}.config.inline", text))
    for cm, key, text in configmap_entries(lambda k: k.endswith(".yaml")):
        parsed = yaml.safe_load(text)
        if isinstance(parsed, dict) and {"domain", "descriptors"} <= parsed.keys():
            configs["ratelimit"].append((f"{cm.where} {cm.label} {key}", text))
    return configs


def chart_defaults_serve_the_guides():
    """Several guides use the chart's default configs as they are: the `keys` policy, the
    `headers` transformation, and domain `gateway` with descriptor key api_key_id."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rules = [yaml.safe_load(t) for t in values["ratelimit"]["config"]["inline"].values()]
    policies = yaml.safe_load(values["extauth"]["config"]["inline"])["policies"]
    transformations = yaml.safe_load(values["transform"]["config"]["inline"])["transformations"]
    wanted = {
        "ratelimit domain gateway, key api_key_id": any(
            r["domain"] == "gateway" and any(d["key"] == "api_key_id" for d in r["descriptors"]) for r in rules),
        "extauth policy keys": any(p["name"] == "keys" for p in policies),
        "transformation headers": any(t["name"] == "headers" for t in transformations),
    }
    missing = [w for w, ok in wanted.items() if not ok]
    if missing:
        raise dt.CheckFailed(f"helm/gatehouse/values.yaml no longer has: {', '.join(missing)}")
    return ", ".join(wanted)


def broken_manifests_are_rejected():
    """Each validator, given a good manifest with one field name misspelt, must fail and name
    the misspelt field."""

    def renamed(path: Path, kind: str | None, at: list, typo: str) -> tuple[Doc, str]:
        """The first document of `path` (of `kind`), with the key at path `at` renamed to `typo`."""
        doc = next(d for d in docs_of(path) if kind in (None, d.data.get("kind")))
        data = copy.deepcopy(doc.data)
        parent = data
        for step in at[:-1]:
            parent = parent[step]
        parent[typo] = parent.pop(at[-1])
        return Doc(path, doc.index, data), typo

    def written(doc: Doc, tmp: Path) -> Path:
        out = tmp / f"{len(list(tmp.iterdir()))}-{doc.path.name}"
        out.write_text(yaml.safe_dump(doc.data, sort_keys=False))
        return out

    def crd_model(doc: Doc, tmp: Path) -> None:
        path = written(doc, tmp)
        validate_crd_models([path], [Doc(path, 1, doc.data)])

    def rule_file(typo: str):
        def validate(doc: Doc, tmp: Path) -> None:
            for origin, text in gatehouse_configs_in([doc])["ratelimit"]:
                if origin.startswith(doc.where):
                    check_config("ratelimit", origin, text.replace("requests_per_unit", typo, 1))
        return validate

    k8s = EXAMPLES
    cases = [  # (validator, broken document, the misspelt name, how to validate)
        ("kubernetes-validate", *renamed(k8s / "demo-app.yaml", "Deployment", ["spec", "replicas"], "replicsa"),
         lambda d, tmp: validate_builtin([written(d, tmp)], [])),
        ("validate-crds.mjs", *renamed(k8s / "istio/authorization-policy.yaml", "AuthorizationPolicy",
                                      ["spec", "rules", 0, "to", 0, "operation", "hosts"], "hostz"), crd_model),
        ("envoy-gateway.schema.json", *renamed(k8s / "envoy-gateway/security-policy.yaml", None,
                                              ["spec", "extAuth", "failOpen"], "failopen"),
         lambda d, tmp: validate_platform_schema([d])),
        ("kgateway.schema.json", *renamed(k8s / "kgateway/extensions.yaml", "TrafficPolicy",
                                         ["spec", "extAuth", "contextExtensions"], "contextExtension"),
         lambda d, tmp: validate_platform_schema([d])),
        ("emissary.schema.json", *renamed(k8s / "emissary/emissary.yaml", "AuthService",
                                         ["spec", "protocol_version"], "protocolVersion"),
         lambda d, tmp: validate_platform_schema([d])),
        ("istio-meshconfig.schema.json", *renamed(k8s / "istio/istiod-values.yaml", None,
                                                 ["meshConfig", "extensionProviders", 0, "envoyExtAuthzGrpc",
                                                  "statusOnError"], "statusOnErrors"),
         lambda d, tmp: validate_istio_mesh([d])),
        ("envoy --mode validate", *renamed(k8s / "envoy-gateway/envoy-equivalent.yaml", None,
                                          ["static_resources", "listeners", 0, "default_filter_chain", "filters", 0,
                                           "typed_config", "http_filters", 1, "typed_config", "message_timeout"],
                                          "message_timout"),
         lambda d, tmp: validate_envoy([written(d, tmp)])),
    ]
    if (CHART / "values.schema.json").exists():
        cases.append(("helm/gatehouse/values.schema.json",
                      *renamed(k8s / "kgateway/gatehouse-values.yaml", None, ["networkPolicy", "gateway"], "gateways"),
                      lambda d, tmp: validate_chart_values([d])))
    if binary("ratelimit"):
        cases.append(("gatehouse-ratelimit check-config", docs_of(k8s / "kgateway/gatehouse-values.yaml")[0],
                      "requests_per_unt", rule_file("requests_per_unt")))

    with tempfile.TemporaryDirectory() as tmp:
        for name, doc, typo, validate in cases:
            try:
                validate(doc, Path(tmp))
            except dt.CheckFailed as e:
                if typo not in str(e):
                    raise dt.CheckFailed(f"{name} rejected {doc.where} with `{typo}`, but without naming it:\n{e}")
                continue
            raise dt.CheckFailed(f"{name} accepted {doc.where} with `{typo}` misspelt")
    return "; ".join(f"{name} rejects `{typo}`" for name, _, typo, _ in cases)


if __name__ == "__main__":
    dt.main([builtin_kinds, crds_with_models, crds_with_allow_lists, istio_mesh_config, envoy_configs,
             gatehouse_configs, chart_defaults_serve_the_guides, broken_manifests_are_rejected])
