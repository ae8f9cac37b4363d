#!/usr/bin/env python3
"""Checks that every metric the alert rules and dashboards query is one the services create.

Each `relay_*` name in an expression is traced to the instrument that produces it (the
Prometheus suffixes `_bucket`, `_count`, `_sum`, `_total` and the unit `_seconds` are the
exporter's), and that instrument's name must appear as a string in a service's source. Every
recording rule a dashboard uses must be defined in rules.yaml. Exits 1 naming each problem.
"""
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
NAME = re.compile(r"(?<![:\w])relay_[a-z0-9_]+")
RECORDED = re.compile(r"relay:[a-z0-9_:]+")


def instrument_names():
    names = set()
    for path in (ROOT / "services").glob("*/src/**/*.rs"):
        names.update(re.findall(r'"(relay_[a-z0-9_]+)"', path.read_text()))
    return names


def candidates(name):
    """The instrument names an exported series name may come from."""
    out = {name}
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix):
            out.add(name[: -len(suffix)])
    for base in list(out):
        if base.endswith("_total"):
            out.add(base[: -len("_total")])
    for base in list(out):
        if base.endswith("_seconds"):
            out.add(base[: -len("_seconds")])
    return out


def main():
    created = instrument_names()
    problems = []
    rules_text = (HERE / "rules.yaml").read_text()
    recorded = set(re.findall(r"record:\s*(relay:[a-z0-9_:]+)", rules_text))
    sources = {"rules.yaml": [rules_text]}
    for path in sorted((HERE / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        exprs = []
        for panel in dashboard.get("panels", []):
            targets = panel.get("targets") or []
            if not targets:
                problems.append(f"{path.name}: panel {panel.get('title')!r} has no query")
            for target in targets:
                expr = target.get("expr", "")
                if not expr.strip():
                    problems.append(f"{path.name}: panel {panel.get('title')!r} has an empty query")
                exprs.append(expr)
                for rule in RECORDED.findall(expr):
                    if rule not in recorded:
                        problems.append(f"{path.name}: {rule} is not a recording rule in rules.yaml")
        for variable in dashboard.get("templating", {}).get("list", []):
            exprs.append(str(variable.get("query", "")))
        sources[path.name] = exprs
    used = 0
    for source, texts in sources.items():
        for text in texts:
            for name in NAME.findall(text):
                used += 1
                if not candidates(name) & created:
                    problems.append(f"{source}: {name} is not a metric any service creates")
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"observability: {used} metric references in rules and {len(sources) - 1} dashboards, all exported")
    return 0


if __name__ == "__main__":
    sys.exit(main())
