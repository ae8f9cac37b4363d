#!/usr/bin/env python3
"""Assertions on the rendered Kubernetes manifests (run by `make deploy-check`).

Schema validation (kubernetes-validate) says the YAML is well-formed Kubernetes; this says it
does what deploy/README.md promises. Usage:

    manifests.py target/deploy/base.yaml target/deploy/all-components.yaml [...]

Each file is checked on its own. Checks that need a component (network policies, the
PodMonitor) run only when the file contains that kind, and `--require KIND` makes a file
fail when it lacks one. `--expect-egress IP:PORT` asserts that the rendered policies let every
Relay pod reach that address (the example overlay that adds a CIDR uses it).

Needs Python 3.11 and PyYAML (pinned in the Makefile's venv). Exits 1 with one line per
failed assertion.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from dataclasses import dataclass, field

import yaml

# What each service is, as deploy/README.md documents it.
SERVICES = {
    "relay-intake": {"grpc": 50051, "metrics": 9451},
    "relay-availability": {"grpc": 50052, "metrics": 9452},
    "relay-routing": {"grpc": 50053, "metrics": 9453},
    "relay-directory": {"grpc": 50054, "metrics": 9454},
}
SECRET_NAME = "relay-secrets"
PAGE_TOKEN_VAR = "RELAY_PAGE_TOKEN_SECRET"
# Settings that must never reach a cluster: they turn the services' safety refusals off.
DEV_ONLY_VARS = ("RELAY_INSECURE_DEV", "RELAY_INSECURE_PLAINTEXT", "RELAY_INSECURE_NO_AUTH",
                 "RELAY_SECURITY__INSECURE_PLAINTEXT", "RELAY_SECURITY__INSECURE_NO_AUTH")
# Secure is the default and a deployment says where its certificates and keys are (issue 14).
SECURITY_VARS = ("RELAY_TLS_CERT", "RELAY_TLS_KEY", "RELAY_TLS_CLIENT_CA", "RELAY_AUTH_JWKS")
# The database settings every service shares (`[database]`, docs/operations.md "Settings every
# service has"): the old per-service names still work, but a manifest uses the shared ones; and
# the bound of one database operation must leave the server's request timeout room to answer
# UNAVAILABLE before the caller's deadline.
OLD_DATABASE_VARS = {
    "RELAY_INTAKE__RUN_MIGRATIONS": "RELAY_DATABASE__MIGRATE_ON_START",
    "RELAY_AVAILABILITY__MIGRATE_ON_START": "RELAY_DATABASE__MIGRATE_ON_START",
    "RELAY_INTAKE__MAX_CONNECTIONS": "RELAY_DATABASE__MAX_CONNECTIONS",
    "RELAY_DIRECTORY__MAX_CONNECTIONS": "RELAY_DATABASE__MAX_CONNECTIONS",
}
QUERY_TIMEOUT_VAR = "RELAY_DATABASE__QUERY_TIMEOUT_MS"
REQUEST_TIMEOUT_VAR = "RELAY_SERVER__REQUEST_TIMEOUT_MS"
DEFAULT_QUERY_TIMEOUT_MS = 3000
DEFAULT_REQUEST_TIMEOUT_MS = 10000
DIGEST = re.compile(r"^[^@\s]+:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}@sha256:[0-9a-f]{64}$")
CLUSTER_SCOPED = {"Namespace"}
# The labels deploy/README.md tells operators to set (namespace labels unless stated).
CAD_NAMESPACE_LABEL = {"relay.dev/role": "cad-integration"}
CAD_POD_LABEL = {"relay.dev/client": "cad"}  # pods in Relay's own namespace
MONITORING_NAMESPACE_LABEL = {"relay.dev/role": "monitoring"}
DEPENDENCY_LABEL = "relay.dev/dependency"  # pods in any namespace
DEPENDENCIES = {"postgresql": 5432, "redis": 6379, "otlp-collector": 4317}
OUTSIDE_IP = "203.0.113.10"  # TEST-NET-3: stands for "anywhere on the internet"


class Failures(list):
    def check(self, ok: bool, message: str) -> bool:
        if not ok:
            self.append(message)
        return ok


# --- label selectors and a NetworkPolicy evaluator -----------------------------------------


def selector_matches(selector: dict | None, labels: dict) -> bool:
    """A metav1.LabelSelector; an empty selector matches everything, a missing one nothing."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


