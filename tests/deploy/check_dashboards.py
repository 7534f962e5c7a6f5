"""The Grafana dashboards and Prometheus alerting rules in dashboards/ (issue 13), offline.

    .venv/bin/python tests/deploy/check_dashboards.py                # the checks
    .venv/bin/python tests/deploy/check_dashboards.py --list-metrics # every metric they query

What is checked:

- **Grafana's model.** Each dashboards/*.json is decoded with grafana-foundation-sdk (Grafana
  Labs' generated Python types for the dashboard schema, Grafana 11.6; pinned in
  scripts/deploy-tools.txt), panels, queries and panel options through the SDK's registered
  panel and Prometheus query types, then encoded back. The SDK's decoder ignores what it does
  not know, so every key of the file must come back unchanged: a misspelt or misplaced field
  (`fieldconfig`, `gridPos.width`, a target's `exp`) fails. Every value is then checked against
  the SDK's type annotations (str, int, bool, list, enums and Literal values such as
  `repeatDirection`). What this cannot check: that a panel type, a plugin option or a unit is
  known to a running Grafana (the SDK types panel options only for its built-in panels and
  leaves free-form maps such as `custom` fields open), Grafana's own migrations by
  schemaVersion, and whether a query returns data. No Grafana JSON schema for dashboards is
  published as a package: npm @grafana/schema holds Grafana's generated TypeScript types and
  defaults, with nothing that validates a JSON file at run time.
- **Structure.** Unique dashboard uids (stable, not generated), a recent schemaVersion, a
  `datasource` variable of type prometheus, namespace/job variables from label_values of a
  real metric; unique panel ids; every panel and target on `${datasource}`; every target with
  an expr; each histogram_quantile over a `_bucket` series with `le` kept.
- **promtool** (Debian's prometheus package, /usr/bin/promtool): `promtool check rules
  dashboards/alerts.yaml` and `promtool test rules dashboards/alerts.test.yaml`, which makes
  every alert fire at least once (checked here too). Each rule has `for:`, a severity label, a
  summary, a description and a runbook_url whose anchor is a heading of docs/observability.md.
- **The metrics contract.** Every metric name the dashboards (panel queries and variable
  queries) and the rules query is in the Metrics tables of docs/observability.md (`<svc>` rows
  expanded for ratelimit, extauth and transform; a histogram row X covers X_bucket, X_sum and
  X_count), or is `up`. The names are read from PromQL text by a small tokenizer
  (`metric_names`), not a PromQL parser; `queried_metrics()` is the list for other code (the
  end-to-end test compares it with the services' /metrics).
- **The Helm chart's copies.** helm/gatehouse/files/dashboards must be the symlink to
  dashboards/ (Helm follows it; tests/deploy/check_helm.py renders it).
- **The checks catch errors**: a broken copy of a dashboard and of the rules, in a temporary
  directory, must fail the same checks.
"""

from __future__ import annotations

import copy
import enum
import json
import re
import shutil
import sys
import tempfile
import typing
from pathlib import Path

import yaml

from deploytools import ROOT, CheckFailed, main, run

DASHBOARDS = ROOT / "dashboards"
RULES = DASHBOARDS / "alerts.yaml"
RULE_TESTS = DASHBOARDS / "alerts.test.yaml"
OBSERVABILITY = ROOT / "docs" / "observability.md"
CHART_LINK = ROOT / "helm" / "gatehouse" / "files" / "dashboards"
EXPECTED_DASHBOARDS = {"gatehouse-overview.json", "gatehouse-ratelimit.json",
                       "gatehouse-extauth.json", "gatehouse-transform.json"}
SERVICES = ("ratelimit", "extauth", "transform")
# Metrics outside the Metrics tables a query may use.
EXTRA_METRICS = frozenset({"up"})
MIN_SCHEMA_VERSION = 39
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


# --- the metrics contract ------------------------------------------------------------------

def documented_metrics(doc: Path = OBSERVABILITY) -> frozenset[str]:
    """Every series name the Metrics tables of docs/observability.md define: `<svc>` expanded,
    a histogram X as X_bucket, X_sum and X_count."""
    text = doc.read_text()
    start = text.find("\n## Metrics")
    if start < 0:
        raise CheckFailed(f"{doc}: no '## Metrics' section")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end > 0 else len(text)]
    names = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or not cells[0].startswith("`"):
            continue
        histogram = cells[1].startswith("histogram")
        for name in re.findall(r"`([a-z_:<>]+)`", cells[0]):
            for svc in (SERVICES if "<svc>" in name else (None,)):
                concrete = name.replace("<svc>", svc) if svc else name
                names |= {concrete + s for s in ("_bucket", "_sum", "_count")} if histogram else {concrete}
    if not names:
        raise CheckFailed(f"{doc}: no metric rows in the Metrics tables")
    return frozenset(names)


