"""The Helm chart helm/gatehouse: lint, render, validate, scan and package it offline, with its
defaults and each helm/gatehouse/ci/*-values.yaml, and read the rendered objects for what the
chart promises (restricted pod security, one Deployment per service, namespaced only, ...).

No cluster is involved: Helm is the helm-python library (Helm v4's Go SDK), no helm binary.

    .venv/bin/python tests/deploy/check_helm.py
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tarfile
import tempfile
from pathlib import Path

import helm_python as helm
import yaml

from deploytools import (ROOT, TARGET_DIR, CheckFailed, is_custom_resource, kubernetes_validate, main, run,
                         tool, trivy_config, validate_crds, write_docs)

CHART = ROOT / "helm" / "gatehouse"
RELEASE, NAMESPACE = "gatehouse", "team-a"
# The renderings: the chart's defaults, then each CI values file.
CASES: dict[str, Path | None] = {
    "defaults": None, **{p.name: p for p in sorted((CHART / "ci").glob("*-values.yaml"))}}
SERVICES = ("ratelimit", "extauth", "transform")
# What the chart may create: namespaced kinds only, nothing cluster-wide.
NAMESPACED_KINDS = {
    "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget",
    "PodMonitor", "PrometheusRule", "Secret", "Service", "ServiceAccount", "ServiceMonitor",
}
# Renderings that must leave UIDs and GIDs to the platform (OpenShift assigns them).
UID_FREE_CASES = {"defaults", "minimal-values.yaml", "openshift-values.yaml",
                  "gateway-off-values.yaml", "redis-cluster-values.yaml"}
SERVICE_BINARIES = {s: TARGET_DIR / "debug" / f"gatehouse-{s}" for s in SERVICES}


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def case_values(case: str) -> dict:
    path = CASES[case]
    return helm.values_from_yaml(path.read_text()) if path else {}


@functools.cache
def rendered(case: str) -> tuple[dict, ...]:
    """The objects `helm install gatehouse ./helm/gatehouse -n team-a [-f case]` would create."""
    try:
        manifests = chart().render(case_values(case), name=RELEASE, namespace=NAMESPACE, is_install=True)
    except helm.HelmError as e:
        raise CheckFailed(f"{case}: the chart does not render:\n{e}") from e
    docs = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    if not docs:
        raise CheckFailed(f"{case}: rendered nothing")
    return tuple(docs)


def merged_values(case: str) -> dict:
    return chart().merge_values(case_values(case))


def of_kind(docs, kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def name(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


# --- the checks ------------------------------------------------------------------------------

@contextlib.contextmanager
def go_log():
    """What the Helm library logs to file descriptor 2 meanwhile (a list, filled on exit)."""
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+") as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            lines += log.read().splitlines()


def lint_strict():
    """`helm lint --strict` (schema included) for every case, for the oldest and newest
    Kubernetes. Lint mode turns the chart's own `fail` checks into a log line instead of an
    error, so that line counts as an error here."""
    infos = set()
    for case in CASES:
        for kube in ("v1.29.0", "v1.37.0"):
            with go_log() as log:
                report = helm.lint(CHART, case_values(case), strict=True, namespace=NAMESPACE,
                                   kube_version=kube)
            problems = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
            problems += report["errors"] + [line for line in log if "fail" in line]
            if problems:
                raise CheckFailed(f"helm lint --strict ({case}, Kubernetes {kube}):\n  " + "\n  ".join(problems))
            infos |= {f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] == 1}
    note = f"; info only: {'; '.join(sorted(infos))}" if infos else ""
    return f"{len(CASES)} cases x Kubernetes 1.29 and 1.37, no warning or error{note}"


def renders_validate():
    """Every rendering: built-in kinds pass kubernetes-validate --strict for 1.29 and 1.37, and
    custom resources (ServiceMonitor, PodMonitor) their CRD models (validate-crds.mjs)."""
    with tempfile.TemporaryDirectory() as tmp:
        builtin, custom = [], []
        for i, case in enumerate(CASES):
            docs = rendered(case)
            builtin.append(write_docs(Path(tmp) / f"{i}-builtin.yaml", [d for d in docs if not is_custom_resource(d)]))
            crs = [d for d in docs if is_custom_resource(d)]
            if crs:
                custom.append(write_docs(Path(tmp) / f"{i}-custom.yaml", crs))
        output = kubernetes_validate(builtin)
        if "Couldn't find schema" in output:
            raise CheckFailed(f"kubernetes-validate skipped kinds it has no schema for:\n{output}")
        report = validate_crds(custom) if custom else ""
    objects = sum(len(rendered(c)) for c in CASES)
    crs = sum(is_custom_resource(d) for c in CASES for d in rendered(c))
    summary = report.strip().splitlines()[-1] if report else "none"
    return (f"{len(CASES)} renderings, {objects} objects: built-in kinds strict-valid for 1.29 and "
            f"1.37; {crs} custom resources, validate-crds.mjs: {summary}")


def configs_load():
    """The configs the chart renders load: each service's ConfigMap passes its binary's
    check-config (when target/debug has the binaries), and the gateway's Envoy bootstrap passes
    `envoy --mode validate` without deprecated fields."""
    checked, envoys = 0, 0
    missing = [str(b.relative_to(ROOT)) for b in SERVICE_BINARIES.values() if not b.exists()]
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(CASES):
            values = merged_values(case)
            for cm in of_kind(rendered(case), "ConfigMap"):
                component = cm["metadata"]["labels"]["app.kubernetes.io/component"]
                if component not in (*SERVICES, "gateway"):
                    continue  # the dashboards (dashboards_and_rules)
                data = cm.get("data", {})
                root = Path(tmp) / str(i) / component
                root.mkdir(parents=True)
                for key, content in data.items():
                    (root / key).write_text(content)
                if component == "gateway":
                    out = run([tool("envoy"), "--mode", "validate", "-c", str(root / "envoy.yaml")])
                    if "Deprecated field" in out.stdout + out.stderr:
                        raise CheckFailed(f"{case}: the gateway's Envoy config uses deprecated fields:\n{out.stderr}")
                    envoys += 1
                elif component in SERVICES and SERVICE_BINARIES[component].exists():
                    target = root if component == "ratelimit" else root / values[component]["config"]["key"]
                    run([str(SERVICE_BINARIES[component]), "check-config", str(target)])
                    checked += 1
    note = f"; check-config skipped, missing: {', '.join(missing)}" if missing else ""
    return f"{checked} service configs pass check-config, {envoys} Envoy bootstraps pass envoy --mode validate{note}"


def trivy_clean():
    """`trivy config` finds nothing HIGH or CRITICAL in the chart (trivy renders it with
    values.yaml) nor in any rendering (one file per object, so each is scanned as itself)."""
    trivy_config(CHART)
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(CASES):
            out = Path(tmp) / f"{i}-{case.removesuffix('.yaml')}"
            out.mkdir()
            for j, doc in enumerate(rendered(case)):
                write_docs(out / f"{j:02d}-{doc['kind']}-{doc['metadata']['name']}.yaml", [doc])
        trivy_config(Path(tmp))
    return f"the chart and {len(CASES)} renderings: no HIGH or CRITICAL finding"


# (values, what the error must say): typos and wrong types stop at the schema; combinations
# the schema cannot express stop at the chart's own checks (templates/validate.yaml).
BAD_VALUES = [
    ({"replicaCount": 3}, "additional properties 'replicaCount' not allowed"),
    ({"ratelimit": {"replicaCount": 3}}, "additional properties 'replicaCount' not allowed"),
    ({"extauth": {"replicas": "two"}}, "got string, want integer"),
    ({"transform": {"ports": {"grpc": 70000}}}, "maximum"),
    ({"redis": {"mode": "cluster"}}, "value must be one of"),
    ({"gateway": {"service": {"type": "Loadbalancer"}}}, "value must be one of"),
    ({"probes": {"type": "tcp"}}, "value must be one of"),
    ({"ratelimit": {"shutdownDrain": "5 seconds"}}, "does not match pattern"),
    ({"ratelimit": {"config": {"inline": {"rules.json": "{}"}}}}, "rules.json"),
    ({"podSecurityContext": {"runAsNonroot": True}}, "additional properties 'runAsNonroot' not allowed"),
    ({"redis": {"mode": "external"}}, "redis.url is empty"),
    ({"extauth": {"redis": True}}, "extauth.redis is true but redis.mode is memory"),
    ({"gateway": {"enabled": False}}, "networkPolicy: gateway.enabled is false"),
    ({"extauth": {"pdb": {"maxUnavailable": None}}}, "extauth.pdb: set minAvailable or maxUnavailable"),
    ({"transform": {"pdb": {"minAvailable": "half"}}}, "/transform/pdb/minAvailable"),
    ({"gateway": {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}}},
     "a CPU target needs gateway.resources.requests.cpu"),
    ({"gateway": {"preStopSleepSeconds": 30}}, "gateway.preStopSleepSeconds must be below"),
    ({"gateway": {"image": {"tag": ""}}}, "image docker.io/envoyproxy/envoy: set a tag or a digest"),
]


def bad_values_rejected():
    """Each bad value fails the render (as `helm template` and `helm install` would) with a
    message naming the key and what is wrong."""
    for values, expected in BAD_VALUES:
        try:
            chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except (helm.HelmValuesError, helm.HelmRenderError) as e:
            if expected not in str(e):
                raise CheckFailed(f"{values} was refused, but the message does not say {expected!r}:\n{e}")
            continue
        raise CheckFailed(f"{values} was accepted")
    return f"{len(BAD_VALUES)} bad values refused with a clear message"


def schema_closed():
    """values.schema.json is valid draft-07, closes every object it describes (a typo'd key
    anywhere is refused), and a second validator (check-jsonschema, Python) agrees with Helm's
    on the merged values of every case, so its patterns mean the same in both."""
    schema_path = CHART / "values.schema.json"
    run([tool("check-jsonschema"), "--check-metaschema", str(schema_path)])
    schema = json.loads(schema_path.read_text())
    open_objects = []

    def walk(node, path):
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(path or "/")
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}/{i}")
    walk(schema, "")
    if open_objects:
        raise CheckFailed("schema objects without additionalProperties: false:\n  " + "\n  ".join(open_objects))
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, case in enumerate(CASES):
            files.append(Path(tmp) / f"{i}-{case}.json")
            files[-1].write_text(json.dumps(merged_values(case)))
        run([tool("check-jsonschema"), "--schemafile", str(schema_path), *map(str, files)])
    return f"draft-07, every described object closed; {len(CASES)} merged values valid for check-jsonschema too"


def pod_templates(docs):
    for doc in of_kind(docs, "Deployment"):
        yield doc, doc["spec"]["template"]["spec"]


def restricted_pod_security():
    """Every pod template meets OpenShift's restricted-v2 and Pod Security "restricted":
    runAsNonRoot, RuntimeDefault seccomp, no privilege escalation, ALL capabilities dropped,
    read-only root filesystem, no host namespaces, ports or paths, no service account token;
    and no UID, GID or fsGroup at all where the platform assigns them."""
    pods = 0
    for case in CASES:
        for deployment, spec in pod_templates(rendered(case)):
            where = f"{case}: {name(deployment)}"
            pod_sc = spec.get("securityContext", {})
            problems = []
            if pod_sc.get("runAsNonRoot") is not True:
                problems.append("pod runAsNonRoot is not true")
            if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problems.append("pod seccompProfile is not RuntimeDefault")
            for key in ("hostNetwork", "hostPID", "hostIPC"):
                if spec.get(key):
                    problems.append(f"{key} is set")
            if spec.get("automountServiceAccountToken") is not False:
                problems.append("automountServiceAccountToken is not false")
            problems += [f"volume {v['name']} is a hostPath" for v in spec.get("volumes", []) if "hostPath" in v]
            uids = {k: pod_sc[k] for k in ("runAsUser", "runAsGroup", "fsGroup") if k in pod_sc}
            for container in spec.get("initContainers", []) + spec["containers"]:
                sc = container.get("securityContext", {})
                c = f"container {container['name']}"
                if sc.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{c}: allowPrivilegeEscalation is not false")
                if sc.get("privileged"):
                    problems.append(f"{c}: privileged")
                if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                    problems.append(f"{c}: capabilities.drop is not [ALL]")
                if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
                    problems.append(f"{c}: adds capabilities {sc['capabilities']['add']}")
                if sc.get("readOnlyRootFilesystem") is not True:
                    problems.append(f"{c}: readOnlyRootFilesystem is not true")
                if sc.get("runAsNonRoot") is False:
                    problems.append(f"{c}: runAsNonRoot is false")
                problems += [f"{c}: hostPort {p['hostPort']}" for p in container.get("ports", []) if "hostPort" in p]
                uids |= {f"{container['name']}.{k}": sc[k] for k in ("runAsUser", "runAsGroup") if k in sc}
            if case in UID_FREE_CASES and uids:
                problems.append(f"sets {uids}: OpenShift's restricted-v2 assigns UIDs itself")
            problems += [f"{k} is 0 (root)" for k, v in uids.items() if v == 0]
            if problems:
                raise CheckFailed(f"{where}:\n  " + "\n  ".join(problems))
            pods += 1
    return (f"{pods} pod templates in {len(CASES)} renderings; no UID/GID/fsGroup in "
            f"{', '.join(sorted(UID_FREE_CASES))}")


def one_deployment_per_service():
    """Each enabled service (and the gateway, and the in-chart Redis) is its own Deployment
    with its own selector, its own Services, PDB and HPA; disabled ones render nothing."""
    summary = []
    for case in CASES:
        docs, values = rendered(case), merged_values(case)
        expected = {c for c in (*SERVICES, "gateway") if values[c]["enabled"]}
        if values["redis"]["mode"] == "inChart":
            expected.add("redis")
        deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in of_kind(docs, "Deployment")}
        if set(deployments) != expected or len(of_kind(docs, "Deployment")) != len(expected):
            raise CheckFailed(f"{case}: Deployments for {sorted(deployments)}, expected {sorted(expected)}")
        for component, deployment in deployments.items():
            selector = deployment["spec"]["selector"]["matchLabels"]
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            if selector.get("app.kubernetes.io/component") != component or \
                    any(labels.get(k) != v for k, v in selector.items()):
                raise CheckFailed(f"{case}: {name(deployment)} selects {selector}, its pods are {labels}")
            for kind in ("PodDisruptionBudget", "NetworkPolicy"):
                for doc in of_kind(docs, kind):
                    sel = doc["spec"].get("selector", doc["spec"].get("podSelector"))["matchLabels"]
                    if sel == selector and doc["metadata"]["name"] != deployment["metadata"]["name"]:
                        raise CheckFailed(f"{case}: {name(doc)} selects {component}'s pods")
        for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
            target = hpa["spec"]["scaleTargetRef"]["name"]
            if target != hpa["metadata"]["name"] or "replicas" in \
                    next(d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == target)["spec"]:
                raise CheckFailed(f"{case}: {name(hpa)} scales {target}, which must exist and leave replicas to it")
        for component in SERVICES:
            services = [s for s in of_kind(docs, "Service")
                        if s["metadata"]["labels"].get("app.kubernetes.io/component") == component]
            if (component in expected) != bool(services):
                raise CheckFailed(f"{case}: {component} has Services {[name(s) for s in services]}")
        summary.append(f"{case.removesuffix('-values.yaml')}: {'+'.join(sorted(expected))}")
    return "; ".join(summary)


def namespaced_and_wired():
    """Only namespaced kinds, all in the release namespace; gRPC Service ports say appProtocol
    grpc (http for the others); ConfigMaps and Secrets are mounted as directories (no subPath,
    so edits reach the pods) and the services' pods carry no config checksum (they hot-reload)."""
    objects = 0
    for case in CASES:
        docs = rendered(case)
        for doc in docs:
            objects += 1
            if doc["kind"] not in NAMESPACED_KINDS:
                raise CheckFailed(f"{case}: {name(doc)} is not an allowed namespaced kind")
            if doc["metadata"].get("namespace") != NAMESPACE:
                raise CheckFailed(f"{case}: {name(doc)} is in {doc['metadata'].get('namespace')!r}, not {NAMESPACE}")
        for service in of_kind(docs, "Service"):
            for port in service["spec"]["ports"]:
                want = {"grpc": "grpc", "http": "http", "debug": "http"}.get(port["name"])
                if want and port.get("appProtocol") != want:
                    raise CheckFailed(f"{case}: {name(service)} port {port['name']} has appProtocol "
                                      f"{port.get('appProtocol')!r}, expected {want}")
        for deployment, spec in pod_templates(docs):
            config_volumes = {v["name"] for v in spec.get("volumes", []) if "configMap" in v or "secret" in v}
            for container in spec["containers"]:
                for mount in container.get("volumeMounts", []):
                    if "subPath" in mount or "subPathExpr" in mount:
                        raise CheckFailed(f"{case}: {name(deployment)} mounts {mount['name']} with a subPath")
            component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
            annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
            checksums = {k for k in annotations if k.startswith("checksum/")}
            if component in SERVICES and (not config_volumes or checksums - {"checksum/secret"}):
                raise CheckFailed(f"{case}: {name(deployment)}: config volumes {config_volumes}, "
                                  f"checksums {checksums}: the services reload ConfigMaps themselves")
    return f"{objects} objects: namespaced kinds in {NAMESPACE} only, appProtocol set, no subPath"


