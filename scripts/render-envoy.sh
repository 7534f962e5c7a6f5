#!/usr/bin/env bash
# Render an Envoy config template: replace every ${NAME} with the value of the
# environment variable NAME. Fails (exit 1), naming them, if any placeholder has
# no such variable set. An empty value counts as set.
#
# Usage: scripts/render-envoy.sh TEMPLATE OUT     (OUT may be - for stdout)
set -euo pipefail

if [ "$#" -ne 2 ]; then
    echo "usage: $0 TEMPLATE OUT" >&2
    exit 2
fi

exec python3 - "$1" "$2" <<'PY'
import os
import re
import sys

template, out = sys.argv[1], sys.argv[2]
try:
    with open(template, encoding="utf-8") as f:
        text = f.read()
except OSError as e:
    sys.exit(f"render-envoy: cannot read template: {e}")

pattern = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
missing = sorted({m.group(1) for m in pattern.finditer(text)} - os.environ.keys())
if missing:
    sys.exit(
        f"render-envoy: {template}: no environment variable set for placeholder(s): "
        + ", ".join("${" + n + "}" for n in missing)
    )

rendered = pattern.sub(lambda m: os.environ[m.group(1)], text)
if out == "-":
    sys.stdout.write(rendered)
else:
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(rendered)
    os.replace(tmp, out)
PY