PROMQL_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "atan2", "inf", "nan", "start", "end",
})


def _expand_name_regex(regex: str) -> set[str]:
    """The names a `__name__=~"..."` matcher means, for the simple forms dashboards use:
    literal text with (a|b|c) groups. Anything else cannot be checked and fails."""
    m = re.search(r"\(([^()]*)\)", regex)
    if m:
        return {n for alt in m.group(1).split("|")
                for n in _expand_name_regex(regex[:m.start()] + alt + regex[m.end():])}
    if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", regex):
        raise CheckFailed(f"__name__ regex {regex!r}: only literal names and (a|b) groups can be checked")
    return {regex}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana variable query such as
    label_values(metric{...}, label)) selects: identifiers outside strings, label matchers,
    ranges and by/without/on/ignoring clauses that are not functions or keywords, plus the
    names of `__name__` matchers."""
    names: set[str] = set()
    for op, value in re.findall(r'__name__\s*(=~|=)\s*"([^"]*)"', expr):
        names |= _expand_name_regex(value) if op == "=~" else {value}
    m = re.fullmatch(r"\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*", expr, re.S)
    if m:
        expr = m.group(1)
    elif re.fullmatch(r"\s*label_values\(\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*", expr):
        return names
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\[\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    for m in re.finditer(r"(?<![\w:$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()", s):
        if m.group(1).lower() not in PROMQL_KEYWORDS:
            names.add(m.group(1))
    return names


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, query) for every panel target and every query variable of a dashboard."""
    out = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            out.append((f"panel {panel.get('id')} {panel.get('title')!r} {target.get('refId')}",
                        target.get("expr", "")))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var.get("query")
            out.append((f"variable {var.get('name')}", q.get("query", "") if isinstance(q, dict) else q or ""))
    return out


def rule_queries(rules: dict) -> list[tuple[str, str]]:
    return [(f"{group['name']}: {rule.get('alert') or rule.get('record')}", rule["expr"])
            for group in rules.get("groups", []) for rule in group.get("rules", [])]


def queried_metrics(dashboards: Path = DASHBOARDS) -> dict[str, set[str]]:
    """Every metric name the dashboards and alerting rules in `dashboards` query -> where
    (file names). For other code: `sorted(queried_metrics())` is the list a service's /metrics
    should be compared with (histograms as their _bucket/_count series)."""
    found: dict[str, set[str]] = {}
    sources = [(p.name, dashboard_queries(json.loads(p.read_text()))) for p in sorted(dashboards.glob("*.json"))]
    sources.append(((dashboards / "alerts.yaml").name, rule_queries(yaml.safe_load((dashboards / "alerts.yaml").read_text()))))
    for file, queries in sources:
        for _, query in queries:
            for name in metric_names(query):
                found.setdefault(name, set()).add(file)
    return found


# --- Grafana's model (grafana-foundation-sdk) ------------------------------------------------

def _sdk():
    try:
        from grafana_foundation_sdk.cog import plugins
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.models.dashboard import Dashboard
    except ImportError as e:
        raise CheckFailed(f"grafana-foundation-sdk is missing from .venv ({e}): run scripts/install-test-deps.sh")
    plugins.register_default_plugins()
    return Dashboard, JSONEncoder


def _lost(original, back, path: str, problems: list[str]) -> None:
    """What of `original` did not survive the SDK's round trip."""
    if isinstance(original, dict):
        if not isinstance(back, dict):
            problems.append(f"{path}: an object the model reads as {type(back).__name__}")
            return
        for key, value in original.items():
            if key not in back:
                problems.append(f"{path}/{key}: not a field of Grafana's model here")
            else:
                _lost(value, back[key], f"{path}/{key}", problems)
    elif isinstance(original, list):
        if not isinstance(back, list) or len(back) != len(original):
            problems.append(f"{path}: a list the model does not keep")
            return
        for i, (a, b) in enumerate(zip(original, back)):
            _lost(a, b, f"{path}/{i}", problems)
    elif original != back:
        problems.append(f"{path}: {original!r} comes back as {back!r}")


def _type_ok(value, hint) -> bool | None:
    """Whether value fits a type annotation; None: not something checked here (recurse)."""
    if hint is typing.Any or hint is object:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        results = [_type_ok(value, a) for a in args]
        return True if any(r is not False for r in results) else False
    if origin is typing.Literal:
        return value in args
    if origin in (list, dict):
        return isinstance(value, origin)
    if isinstance(hint, type):
        if issubclass(hint, enum.Enum):
            return isinstance(value, hint) or value in {e.value for e in hint}
        if hint is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if hint is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if hint in (str, bool):
            return isinstance(value, hint)
        return isinstance(value, hint) or None
    return None