@dataclass
class Endpoint:
    """A pod (namespace set) or an address outside the cluster (namespace None)."""

    name: str
    namespace: str | None = None
    namespace_labels: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    ports: dict = field(default_factory=dict)  # port name -> (number, protocol)
    ip: str | None = None


def port_matches(rule_ports, dest: Endpoint, port: int, protocol: str) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None:
            return True
        if isinstance(want, str):
            named = dest.ports.get(want)
            if named and named == (port, protocol):
                return True
            continue
        if want <= port <= p.get("endPort", want):
            return True
    return False


def peer_matches(peer: dict, policy_ns: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        if other.ip is None:
            return False  # simplification: Relay's checks never aim CIDRs at pods
        block = peer["ipBlock"]
        addr = ipaddress.ip_address(other.ip)
        if addr not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(addr in ipaddress.ip_network(e) for e in block.get("except") or [])
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_ns:
        return False
    if "podSelector" in peer:
        return selector_matches(peer["podSelector"], other.labels)
    return True


def direction_allows(policies, pod: Endpoint, other: Endpoint, dest: Endpoint, port, protocol,
                     kind: str) -> bool:
    """kind is Ingress (pod receives from other) or Egress (pod sends to other)."""
    selecting = [
        p for p in policies
        if ns_of(p) == pod.namespace
        and selector_matches(p["spec"].get("podSelector", {}), pod.labels)
        and kind in policy_types(p)
    ]
    if not selecting:
        return True  # not isolated in this direction
    key, peers_key = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
    for policy in selecting:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if peers and not any(peer_matches(peer, ns_of(policy), other)
                                 for peer in peers):
                continue
            if port_matches(rule.get("ports"), dest, port, protocol):
                return True
    return False


def ns_of(obj) -> str:
    # Unset means whatever namespace kubectl applies it to: "default" stands for that.
    return obj["metadata"].get("namespace") or "default"


def policy_types(policy) -> list:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return spec["policyTypes"]
    return ["Ingress"] + (["Egress"] if "egress" in spec else [])


def allowed(policies, src: Endpoint, dst: Endpoint, port, protocol="TCP") -> bool:
    if isinstance(port, str):
        port, protocol = dst.ports[port]
    out_ok = src.namespace is None or direction_allows(policies, src, dst, dst, port, protocol,
                                                      "Egress")
    in_ok = dst.namespace is None or direction_allows(policies, dst, src, dst, port, protocol,
                                                     "Ingress")
    return out_ok and in_ok


# --- the checks ------------------------------------------------------------------------------


def containers(deploy):
    spec = deploy["spec"]["template"]["spec"]
    return (spec.get("initContainers") or []) + (spec.get("containers") or [])


def main_container(deploy):
    name = deploy["metadata"]["name"]
    for c in deploy["spec"]["template"]["spec"].get("containers") or []:
        if c["name"] == name:
            return c
    return deploy["spec"]["template"]["spec"]["containers"][0]


def env_of(container) -> dict:
    return {e["name"]: e for e in container.get("env") or []}


def check_database_settings(f: Failures, path: str, config_data: dict, deployments: dict) -> None:
    """The shared `[database]` names, and a query bound below the request timeout."""
    for old, new in OLD_DATABASE_VARS.items():
        f.check(old not in config_data, f"{path}: ConfigMap sets {old}; use {new}")
    for name, dep in sorted(deployments.items()):
        for c in containers(dep):
            env = env_of(c)
            for old, new in OLD_DATABASE_VARS.items():
                f.check(old not in env,
                        f"{path}: Deployment/{name} container {c['name']} sets {old}; use {new}")
            values = dict(config_data)
            values.update({k: v.get("value") for k, v in env.items() if "value" in v})
            try:
                query = int(values.get(QUERY_TIMEOUT_VAR, DEFAULT_QUERY_TIMEOUT_MS))
                request = int(values.get(REQUEST_TIMEOUT_VAR, DEFAULT_REQUEST_TIMEOUT_MS))
            except (TypeError, ValueError):
                f.check(False, f"{path}: Deployment/{name}: {QUERY_TIMEOUT_VAR} and "
                        f"{REQUEST_TIMEOUT_VAR} must be whole milliseconds")
                continue
            f.check(0 < query < request,
                    f"{path}: Deployment/{name} container {c['name']}: {QUERY_TIMEOUT_VAR} "
                    f"({query}) must be above 0 and below {REQUEST_TIMEOUT_VAR} ({request}), so "
                    "that a call to a partitioned database answers UNAVAILABLE before its deadline")


def check_file(path: str, required: list[str], expect_egress: list[str]) -> Failures:
    with open(path, encoding="utf-8") as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    f = Failures()
    by_kind: dict[str, list] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    for kind in required:
        f.check(kind in by_kind, f"{path}: no {kind} rendered (--require {kind})")
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    f.check(set(deployments) == set(SERVICES),
            f"{path}: Deployments are {sorted(deployments)}, expected {sorted(SERVICES)}")

    # Namespace: one Namespace object, and every namespaced object in it.
    namespaces = by_kind.get("Namespace", [])
    ns_name = namespaces[0]["metadata"]["name"] if len(namespaces) == 1 else None
    f.check(ns_name is not None,
            f"{path}: expected exactly one Namespace resource, found {len(namespaces)}")
    for d in docs:
        if d["kind"] in CLUSTER_SCOPED:
            continue
        got = d["metadata"].get("namespace")
        if ns_name is not None:
            f.check(got == ns_name,
                    f"{path}: {d['kind']}/{d['metadata']['name']} has namespace {got!r}, "
                    f"expected {ns_name!r} (set `namespace:` in the kustomization)")
    ns_labels = dict(namespaces[0]["metadata"].get("labels") or {}) if ns_name else {}
    if ns_name:
        f.check(ns_labels.get("pod-security.kubernetes.io/enforce") == "restricted",
                f"{path}: Namespace/{ns_name} does not enforce the restricted Pod Security profile")
    if ns_name:
        ns_labels["kubernetes.io/metadata.name"] = ns_name  # set by the API server

    # Config that applies to every container through envFrom.
    config_data = {}
    for cm in by_kind.get("ConfigMap", []):
        config_data.update(cm.get("data") or {})
    for var in DEV_ONLY_VARS + (PAGE_TOKEN_VAR,):
        f.check(var not in config_data,
                f"{path}: ConfigMap sets {var}; "
                + ("it must never be deployed" if var != PAGE_TOKEN_VAR
                   else "a secret belongs in the Secret, not a ConfigMap"))

    check_database_settings(f, path, config_data, deployments)

    if deployments:
        for var in SECURITY_VARS:
            f.check(var in config_data,
                    f"{path}: ConfigMap does not set {var}: services refuse to start without TLS "
                    "and a JWKS (docs/operations.md, Security)")

    pods: dict[str, Endpoint] = {}
    for name, dep in sorted(deployments.items()):
        tmpl = dep["spec"]["template"]
        labels = tmpl["metadata"].get("labels") or {}
        main = main_container(dep)
        where = f"{path}: Deployment/{name}"

        # Pod labels that network policies and the PodMonitor select on.
        f.check(labels.get("app.kubernetes.io/part-of") == "relay",
                f"{where}: pod template lacks label app.kubernetes.io/part-of=relay "
                "(the default-deny policy and the PodMonitor select on it)")

        for c in containers(dep):
            cwhere = f"{where} container {c['name']}"
            # Image pinned by tag and digest.
            f.check(bool(DIGEST.match(c.get("image", ""))),
                    f"{cwhere}: image {c.get('image')!r} is not name:tag@sha256:<digest> "
                    "(set `images:` with newTag and digest in the kustomization)")
            env = env_of(c)
            # Page-token secret from the Secret, by secretKeyRef.
            ref = ((env.get(PAGE_TOKEN_VAR) or {}).get("valueFrom") or {}).get("secretKeyRef")
            f.check(bool(ref) and ref.get("name", "").startswith(SECRET_NAME)
                    and ref.get("key") == PAGE_TOKEN_VAR and not ref.get("optional", False),
                    f"{cwhere}: env {PAGE_TOKEN_VAR} must come from secretKeyRef "
                    f"{SECRET_NAME}/{PAGE_TOKEN_VAR} (not optional), got {env.get(PAGE_TOKEN_VAR)}")
            for var in DEV_ONLY_VARS:
                f.check(var not in env, f"{cwhere}: sets {var}; it must never be deployed")

        # Metrics on the admin port, named `metrics`.
        expected = SERVICES.get(name, {}).get("metrics")
        ports = {p.get("name"): p for p in main.get("ports") or []}
        metrics = ports.get("metrics")
        f.check(metrics is not None and metrics.get("containerPort") == expected,
                f"{where}: container {main['name']} needs a port named `metrics` = {expected}, "
                f"has {sorted(k for k in ports if k)}")
        admin = (env_of(main).get("RELAY_ADMIN_LISTEN") or {}).get("value")
        f.check(admin == f"0.0.0.0:{expected}",
                f"{where}: RELAY_ADMIN_LISTEN is {admin!r}, expected '0.0.0.0:{expected}'")

        # Probes on the admin port: the gRPC port speaks TLS, which gRPC probes cannot.
        for probe, want in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = (main.get(probe) or {}).get("httpGet") or {}
            f.check(get.get("path") == want and get.get("port") in ("metrics", expected),
                    f"{where}: {probe} must be httpGet {want} on the metrics port, got "
                    f"{main.get(probe)}")
        # The TLS files are mounted where the ConfigMap says.
        mounts = {m.get("mountPath") for m in main.get("volumeMounts") or []}
        f.check("/etc/relay/tls" in mounts,
                f"{where}: container {main['name']} does not mount /etc/relay/tls")

        # Spread over zones and nodes, counting only this Deployment's pods.
        spread = tmpl["spec"].get("topologySpreadConstraints") or []
        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname"):
            f.check(any(t.get("topologyKey") == key
                        and selector_matches(t.get("labelSelector"), labels)
                        and t.get("labelSelector", {}) != {}
                        for t in spread),
                    f"{where}: no topologySpreadConstraint on {key} selecting its own pods")

        pods[name] = Endpoint(
            name=name, namespace=ns_of(dep),
            namespace_labels=ns_labels or {"kubernetes.io/metadata.name": "default"},
            labels=labels,
            ports={p["name"]: (p["containerPort"], p.get("protocol", "TCP"))
                   for p in main.get("ports") or [] if p.get("name")},
        )

    monitors = by_kind.get("PodMonitor", [])
    if monitors:
        check_pod_monitors(f, path, monitors, pods, ns_name)
    policies = by_kind.get("NetworkPolicy", [])
    if policies:
        check_network_policies(f, path, policies, pods, ns_name, ns_labels, expect_egress)
    elif expect_egress:
        f.append(f"{path}: --expect-egress given but no NetworkPolicy rendered")
    return f


def check_pod_monitors(f: Failures, path, monitors, pods, ns_name):
    for name, pod in pods.items():
        scraped = False
        for m in monitors:
            spec = m["spec"]
            nsel = spec.get("namespaceSelector") or {}
            in_ns = (nsel.get("any") or pod.namespace in (nsel.get("matchNames")
                                                          or [ns_of(m)]))
            if not (in_ns and selector_matches(spec.get("selector"), pod.labels)):
                continue
            for ep in spec.get("podMetricsEndpoints") or []:
                if ep.get("port") == "metrics" and ep.get("path", "/metrics") == "/metrics":
                    scraped = True
        f.check(scraped, f"{path}: no PodMonitor scrapes /metrics on port `metrics` of {name}")


def check_network_policies(f: Failures, path, policies, pods, ns_name, ns_labels, expect_egress):
    # Every policy must select something, or it silently protects nothing.
    for p in policies:
        sel = p["spec"].get("podSelector", {})
        f.check(any(selector_matches(sel, pod.labels) for pod in pods.values()),
                f"{path}: NetworkPolicy/{p['metadata']['name']} selects no Relay pod "
                f"(podSelector {sel})")

    def ep(name, namespace, namespace_labels=None, **labels):
        nl = dict(namespace_labels or {})
        nl["kubernetes.io/metadata.name"] = namespace
        return Endpoint(name=name, namespace=namespace, namespace_labels=nl, labels=labels)

    cad_ns = ep("a CAD pod in a namespace labelled relay.dev/role=cad-integration",
                "cad-adapter", CAD_NAMESPACE_LABEL)
    relay_ns = next(iter(pods.values())).namespace if pods else ns_name
    cad_same_ns = Endpoint(name="a pod labelled relay.dev/client=cad in Relay's namespace",
                           namespace=relay_ns,
                           namespace_labels=next(iter(pods.values())).namespace_labels,
                           labels=dict(CAD_POD_LABEL))
    cad_elsewhere = ep("a pod labelled relay.dev/client=cad in an unlabelled namespace",
                       "someone-else", None, **CAD_POD_LABEL)
    stranger = ep("a pod in an unlabelled namespace", "someone-else", None, app="curl")
    prometheus = ep("Prometheus in a namespace labelled relay.dev/role=monitoring",
                    "monitoring", MONITORING_NAMESPACE_LABEL,
                    **{"app.kubernetes.io/name": "prometheus"})
    kube_dns = ep("kube-dns", "kube-system", None, **{"k8s-app": "kube-dns"})
    kube_dns.ports = {}
    outside = Endpoint(name=f"{OUTSIDE_IP} (outside the cluster)", ip=OUTSIDE_IP)

    def expect(src, dst, port, want, why, protocol="TCP"):
        if isinstance(port, str) and port not in dst.ports:
            f.append(f"{path}: {dst.name} has no port named {port!r} to check {why} against")
            return
        got = allowed(policies, src, dst, port, protocol)
        shown = port if isinstance(port, int) else f"{port} ({dst.ports.get(port, ('?',))[0]})"
        f.check(got == want,
                f"{path}: {src.name} -> {dst.name} port {shown}/{protocol}: "
                f"{'allowed' if got else 'denied'}, expected {'allowed' if want else 'denied'} "
                f"({why})")

    # The CAD integration reaches the APIs a CAD uses (RECOMMEND needs routing's
    # ConfirmAssignment, ListQueue and WatchAssignments), and only from where it is declared.
    for svc in ("relay-intake", "relay-routing", "relay-directory", "relay-availability"):
        dst = pods[svc]
        expect(cad_ns, dst, "grpc", True, "CAD integration namespace")
        expect(cad_same_ns, dst, "grpc", True, "CAD pod label in Relay's namespace")
        expect(cad_elsewhere, dst, "grpc", False, "a pod label alone is not trusted elsewhere")
        expect(stranger, dst, "grpc", False, "default deny")
        expect(stranger, dst, "metrics", False, "default deny")
        expect(prometheus, dst, "metrics", True, "scraping /metrics")
        expect(cad_ns, dst, "metrics", False, "metrics are for monitoring only")

    # Relay's own calls.
    for src, dst in (("relay-intake", "relay-routing"), ("relay-intake", "relay-availability"),
                     ("relay-intake", "relay-directory"), ("relay-routing", "relay-availability")):
        expect(pods[src], pods[dst], "grpc", True, "Relay calls itself")

    for name, pod in pods.items():
        for proto in ("UDP", "TCP"):
            expect(pod, kube_dns, 53, True, "DNS", proto)
            expect(pod, stranger, 53, False, "DNS only to kube-dns", proto)
        for dep, port in DEPENDENCIES.items():
            target = ep(f"a pod labelled {DEPENDENCY_LABEL}={dep}", "data", None,
                        **{DEPENDENCY_LABEL: dep})
            expect(pod, target, port, True, f"egress to {dep}")
            expect(pod, stranger, port, False, f"egress to {dep} only where labelled")
            expect(pod, outside, port, False, f"egress to {dep} only where labelled")
        expect(pod, outside, 443, False, "no egress to the internet")
        for spec in expect_egress:
            ip, _, port = spec.rpartition(":")
            target = Endpoint(name=f"{ip} (--expect-egress)", ip=ip)
            expect(pod, target, int(port), True, "CIDR added by the overlay")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--require", action="append", default=[], metavar="KIND")
    ap.add_argument("--expect-egress", action="append", default=[], metavar="IP:PORT")
    args = ap.parse_args()
    failures = Failures()
    for path in args.files:
        failures.extend(check_file(path, args.require, args.expect_egress))
    for line in failures:
        print(f"FAIL {line}", file=sys.stderr)
    if failures:
        print(f"deploy/check/manifests.py: {len(failures)} assertion(s) failed", file=sys.stderr)
        return 1
    print(f"deploy/check/manifests.py: {', '.join(args.files)}: all assertions hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
