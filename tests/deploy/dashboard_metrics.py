"""Prints every metric name the Grafana dashboard queries, one per line, sorted.

    python3 tests/deploy/dashboard_metrics.py [kube/grafana/order-service-dashboard.json]

Names are as queried: a histogram appears as its `_bucket` series, which is what /metrics
shows. A Rust test compares this list with the service's /metrics; check-deploy runs it
too. Exits 1 when a panel's query names no order_service_ metric (a typo'd or foreign
query would otherwise go unchecked). Standard library only.
"""

import json
import re
import sys

DASHBOARD = "kube/grafana/order-service-dashboard.json"
METRIC = re.compile(r"\border_service_[a-z0-9_]+\b")


def expressions(node):
    """Every PromQL expression in the dashboard: panel targets (rows nest panels) and
    query variables."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, dict) and isinstance(value.get("query"), str):
                yield value["query"]
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def main(path):
    with open(path, encoding="utf-8") as handle:
        dashboard = json.load(handle)
    names = set()
    for expr in expressions(dashboard):
        found = METRIC.findall(expr)
        if not found:
            sys.exit(f"{path}: a query names no order_service_ metric: {expr}")
        names.update(found)
    if not names:
        sys.exit(f"{path}: no queries")
    for name in sorted(names):
        print(name)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else DASHBOARD)