def _typecheck(obj, path: str, problems: list[str], seen: set[int]) -> None:
    """Every attribute of a decoded SDK object against the class's type annotations."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            _typecheck(item, f"{path}/{i}", problems, seen)
        return
    if isinstance(obj, dict):
        for key, item in obj.items():
            _typecheck(item, f"{path}/{key}", problems, seen)
        return
    if not type(obj).__module__.startswith("grafana_foundation_sdk"):
        return
    try:
        hints = typing.get_type_hints(type(obj))
    except Exception:  # a forward reference the SDK cannot resolve: nothing to check against
        hints = {}
    for attr, hint in hints.items():
        value = getattr(obj, attr, None)
        if value is None:
            continue
        if _type_ok(value, hint) is False:
            problems.append(f"{path}.{attr}: {value!r} is not {hint}")
        elif isinstance(value, list) and typing.get_args(hint):
            inner = [a for a in typing.get_args(hint) if typing.get_origin(a) is list]
            item_hint = typing.get_args(inner[0])[0] if inner else typing.get_args(hint)[0]
            for i, item in enumerate(value):
                if _type_ok(item, item_hint) is False:
                    problems.append(f"{path}.{attr}/{i}: {item!r} is not {item_hint}")
    for attr, value in vars(obj).items():
        if value is not None and not isinstance(value, (str, int, float, bool)):
            _typecheck(value, f"{path}.{attr}", problems, seen)


def grafana_model_problems(dashboard: dict) -> list[str]:
    """What Grafana's dashboard model (grafana-foundation-sdk) does not accept in a dashboard."""
    Dashboard, JSONEncoder = _sdk()
    try:
        model = Dashboard.from_json(copy.deepcopy(dashboard))
        back = json.loads(json.dumps(model, cls=JSONEncoder))
    except Exception as e:  # the decoder indexes and converts without checking first
        return [f"the model cannot decode it: {type(e).__name__}: {e}"]
    problems: list[str] = []
    _lost(dashboard, back, "", problems)
    _typecheck(model, "", problems, set())
    return problems


# --- structure -----------------------------------------------------------------------------

def all_panels(dashboard: dict) -> list[dict]:
    """Every panel, those inside collapsed rows included."""
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out += panel.get("panels", [])
    return out


DATASOURCE = "${datasource}"


def structure_problems(dashboard: dict) -> list[str]:
    problems = []
    uid = dashboard.get("uid", "")
    if not re.fullmatch(r"[a-zA-Z0-9_-]{8,40}", str(uid)):
        problems.append(f"uid {uid!r}: a stable uid of 8-40 letters, digits, - or _")
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < MIN_SCHEMA_VERSION:
        problems.append(f"schemaVersion {dashboard.get('schemaVersion')!r} is below {MIN_SCHEMA_VERSION}")
    if dashboard.get("id") not in (None,):
        problems.append("an `id`: Grafana assigns it per instance; leave it out")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("no `datasource` variable of type datasource for prometheus")
    for name in ("namespace", "job"):
        var = variables.get(name, {})
        query = var.get("query", {})
        query = query.get("query", "") if isinstance(query, dict) else query
        if var.get("type") != "query" or not str(query).startswith("label_values("):
            problems.append(f"no `{name}` variable from label_values(...)")
    for name, var in variables.items():
        if var.get("type") == "query" and var.get("datasource", {}).get("uid") != DATASOURCE:
            problems.append(f"variable {name}: datasource is not {DATASOURCE}")
    ids = [p.get("id") for p in all_panels(dashboard)]
    dupes = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if dupes or None in ids:
        problems.append(f"panel ids not unique or missing: {dupes or 'missing'}")
    for panel in all_panels(dashboard):
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("uid") != DATASOURCE or panel["datasource"].get("type") != "prometheus":
            problems.append(f"{where}: datasource is not prometheus {DATASOURCE}")
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"{where}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            problems.append(f"{where}: refIds not unique")
        for target in targets:
            expr = target.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{where} {target.get('refId')}: no expr")
                continue
            if target.get("datasource", {}).get("uid", DATASOURCE) != DATASOURCE:
                problems.append(f"{where} {target.get('refId')}: datasource is not {DATASOURCE}")
            for m in re.finditer(r"histogram_quantile\(", expr):
                rest = expr[m.end():]
                if "_bucket" not in rest or not re.search(r"by \([^)]*\ble\b", rest):
                    problems.append(f"{where} {target.get('refId')}: histogram_quantile without a _bucket series by le")
        width = panel.get("gridPos", {}).get("w")
        if not isinstance(width, int) or width <= 0:
            problems.append(f"{where}: no gridPos width")
    return problems


