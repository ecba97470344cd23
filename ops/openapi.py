"""docs/openapi.json, generated from the functions' own routes (Powertools' OpenAPI support).

`python -m ops.openapi` writes it; a test fails when the file no longer matches the code.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ops.template import ROOT, load, load_module

OUT = ROOT / "docs" / "openapi.json"
TITLE = "Payments API"
VERSION = "1.0.0"


def build() -> dict[str, Any]:
    """One document for the whole HTTP API: every function's routes, merged."""
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Payments")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")
    document: dict[str, Any] = {}
    template = load()
    for name in sorted(template.functions):
        app = load_module(template.functions[name]).app
        schema = json.loads(app.get_openapi_json_schema(title=TITLE, version=VERSION))
        if not document:
            document = schema
            continue
        document.setdefault("paths", {}).update(schema.get("paths", {}))
        for kind, items in schema.get("components", {}).items():
            document.setdefault("components", {}).setdefault(kind, {}).update(items)
    # Which routes need the web app's token is the template's business (the JWT authorizer).
    secured = {(r.method.lower(), r.path) for r in template.routes if r.authorizer}
    document.setdefault("components", {})["securitySchemes"] = {
        "webAppJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    }
    for path, operations in document.get("paths", {}).items():
        template_path = path.replace("<", "{").replace(">", "}")
        for method, operation in operations.items():
            if (method, template_path) in secured:
                operation["security"] = [{"webAppJwt": []}]
    return document


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