DASHBOARDS = ROOT / "dashboards"
MONITORING_VALUES = {"metrics": {
    "dashboards": {"enabled": True, "labels": {"grafana_dashboard": "1", "team": "platform"},
                   "annotations": {"grafana_folder": "Gatehouse"}, "namespace": "monitoring"},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                       "namespace": "monitoring"}}}


def dashboards_and_rules():
    """metrics.dashboards and metrics.prometheusRule: off by default; on, one ConfigMap per
    dashboards/*.json, labelled grafana_dashboard: "1" (kube-prometheus-stack's sidecar) and
    holding that file byte for byte, and a PrometheusRule whose groups equal
    dashboards/alerts.yaml's; labels, annotations and namespace as configured, and the
    PrometheusRule valid for its CRD model (validate-crds.mjs). The chart reads them through
    the files/dashboards symlink, which Helm follows."""
    link = CHART / "files" / "dashboards"
    if not link.is_symlink() or link.resolve() != DASHBOARDS.resolve():
        raise CheckFailed(f"{link} must be a symlink to {DASHBOARDS}")
    expected_files = {p.name: p.read_text() for p in sorted(DASHBOARDS.glob("*.json"))}
    expected_groups = yaml.safe_load((DASHBOARDS / "alerts.yaml").read_text())["groups"]
    defaults = rendered("defaults")
    if of_kind(defaults, "PrometheusRule") or any(
            "grafana_dashboard" in d["metadata"].get("labels", {}) for d in defaults):
        raise CheckFailed("defaults: dashboards or a PrometheusRule rendered, but both are off by default")
    try:
        docs = [d for template, text in chart().render(MONITORING_VALUES, name=RELEASE, namespace=NAMESPACE,
                                                       is_install=True).items()
                if not template.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
    except helm.HelmError as e:
        raise CheckFailed(f"the chart does not render with dashboards and rules on:\n{e}") from e
    renderings = [("monitoring values", docs, MONITORING_VALUES["metrics"], "monitoring")]
    if "all-values.yaml" in CASES:
        renderings.append(("all-values.yaml", list(rendered("all-values.yaml")),
                           merged_values("all-values.yaml")["metrics"], NAMESPACE))
    for where, docs, metrics, namespace in renderings:
        boards = [d for d in of_kind(docs, "ConfigMap")
                  if d["metadata"]["labels"].get("app.kubernetes.io/component") == "dashboards"]
        got_files = {}
        for cm in boards:
            meta = cm["metadata"]
            want = {**metrics["dashboards"]["labels"], "app.kubernetes.io/part-of": "gatehouse"}
            if any(meta["labels"].get(k) != v for k, v in want.items()) or \
                    meta.get("namespace") != namespace or \
                    meta.get("annotations", {}) != metrics["dashboards"]["annotations"]:
                raise CheckFailed(f"{where}: {name(cm)}: labels {meta['labels']}, annotations "
                                  f"{meta.get('annotations')}, namespace {meta.get('namespace')}")
            if len(cm["data"]) != 1:
                raise CheckFailed(f"{where}: {name(cm)} holds {sorted(cm['data'])}, expected one dashboard")
            got_files.update(cm["data"])
        if set(got_files) != set(expected_files):
            raise CheckFailed(f"{where}: dashboard ConfigMaps hold {sorted(got_files)}, dashboards/ has {sorted(expected_files)}")
        for file, text in got_files.items():
            if text.rstrip("\n") != expected_files[file].rstrip("\n"):
                raise CheckFailed(f"{where}: the ConfigMap's {file} differs from dashboards/{file}")
            json.loads(text)
        rules = of_kind(docs, "PrometheusRule")
        if len(rules) != 1:
            raise CheckFailed(f"{where}: {len(rules)} PrometheusRules, expected 1")
        rule = rules[0]
        want = metrics["prometheusRule"]["labels"]
        if any(rule["metadata"]["labels"].get(k) != v for k, v in want.items()) or \
                rule["metadata"]["namespace"] != namespace:
            raise CheckFailed(f"{where}: {name(rule)}: labels {rule['metadata']['labels']}, "
                              f"namespace {rule['metadata']['namespace']}")
        if rule["spec"]["groups"] != expected_groups:
            raise CheckFailed(f"{where}: the PrometheusRule's groups differ from dashboards/alerts.yaml's")
    with tempfile.TemporaryDirectory() as tmp:
        report = validate_crds([write_docs(Path(tmp) / "rule.yaml", of_kind(renderings[0][1], "PrometheusRule"))])
        kubernetes_validate([write_docs(Path(tmp) / "boards.yaml", of_kind(renderings[0][1], "ConfigMap"))])
    rules_count = sum(len(g["rules"]) for g in expected_groups)
    return (f"{len(expected_files)} dashboard ConfigMaps equal to dashboards/*.json; a PrometheusRule "
            f"with alerts.yaml's {len(expected_groups)} groups ({rules_count} rules), "
            f"{report.strip().splitlines()[-1]}; in {len(renderings)} renderings, none by default")


def package():
    """`helm package` makes an archive that loads back as the same chart and renders; the CI
    values files ship in it as examples."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(helm.package(CHART, destination=tmp))
        loaded = helm.Chart.load(archive)
        if (loaded.name, loaded.version) != ("gatehouse", chart().version):
            raise CheckFailed(f"{archive.name} holds {loaded.name} {loaded.version}")
        with tarfile.open(archive) as tar:
            members = tar.getnames()
        if not {"gatehouse/values.schema.json", "gatehouse/ci/eks-nlb-values.yaml",
                "gatehouse/files/dashboards/alerts.yaml",
                "gatehouse/files/dashboards/gatehouse-overview.json"} <= set(members):
            raise CheckFailed(f"{archive.name}: unexpected contents {members}")
        loaded.render({}, name=RELEASE, namespace=NAMESPACE)
        # The archive holds the dashboards themselves (not the symlink): it renders them alone.
        packed = loaded.render(MONITORING_VALUES, name=RELEASE, namespace=NAMESPACE)
        if "PrometheusRule" not in "".join(packed.values()) or "grafana_dashboard" not in "".join(packed.values()):
            raise CheckFailed(f"{archive.name}: renders no dashboards or PrometheusRule")
        return f"{archive.name}: {len(members)} files, {archive.stat().st_size} bytes, renders"


if __name__ == "__main__":
    main([lint_strict, schema_closed, renders_validate, configs_load, trivy_clean, bad_values_rejected,
          restricted_pod_security, one_deployment_per_service, namespaced_and_wired, dashboards_and_rules,
          package])