# --- rules ---------------------------------------------------------------------------------

def github_anchors(doc: Path = OBSERVABILITY) -> set[str]:
    """The anchors GitHub makes for a Markdown file's headings."""
    anchors = set()
    for line in doc.read_text().splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            text = re.sub(r"[`*_]", lambda c: "_" if c.group() == "_" else "", m.group(1).strip().lower())
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text)))
    return anchors


def rules_problems(rules_path: Path, tests_path: Path) -> list[str]:
    """promtool check and test, and what each alerting rule must carry."""
    problems = []
    for cmd in (["check", "rules", str(rules_path)], ["test", "rules", str(tests_path)]):
        proc = run([PROMTOOL, *cmd], expect_ok=None, timeout=60)
        if proc.returncode != 0:
            problems.append(f"promtool {' '.join(cmd)}:\n{proc.stdout}{proc.stderr}")
    rules = yaml.safe_load(rules_path.read_text())
    anchors = github_anchors()
    alerts = set()
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert")
            if not name:
                continue
            alerts.add(name)
            where = f"{group['name']}: {name}"
            if not rule.get("for"):
                problems.append(f"{where}: no for:")
            if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                problems.append(f"{where}: severity label not critical, warning or info")
            annotations = rule.get("annotations", {})
            for key in ("summary", "description", "runbook_url"):
                if not annotations.get(key):
                    problems.append(f"{where}: no {key} annotation")
            url = annotations.get("runbook_url", "")
            page, _, anchor = url.partition("#")
            if page != "docs/observability.md" or anchor not in anchors:
                problems.append(f"{where}: runbook_url {url!r} is not a heading of docs/observability.md")
    tests = yaml.safe_load(tests_path.read_text())
    fired = {t["alertname"] for test in tests.get("tests", []) for t in test.get("alert_rule_test", [])
             if t.get("exp_alerts")}
    if alerts - fired:
        problems.append(f"{tests_path.name}: no test makes these fire: {sorted(alerts - fired)}")
    return problems


# --- the checks ----------------------------------------------------------------------------

def dashboard_files(where: Path = DASHBOARDS) -> dict[str, dict]:
    out = {}
    for path in sorted(where.glob("*.json")):
        try:
            out[path.name] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CheckFailed(f"{path}: not JSON: {e}")
    return out


def fail_on(problems: dict[str, list[str]]) -> None:
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        raise CheckFailed("\n".join(f"{where}:\n  " + "\n  ".join(p) for where, p in problems.items()))


def grafana_model():
    """Each dashboard decodes into grafana-foundation-sdk's Dashboard model with nothing lost
    (no unknown or misplaced field) and every value of the type the model declares."""
    boards = dashboard_files()
    fail_on({name: grafana_model_problems(board) for name, board in boards.items()})
    from importlib.metadata import version
    panels = sum(len(all_panels(b)) for b in boards.values())
    return f"{len(boards)} dashboards, {panels} panels, grafana-foundation-sdk {version('grafana-foundation-sdk')}"


def dashboards_structure():
    """The four dashboards, unique uids, variables, panel ids, ${datasource}, exprs."""
    boards = dashboard_files()
    if set(boards) != EXPECTED_DASHBOARDS:
        raise CheckFailed(f"dashboards/ holds {sorted(boards)}, expected {sorted(EXPECTED_DASHBOARDS)}")
    uids = [b.get("uid") for b in boards.values()]
    if len(set(uids)) != len(uids):
        raise CheckFailed(f"dashboard uids not unique: {uids}")
    fail_on({name: structure_problems(board) for name, board in boards.items()})
    targets = sum(len(p.get("targets", [])) for b in boards.values() for p in all_panels(b))
    return f"uids {', '.join(uids)}; {targets} targets on {DATASOURCE}"


def alerting_rules():
    """promtool check rules and test rules pass; every alert has for:, severity, summary,
    description and a runbook_url into docs/observability.md, and fires in a test."""
    if not Path(PROMTOOL).exists():
        raise CheckFailed("promtool is missing: run scripts/install-test-deps.sh (Debian's prometheus)")
    fail_on({RULES.name: rules_problems(RULES, RULE_TESTS)})
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    count = sum(len(g["rules"]) for g in rules["groups"])
    return f"{count} rules ({len(alerts)} alerts) pass promtool check and test rules; each fires in a test"


def metrics_documented():
    """Every metric the dashboards and rules query is in docs/observability.md's Metrics tables."""
    documented = documented_metrics() | EXTRA_METRICS
    found = queried_metrics()
    unknown = {name: sorted(files) for name, files in found.items() if name not in documented}
    if unknown:
        raise CheckFailed("metrics not in the Metrics tables of docs/observability.md:\n  " +
                          "\n  ".join(f"{n} ({', '.join(f)})" for n, f in sorted(unknown.items())))
    return f"{len(found)} metric names queried, all among the {len(documented)} documented series"


def chart_uses_these():
    """helm/gatehouse/files/dashboards is the symlink to dashboards/ (so the chart ships exactly
    these files; check_helm.py renders them)."""
    if not CHART_LINK.is_symlink() or CHART_LINK.resolve() != DASHBOARDS.resolve():
        raise CheckFailed(f"{CHART_LINK} is not a symlink to {DASHBOARDS}")
    return f"{CHART_LINK.relative_to(ROOT)} -> {CHART_LINK.readlink()}"


# Broken copies: (what, file, how to break it). Each must make the checks above fail.
def _break_board(board: dict, how: str) -> dict:
    board = copy.deepcopy(board)
    panel = next(p for p in board["panels"] if p["type"] != "row")
    if how == "unknown field":
        panel["fieldconfig"] = panel.pop("fieldConfig")
    elif how == "wrong type":
        panel["gridPos"]["w"] = "12"
    elif how == "duplicate panel id":
        board["panels"][-1]["id"] = panel["id"]
    elif how == "hard-coded datasource":
        panel["datasource"] = {"type": "prometheus", "uid": "prometheus"}
    elif how == "undocumented metric":
        panel["targets"][0]["expr"] = "rate(gatehouse_ratelimit_requests_total[5m])"
    elif how == "no expr":
        del panel["targets"][0]["expr"]
    return board


BROKEN_BOARDS = ["unknown field", "wrong type", "duplicate panel id", "hard-coded datasource",
                 "undocumented metric", "no expr"]
BROKEN_RULES = {
    "bad PromQL": ("expr: |", "expr: |\n          sum by (job (", 1),
    "undocumented metric": ("gatehouse_ratelimit_errors_total{", "gatehouse_ratelimit_error_total{", 1),
    "higher threshold than the tests expect": ("  > 0.05", "  > 0.5", 1),
    "no runbook": ("runbook_url: docs/observability.md#gatehouseerrorratiohigh", "runbook_url: ''", 1),
}


def catches_errors():
    """Broken copies of a dashboard and of the rules, in a temporary directory, fail."""
    boards = dashboard_files()
    name = "gatehouse-ratelimit.json"
    for how in BROKEN_BOARDS:
        broken = _break_board(boards[name], how)
        problems = grafana_model_problems(broken) + structure_problems(broken)
        with tempfile.TemporaryDirectory() as tmp:
            copy_dir = Path(tmp)
            shutil.copy(RULES, copy_dir / RULES.name)
            (copy_dir / name).write_text(json.dumps(broken))
            documented = documented_metrics() | EXTRA_METRICS
            problems += [m for m in queried_metrics(copy_dir) if m not in documented]
        if not problems:
            raise CheckFailed(f"{name} with {how}: no check noticed")
    rules_text = RULES.read_text()
    for how, (old, new, count) in BROKEN_RULES.items():
        if old not in rules_text:
            raise CheckFailed(f"broken rules ({how}): {old!r} is not in {RULES.name} any more")
        with tempfile.TemporaryDirectory() as tmp:
            rules = Path(tmp) / RULES.name
            rules.write_text(rules_text.replace(old, new, count))
            (Path(tmp) / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
            try:
                problems = rules_problems(rules, Path(tmp) / RULE_TESTS.name)
                documented = documented_metrics() | EXTRA_METRICS
                problems += [n for _, q in rule_queries(yaml.safe_load(rules.read_text()))
                             for n in metric_names(q) if n not in documented]
            except yaml.YAMLError as e:
                problems = [str(e)]
        if not problems:
            raise CheckFailed(f"{RULES.name} with {how}: no check noticed")
    return f"{len(BROKEN_BOARDS)} broken dashboards and {len(BROKEN_RULES)} broken rule files all fail"


if __name__ == "__main__":
    if sys.argv[1:] == ["--list-metrics"]:
        print("\n".join(sorted(queried_metrics())))
    else:
        main([dashboards_structure, grafana_model, alerting_rules, metrics_documented, chart_uses_these,
              catches_errors])
