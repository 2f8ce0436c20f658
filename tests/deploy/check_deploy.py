"""Structural checks of the deployment files that no schema validator makes.

Run by .ci/check-deploy.sh inside its venv (needs PyYAML):

    python tests/deploy/check_deploy.py kustomization | kube-refs | policies | dashboard | compose
                                        | env-names | docker-deps
    python tests/deploy/check_deploy.py generated DIR   (writes the generated ConfigMaps there)

Each check prints its findings, then one summary line, and exits 1 when it found
a problem. Paths are relative to the repository root (the current directory).
"""

import glob
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from urllib.parse import urlsplit

import yaml

KUBE = "kube"
KUSTOMIZATION = os.path.join(KUBE, "kustomization.yaml")
COMPOSE = "docker-compose.yml"
DOCKERFILE = "Dockerfile"
SERVICE_BINARY = os.path.join("target", "debug", "order-service")
SERVICE_NAME = "order-service"  # Deployment, container and compose service name
DASHBOARD_METRICS = os.path.join("tests", "deploy", "dashboard_metrics.py")
PUBLIC_PORT = ("http", 8080)  # contract C4: the public port's name and number
ADMIN_PORT = ("admin", 9090)  # contract C4: the admin port's
MONITORING_NAMESPACE = "monitoring"
# Resident memory of a replica with a cache budget (issue 11's bench target).
CACHE_RSS_FACTOR = 1.25
CACHE_RSS_BASE = 64 * 1024 * 1024
# The contract's metric names (DESIGN.md, C2), without the order_service_ prefix; a
# histogram also exposes NAME_bucket, NAME_sum and NAME_count.
METRICS = {
    "messages_received_total", "orders_stored_total", "duplicates_total", "rejected_total",
    "batches_committed_total", "cache_orders", "cache_bytes", "cache_loaded", "http_requests_total",
    "cache_hits_total", "cache_misses_total", "cache_evictions_total", "cache_budget_bytes", "ready",
    "dependency_up",
}
HISTOGRAMS = {"http_request_duration_seconds", "ingest_commit_duration_seconds"}
RUNTIME_STAGE = "runtime"  # the Dockerfile stage that holds the service

# The service's configuration (the contract), used when the binary is not built.
FALLBACK_ENV_NAMES = {
    "DATABASE_URL",
    "DATABASE_PASSWORD_FILE",
    "NATS_URL",
    "NATS_STREAM",
    "NATS_SUBJECT",
    "NATS_CONSUMER",
    "NATS_REPLICAS",
    "HTTP_ADDR",
    "HTTP_WORKERS",
    "RUST_LOG",
    "MAX_MESSAGE_BYTES",
    "INGEST_BATCH",
    "STARTUP_TIMEOUT",
}
# Settings the contract adds (DESIGN.md) that a service built from an older tree may not know
# yet: accepted by env-names, and named in its summary line while the binary lacks them.
CONTRACT_ENV_NAMES = {
    "ADMIN_ADDR",
    "DATABASE_CA_FILE",
    "NATS_CREDS_FILE",
    "NATS_CA_FILE",
    "LOG_FORMAT",
    "CACHE_MAX_BYTES",
    "CACHE_LOADERS",
}

KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "images",
    "labels",
    "commonLabels",
    "commonAnnotations",
    "configMapGenerator",
    "secretGenerator",
    "patches",
    "namePrefix",
    "nameSuffix",
    "replicas",
    "components",
    "generatorOptions",
}
COMPOSE_TOP_KEYS = {"version", "name", "services", "networks", "volumes", "configs", "secrets", "include"}


class Problems:
    """Collects problems; `finish` prints them and the summary, and exits."""

    def __init__(self):
        self.items = []

    def add(self, message):
        self.items.append(message)

    def check(self, condition, message):
        if not condition:
            self.add(message)
        return condition

    def finish(self, summary):
        for item in self.items:
            print(f"  - {item}")
        if self.items:
            print(f"{len(self.items)} problem(s)")
            sys.exit(1)
        print(summary)
        sys.exit(0)


def load_documents(path):
    with open(path, encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def kustomization():
    return load_documents(KUSTOMIZATION)[0]


def listed_resources():
    """(path, document) for every document of every resource the kustomization lists,
    then the ConfigMaps its configMapGenerator makes."""
    result = []
    for name in kustomization().get("resources", []):
        for doc in load_documents(os.path.join(KUBE, name)):
            result.append((name, doc))
    result.extend(("configMapGenerator", doc) for doc in generated_config_maps())
    return result


def generated_config_maps():
    """The ConfigMaps of the kustomization's configMapGenerator, as kustomize builds them
    (files: key = the file's name unless `key=path`; options.labels; the kustomization's
    namespace; no hash suffix: check_kustomization requires disableNameSuffixHash)."""
    kust = kustomization()
    result = []
    for entry in kust.get("configMapGenerator", []):
        data = {}
        for item in entry.get("files", []):
            key, _, path = item.rpartition("=") if "=" in item else (os.path.basename(item), "", item)
            with open(os.path.join(KUBE, path), encoding="utf-8") as handle:
                data[key] = handle.read()
        data.update(dict(item.split("=", 1) for item in entry.get("literals", [])))
        metadata = {"name": entry["name"], "namespace": kust.get("namespace", "default")}
        labels = entry.get("options", {}).get("labels")
        if labels:
            metadata["labels"] = dict(labels)
        result.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    return result


def write_generated(directory):
    """Writes each generated ConfigMap to DIRECTORY/NAME.yaml, for the schema check."""
    os.makedirs(directory, exist_ok=True)
    for doc in generated_config_maps():
        with open(os.path.join(directory, doc["metadata"]["name"] + ".yaml"), "w", encoding="utf-8") as handle:
            yaml.safe_dump(doc, handle, sort_keys=False)
        print(doc["metadata"]["name"])


def example_secrets():
    result = []
    for path in sorted(glob.glob(os.path.join(KUBE, "*.example.yaml"))):
        result.extend(doc for doc in load_documents(path) if doc.get("kind") == "Secret")
    return result


def find(docs, kind, name):
    for doc in docs:
        if doc.get("kind") == kind and doc.get("metadata", {}).get("name") == name:
            return doc
    return None


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --- kustomization -------------------------------------------------------------------


def check_kustomization():
    problems = Problems()
    kust = kustomization()
    problems.check(kust.get("apiVersion") == "kustomize.config.k8s.io/v1beta1", "apiVersion is not v1beta1")
    problems.check(kust.get("kind") == "Kustomization", "kind is not Kustomization")
    unknown = set(kust) - KUSTOMIZATION_KEYS
    problems.check(not unknown, f"unknown keys: {sorted(unknown)}")

    listed = kust.get("resources", [])
    problems.check(len(listed) == len(set(listed)), "a resource is listed twice")
    present = {
        os.path.basename(p) for p in glob.glob(os.path.join(KUBE, "*.yaml")) + glob.glob(os.path.join(KUBE, "*.yml"))
    }
    present.discard("kustomization.yaml")
    examples = {p for p in present if ".example." in p}
    for name in sorted(set(listed) - present):
        problems.add(f"listed but missing: kube/{name}")
    for name in sorted(present - examples - set(listed)):
        problems.add(f"present but not listed: kube/{name}")
    for name in sorted(examples & set(listed)):
        problems.add(f"an example is listed as a resource: kube/{name}")

    namespace = kust.get("namespace")
    images = {entry.get("name") for entry in kust.get("images", [])}
    used_images = set()
    existing = [name for name in listed if name in present]
    for name, doc in ((n, d) for n in existing for d in load_documents(os.path.join(KUBE, n))):
        meta = doc.get("metadata", {})
        if doc.get("kind") != "Namespace" and namespace:
            problems.check(
                meta.get("namespace") == namespace,
                f"kube/{name}: {doc.get('kind')}/{meta.get('name')} is not in namespace {namespace}",
            )
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            used_images.add(container.get("image", "").rsplit(":", 1)[0])
    for image in sorted(images - used_images):
        problems.add(f"images: {image} is used by no container")
    for entry in kust.get("configMapGenerator", []):
        where = f"configMapGenerator {entry.get('name')}"
        problems.check(
            entry.get("options", {}).get("disableNameSuffixHash") is True,
            f"{where}: no disableNameSuffixHash (a renamed ConfigMap leaves the old one behind)",
        )
        for item in entry.get("files", []):
            path = os.path.normpath(os.path.join(KUBE, item.split("=", 1)[-1]))
            problems.check(os.path.isfile(path), f"{where}: no file {path}")
            problems.check(path.startswith(KUBE + os.sep), f"{where}: {path} is outside kube/ (kustomize refuses)")
    problems.finish(
        f"{len(listed)} resources listed = the files in kube/ (examples excluded: {', '.join(sorted(examples))})"
    )


# --- cross references between the Kubernetes resources ----------------------------------


def check_kube_refs():
    problems = Problems()
    docs = [doc for _, doc in listed_resources()]
    secrets = example_secrets()
    workloads = [d for d in docs if d.get("kind") in ("Deployment", "StatefulSet")]

    for workload in workloads:
        check_workload(problems, workload, docs, secrets)
    for service in (d for d in docs if d.get("kind") == "Service"):
        check_service(problems, service, workloads)
    for pdb in (d for d in docs if d.get("kind") == "PodDisruptionBudget"):
        selector = pdb["spec"].get("selector", {}).get("matchLabels", {})
        matched = [w for w in workloads if labels_match(selector, w["spec"]["template"]["metadata"].get("labels", {}))]
        name = pdb["metadata"]["name"]
        if problems.check(matched, f"PodDisruptionBudget/{name} selects no workload"):
            replicas = matched[0]["spec"].get("replicas", 1)
            problems.check(replicas >= 2, f"PodDisruptionBudget/{name}: its workload has {replicas} replica(s)")
    check_service_config(problems, docs)
    problems.finish(f"{len(workloads)} workloads, {len(docs)} resources: references, probes, hardening consistent")


def check_workload(problems, workload, docs, secrets):
    kind, name = workload["kind"], workload["metadata"]["name"]
    where = f"{kind}/{name}"
    spec = workload["spec"]
    template = spec["template"]
    pod = template["spec"]
    problems.check(
        labels_match(spec["selector"].get("matchLabels", {}), template["metadata"].get("labels", {})),
        f"{where}: selector does not match the pod template labels",
    )
    if kind == "StatefulSet":
        governing = find(docs, "Service", spec.get("serviceName"))
        problems.check(
            governing is not None and governing["spec"].get("clusterIP") == "None",
            f"{where}: serviceName {spec.get('serviceName')} is not a headless Service here",
        )
    pod_security = pod.get("securityContext", {})
    problems.check(pod_security.get("runAsNonRoot") is True, f"{where}: runAsNonRoot is not true")
    problems.check(
        pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        f"{where}: seccompProfile is not RuntimeDefault",
    )
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    volumes.update({t["metadata"]["name"]: {"pvc": True} for t in spec.get("volumeClaimTemplates", [])})
    for volume_name, volume in volumes.items():
        if "configMap" in volume:
            problems.check(
                find(docs, "ConfigMap", volume["configMap"]["name"]) is not None,
                f"{where}: volume {volume_name}: no ConfigMap {volume['configMap']['name']}",
            )
        if "secret" in volume:
            check_secret_ref(problems, where, volume["secret"], secrets)
    for container in pod.get("containers", []):
        check_container(problems, f"{where} container {container['name']}", container, volumes, docs)


def check_secret_ref(problems, where, ref, secrets):
    secret = next((s for s in secrets if s["metadata"]["name"] == ref["secretName"]), None)
    if problems.check(secret is not None, f"{where}: Secret {ref['secretName']} has no example in kube/*.example.yaml"):
        keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
        for item in ref.get("items", []):
            problems.check(item["key"] in keys, f"{where}: Secret {ref['secretName']} has no key {item['key']}")


def check_container(problems, where, container, volumes, docs):
    security = container.get("securityContext", {})
    problems.check(security.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation not false")
    problems.check(security.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem not true")
    problems.check(security.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities not drop [ALL]")
    resources = container.get("resources", {})
    for part in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            problems.check(resource in resources.get(part, {}), f"{where}: no {part}.{resource}")
    ports = {p.get("name") for p in container.get("ports", [])} | {
        p["containerPort"] for p in container.get("ports", [])
    }
    for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(probe_name)
        if probe and "httpGet" in probe:
            problems.check(probe["httpGet"]["port"] in ports, f"{where}: {probe_name} port is not a container port")
    for mount in container.get("volumeMounts", []):
        problems.check(mount["name"] in volumes, f"{where}: volumeMount {mount['name']} has no volume")
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            problems.check(
                find(docs, "ConfigMap", source["configMapRef"]["name"]) is not None,
                f"{where}: envFrom: no ConfigMap {source['configMapRef']['name']}",
            )


def check_service(problems, service, workloads):
    name = service["metadata"]["name"]
    selector = service["spec"].get("selector", {})
    matched = [w for w in workloads if labels_match(selector, w["spec"]["template"]["metadata"].get("labels", {}))]
    if not problems.check(matched, f"Service/{name} selects no workload"):
        return
    container_ports = set()
    for container in matched[0]["spec"]["template"]["spec"]["containers"]:
        for port in container.get("ports", []):
            container_ports |= {port.get("name"), port["containerPort"]}
    for port in service["spec"].get("ports", []):
        target = port.get("targetPort", port["port"])
        problems.check(target in container_ports, f"Service/{name}: targetPort {target} is no container port")


def check_service_config(problems, docs):
    """The order service's settings agree with the NATS and PostgreSQL resources."""
    deployment = find(docs, "Deployment", SERVICE_NAME)
    if not problems.check(deployment is not None, f"no Deployment/{SERVICE_NAME}"):
        return
    pod = deployment["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == SERVICE_NAME)
    config = service_config_map(docs, container)
    if not problems.check(config is not None, f"Deployment/{SERVICE_NAME} reads no ConfigMap"):
        return
    data = config.get("data", {})
    problems.check(deployment["spec"].get("replicas", 1) >= 3, f"Deployment/{SERVICE_NAME}: fewer than 3 replicas")
    problems.check(
        "topologySpreadConstraints" in pod or "podAntiAffinity" in pod.get("affinity", {}),
        f"Deployment/{SERVICE_NAME}: replicas are not spread",
    )
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    problems.check(
        grace >= pre_stop + 30, f"Deployment/{SERVICE_NAME}: grace {grace}s < preStop {pre_stop}s + 30s drain"
    )
    probes = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe_name, path in probes.items():
        got = container.get(probe_name, {}).get("httpGet", {}).get("path")
        problems.check(got == path, f"Deployment/{SERVICE_NAME}: {probe_name} path is {got}, not {path}")

    startup = container.get("startupProbe", {})
    startup_window = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    startup_timeout = int(data.get("STARTUP_TIMEOUT", "30"))
    problems.check(
        startup_window > startup_timeout,
        f"startupProbe allows {startup_window}s, less than STARTUP_TIMEOUT {startup_timeout}s",
    )

    # Contract C4: public port `http` 8080 (HTTP_ADDR), admin port `admin` 9090 (ADMIN_ADDR),
    # and Prometheus scrapes the admin port.
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    for (name, number), variable in ((PUBLIC_PORT, "HTTP_ADDR"), (ADMIN_PORT, "ADMIN_ADDR")):
        problems.check(ports.get(name) == number, f"Deployment/{SERVICE_NAME}: no container port {name} {number}")
        address = data.get(variable, "")
        problems.check(
            address == f"0.0.0.0:{number}", f"{variable} is {address!r}, not 0.0.0.0:{number} (port {name})"
        )
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    problems.check(annotations.get("prometheus.io/scrape") == "true", "no prometheus.io/scrape annotation")
    problems.check(annotations.get("prometheus.io/path") == "/metrics", "prometheus.io/path is not /metrics")
    problems.check(
        annotations.get("prometheus.io/port") == str(ADMIN_PORT[1]),
        f"prometheus.io/port is {annotations.get('prometheus.io/port')}, not the admin port {ADMIN_PORT[1]}",
    )
    for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
        port = container.get(probe_name, {}).get("httpGet", {}).get("port")
        problems.check(port in PUBLIC_PORT, f"Deployment/{SERVICE_NAME}: {probe_name} is not on the public port")

    secret_volumes = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
    for variable in ("DATABASE_PASSWORD_FILE", "NATS_CREDS_FILE"):
        path = data.get(variable, "")
        mounted = any(
            m["name"] in secret_volumes and path.startswith(m["mountPath"].rstrip("/") + "/")
            for m in container.get("volumeMounts", [])
        )
        problems.check(mounted, f"{variable} {path!r} is not in a mounted Secret")
    check_cache_budget(problems, data, container)
    check_database_url(problems, data.get("DATABASE_URL", ""), docs)
    check_nats(problems, data, docs)


def parse_bytes(text):
    match = re.fullmatch(r"\s*(\d+)\s*(KiB|MiB|GiB|Ki|Mi|Gi)?\s*", text)
    if not match:
        return None
    unit = {None: 1, "KiB": 1 << 10, "Ki": 1 << 10, "MiB": 1 << 20, "Mi": 1 << 20, "GiB": 1 << 30, "Gi": 1 << 30}
    return int(match.group(1)) * unit[match.group(2)]


def check_cache_budget(problems, data, container):
    """The cache budget fits the memory limit: resident is about 1.25 x budget + 64 MiB."""
    budget = parse_bytes(data.get("CACHE_MAX_BYTES", "0"))
    limit = parse_bytes(str(container.get("resources", {}).get("limits", {}).get("memory", "")))
    if not problems.check(budget, f"CACHE_MAX_BYTES {data.get('CACHE_MAX_BYTES')!r}: want a budget (bytes, KiB/MiB/GiB)"):
        return
    if not problems.check(limit, "the order service's memory limit is not in bytes, Ki, Mi or Gi"):
        return
    resident = CACHE_RSS_FACTOR * budget + CACHE_RSS_BASE
    problems.check(
        resident <= limit,
        f"CACHE_MAX_BYTES {budget >> 20} MiB: about {resident / (1 << 20):.0f} MiB resident, over the {limit >> 20} MiB limit",
    )
    problems.check(data.get("CACHE_LOADERS") == "2", f"CACHE_LOADERS is {data.get('CACHE_LOADERS')!r}, not \"2\"")


def service_config_map(docs, container):
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            return find(docs, "ConfigMap", source["configMapRef"]["name"])
    return None


def check_database_url(problems, url, docs):
    parts = urlsplit(url)
    problems.check(parts.password is None, "DATABASE_URL carries a password: use the Secret (DATABASE_PASSWORD_FILE)")
    postgres = find(docs, "StatefulSet", "postgres")
    if postgres is None:
        return  # an external (managed) PostgreSQL
    service = find(docs, "Service", parts.hostname)
    problems.check(service is not None, f"DATABASE_URL host {parts.hostname} is no Service here")
    env = {e["name"]: e.get("value") for e in postgres["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    problems.check(parts.path.lstrip("/") == env.get("POSTGRES_DB"), "DATABASE_URL database != POSTGRES_DB")
    problems.check(parts.username == env.get("POSTGRES_USER"), "DATABASE_URL user != POSTGRES_USER")


def check_nats(problems, data, docs):
    nats = find(docs, "StatefulSet", "nats")
    if not problems.check(nats is not None, "no StatefulSet/nats"):
        return
    replicas = nats["spec"].get("replicas", 1)
    governing = nats["spec"]["serviceName"]
    urls = [u.strip() for u in data.get("NATS_URL", "").split(",") if u.strip()]
    expected = {f"{nats['metadata']['name']}-{i}.{governing}" for i in range(replicas)}
    hosts = {urlsplit(u).hostname for u in urls}
    problems.check(hosts == expected, f"NATS_URL hosts {sorted(hosts)} != the servers {sorted(expected)}")
    problems.check(all(urlsplit(u).port == 4222 for u in urls), "NATS_URL: a port is not 4222")
    stream_replicas = int(data.get("NATS_REPLICAS", "1"))
    problems.check(
        stream_replicas == replicas == 3, f"NATS_REPLICAS {stream_replicas}, NATS servers {replicas}: want 3/3"
    )

    problems.check(all(urlsplit(u).password is None for u in urls), "NATS_URL carries a password: use NATS_CREDS_FILE")
    nats_config = find(docs, "ConfigMap", "nats-config")
    if problems.check(nats_config is not None, "no ConfigMap/nats-config"):
        text = nats_config["data"]["nats.conf"]
        check_nats_auth(problems, text, nats)
        for i in range(replicas):
            problems.check(f"nats-{i}.{governing}:6222" in text, f"nats.conf: no route to nats-{i}.{governing}")
        payload = re.search(r"^\s*max_payload:\s*(\d+)\s*$", text, re.M)
        if problems.check(payload is not None, "nats.conf: max_payload is not a plain number of bytes"):
            limit = int(data.get("MAX_MESSAGE_BYTES", "1048576"))
            problems.check(limit <= int(payload.group(1)), "MAX_MESSAGE_BYTES is over the servers' max_payload")


def check_nats_auth(problems, text, nats):
    """nats.conf includes an auth file, and that file is in a mounted Secret of the servers."""
    include = re.search(r'^\s*include\s+"?([^"\s]+)"?\s*$', text, re.M)
    if not problems.check(include is not None, "nats.conf: no include of an auth file (NATS without authentication)"):
        return
    pod = nats["spec"]["template"]["spec"]
    container = pod["containers"][0]
    command = container.get("command", []) + container.get("args", [])
    config_path = next((command[i + 1] for i, w in enumerate(command[:-1]) if w in ("--config", "-c")), None)
    if not problems.check(config_path, "StatefulSet/nats: no --config in its command"):
        return
    auth_path = os.path.normpath(os.path.join(os.path.dirname(config_path), include.group(1)))
    secret_volumes = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
    holder = next(
        (
            secret_volumes[m["name"]]
            for m in container.get("volumeMounts", [])
            if m["name"] in secret_volumes and auth_path.startswith(m["mountPath"].rstrip("/") + "/")
        ),
        None,
    )
    problems.check(holder is not None, f"nats.conf includes {auth_path}, which no mounted Secret holds")


# --- NetworkPolicies ---------------------------------------------------------------


def pod_labels(workload):
    return workload["spec"]["template"]["metadata"].get("labels", {})


def selects(selector, labels):
    """A label selector (matchLabels only; matchExpressions are refused) against labels."""
    if "matchExpressions" in selector:
        raise KeyError("matchExpressions in a NetworkPolicy selector: this check reads matchLabels only")
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def port_names(workload):
    ports = {}
    for container in workload["spec"]["template"]["spec"]["containers"]:
        for port in container.get("ports", []):
            ports[port.get("name")] = port["containerPort"]
            ports[port["containerPort"]] = port["containerPort"]
    return ports


def describe_peer(peer):
    if "ipBlock" in peer:
        return f"ipBlock {peer['ipBlock'].get('cidr')}"
    parts = []
    if "namespaceSelector" in peer:
        parts.append(f"namespaces {peer['namespaceSelector'].get('matchLabels', 'all')}")
    if "podSelector" in peer:
        parts.append(f"pods {peer['podSelector'].get('matchLabels', 'all')}")
    return " ".join(parts)


def allowed(policy, workload):
    """{container port number: [peer descriptions]} that the policy admits to workload's pods;
    "anyone" for a rule without `from`. A rule without ports admits every port."""
    ports = port_names(workload)
    result = {}
    for rule in policy["spec"].get("ingress", []):
        peers = [describe_peer(p) for p in rule["from"]] if "from" in rule else ["anyone"]
        rule_ports = [ports.get(p.get("port"), p.get("port")) for p in rule.get("ports", [])] or ["every port"]
        for port in rule_ports:
            result.setdefault(port, []).extend(peers)
    return result


# The policies the manifests claim: which workload each protects, and, per port, exactly
# which peers may reach it. An extra or missing rule, peer or port fails.
POLICY_CLAIMS = {
    "postgres": {"postgres": [f"pods {{'app.kubernetes.io/name': '{SERVICE_NAME}'}}"]},
    "nats": {
        "client": [
            f"pods {{'app.kubernetes.io/name': '{SERVICE_NAME}'}}",
            "pods {'orders/nats-publisher': 'true'}",
        ],
        "cluster": ["pods {'app.kubernetes.io/name': 'nats'}"],
        "monitor": [f"namespaces {{'kubernetes.io/metadata.name': '{MONITORING_NAMESPACE}'}}"],
    },
    SERVICE_NAME: {
        PUBLIC_PORT[0]: ["anyone"],
        ADMIN_PORT[0]: [f"namespaces {{'kubernetes.io/metadata.name': '{MONITORING_NAMESPACE}'}}"],
    },
}


def check_policies():
    problems = Problems()
    docs = [doc for _, doc in listed_resources()]
    workloads = {w["metadata"]["name"]: w for w in docs if w.get("kind") in ("Deployment", "StatefulSet")}
    policies = {p["metadata"]["name"]: p for p in docs if p.get("kind") == "NetworkPolicy"}
    # A workload dropped from the kustomization (a managed PostgreSQL) needs no policy.
    for name in sorted(set(POLICY_CLAIMS) - set(policies)):
        problems.check(name not in workloads, f"no NetworkPolicy/{name}")
    for name in sorted(set(policies) - set(POLICY_CLAIMS)):
        problems.add(f"NetworkPolicy/{name} is not one this check knows: add its claim to POLICY_CLAIMS")
    for name, claim in POLICY_CLAIMS.items():
        policy, workload = policies.get(name), workloads.get(name)
        if policy is None or not problems.check(workload is not None, f"NetworkPolicy/{name}: no workload {name}"):
            continue
        where = f"NetworkPolicy/{name}"
        spec = policy["spec"]
        selected = [w for w, d in workloads.items() if selects(spec["podSelector"], pod_labels(d))]
        problems.check(selected == [name], f"{where} selects {selected}, not just {name}'s pods")
        problems.check(spec.get("policyTypes") == ["Ingress"], f"{where}: policyTypes is not [Ingress]")
        ports = port_names(workload)
        got = allowed(policy, workload)
        want = {ports.get(port, port): sorted(peers) for port, peers in claim.items()}
        problems.check(
            {port: sorted(peers) for port, peers in got.items()} == want,
            f"{where} admits {got}, not {want}",
        )
        # Every named pod peer must select a workload here, or the rule is a typo.
        for rule in spec.get("ingress", []):
            for peer in rule.get("from", []):
                labels = peer.get("podSelector", {}).get("matchLabels")
                if labels and "namespaceSelector" not in peer and not any(k.startswith("orders/") for k in labels):
                    problems.check(
                        any(selects(peer["podSelector"], pod_labels(w)) for w in workloads.values()),
                        f"{where}: peer {labels} selects no workload",
                    )
    # Contract C4: the Service exposes only the public port.
    service = find(docs, "Service", SERVICE_NAME)
    if problems.check(service is not None, f"no Service/{SERVICE_NAME}"):
        targets = [p.get("targetPort", p["port"]) for p in service["spec"].get("ports", [])]
        problems.check(
            targets in ([PUBLIC_PORT[0]], [PUBLIC_PORT[1]]),
            f"Service/{SERVICE_NAME} targets {targets}: only the public port ({PUBLIC_PORT[0]}) may be exposed",
        )
    problems.finish(
        f"{len(policies)} NetworkPolicies admit exactly what they claim; Service/{SERVICE_NAME} exposes only {PUBLIC_PORT[0]}"
    )


# --- the Grafana dashboard ---------------------------------------------------------


DASHBOARD_PANELS = {
    "ingest rate": ("orders_stored_total",),
    "rejections by kind": ("rejected_total",),
    "cache size": ("cache_bytes",),
    "hit ratio": ("cache_hits_total", "cache_misses_total"),
    "HTTP rate by route and status": ("http_requests_total",),
    "latency p50 and p99": ("http_request_duration_seconds_bucket",),
    "readiness per replica": ("ready",),
}


def check_dashboard():
    problems = Problems()
    generated = [d for d in generated_config_maps() if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    if not problems.check(len(generated) == 1, f"{len(generated)} generated ConfigMaps labelled grafana_dashboard: \"1\", want 1"):
        problems.finish("")
    (key, text), = generated[0]["data"].items()
    copies = [
        d["metadata"]["name"]
        for source, d in listed_resources()
        if source != "configMapGenerator"
        and d.get("kind") == "ConfigMap"
        and "grafana_dashboard" in d.get("metadata", {}).get("labels", {})
    ]
    problems.check(not copies, f"dashboard ConfigMaps written by hand as well: {copies} (one copy: the generator)")
    dashboard = json.loads(text)
    path = next(os.path.join(KUBE, f) for e in kustomization()["configMapGenerator"] for f in e.get("files", []) if f.endswith(key))
    output = subprocess.run([sys.executable, DASHBOARD_METRICS, path], capture_output=True, text=True, check=False)
    if not problems.check(output.returncode == 0, f"{DASHBOARD_METRICS}: {output.stderr.strip()}"):
        problems.finish("")
    names = output.stdout.split()
    known = {f"order_service_{m}" for m in METRICS} | {
        f"order_service_{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
    }
    for name in names:
        problems.check(name in known, f"the dashboard queries {name}, which is not a contract (C2) metric")
    exprs = {}
    for panel in dashboard.get("panels", []):
        exprs[panel.get("title", "")] = " ".join(t.get("expr", "") for t in panel.get("targets", []))
    for want, metrics in DASHBOARD_PANELS.items():
        hit = [t for t, e in exprs.items() if all(f"order_service_{m}" in e for m in metrics)]
        problems.check(hit, f"no panel for {want} (querying {', '.join(metrics)})")
    latency = " ".join(e for e in exprs.values() if "http_request_duration_seconds_bucket" in e)
    for quantile in ("0.5", "0.99"):
        problems.check(f"histogram_quantile({quantile}," in latency, f"no latency p{quantile[2:] or 50} from the histogram")
    problems.check(len({p.get("id") for p in dashboard.get("panels", [])}) == len(dashboard.get("panels", [])), "panel ids repeat")
    problems.finish(
        f"{key}: {len(dashboard.get('panels', []))} panels, {len(names)} metric names, all contract names; "
        f"one ConfigMap ({generated[0]['metadata']['name']}) generated from it"
    )


# --- docker-compose.yml ------------------------------------------------------------


def dockerfile_instructions():
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    with open(DOCKERFILE, encoding="utf-8") as handle:
        text = re.sub(r"\\\n\s*", " ", "".join(line for line in handle if not line.lstrip().startswith("#")))
    return [tuple(line.strip().split(None, 1)) for line in text.splitlines() if line.strip()]


def dockerfile_stages():
    stages = {}
    current = None
    for instruction in dockerfile_instructions():
        if instruction[0].upper() == "FROM":
            match = re.search(r"\s+AS\s+(\S+)", instruction[1], re.I)
            current = match.group(1) if match else None
            stages.setdefault(current, [])
        elif current is not None:
            stages[current].append(instruction)
    return stages


def check_compose():
    problems = Problems()
    compose = load_documents(COMPOSE)[0]
    top = {k for k in compose if not k.startswith("x-")}
    problems.check(not top - COMPOSE_TOP_KEYS, f"unknown top-level keys: {sorted(top - COMPOSE_TOP_KEYS)}")
    services = compose.get("services", {})
    volumes = set(compose.get("volumes") or {})
    stages = dockerfile_stages()
    for name, service in services.items():
        problems.check(isinstance(service, dict), f"{name}: not a mapping")
        problems.check("image" in service or "build" in service, f"{name}: neither image nor build")
        build = service.get("build")
        if isinstance(build, dict) and build.get("target"):
            problems.check(build["target"] in stages, f"{name}: build target {build['target']} is no Dockerfile stage")
        depends = service.get("depends_on", {})
        for dependency in depends if isinstance(depends, (list, dict)) else []:
            problems.check(dependency in services, f"{name}: depends_on unknown service {dependency}")
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount.get("source", "")
            if source and not source.startswith((".", "/", "~")):
                problems.check(source in volumes, f"{name}: volume {source} is not declared")
        for port in service.get("ports", []):
            problems.check(
                isinstance(port, dict) or re.fullmatch(r"(\d+\.\d+\.\d+\.\d+:)?[\d-]+:\d+(/(tcp|udp))?", str(port)),
                f"{name}: malformed port {port}",
            )
    wanted = {"postgres", "nats", SERVICE_NAME, "pusher"}
    problems.check(wanted <= set(services), f"missing services: {sorted(wanted - set(services))}")
    service = services.get(SERVICE_NAME, {})
    problems.check(service.get("deploy", {}).get("replicas", 1) == 2, f"{SERVICE_NAME}: not 2 replicas")
    problems.check(
        any(re.search(r"(^|:)8080(-\d+)?:\d+", str(p)) for p in service.get("ports", [])),
        f"{SERVICE_NAME}: host port 8080 not published",
    )
    pusher = services.get("pusher", {})
    problems.check(pusher.get("command") == ["--interval", "20s"], "pusher: command is not --interval 20s")
    nats = services.get("nats", {})
    problems.check("--jetstream" in nats.get("command", []) or "-js" in nats.get("command", []), "nats: no JetStream")
    problems.check(
        services.get("postgres", {}).get("environment", {}).get("POSTGRES_DB") == "orders", "postgres: POSTGRES_DB"
    )
    problems.finish(f"{len(services)} services ({', '.join(services)}); build targets are Dockerfile stages")


# --- environment variable names ------------------------------------------------------


def known_env_names():
    """The names the service knows: from its --help when built, else the contract."""
    if os.access(SERVICE_BINARY, os.X_OK):
        try:
            output = subprocess.run(
                [SERVICE_BINARY, "--help"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.TimeoutExpired) as error:
            output = ""
            print(f"note: {SERVICE_BINARY} --help failed ({error})")
        names = set(re.findall(r"\[env:\s*([A-Z][A-Z0-9_]*)", output))
        if names:
            return names, f"{SERVICE_BINARY} --help"
        print(f"note: {SERVICE_BINARY} --help lists no [env: ...]; using the contract's list")
    return FALLBACK_ENV_NAMES, "the contract's list (service not built)"


def env_names(environment):
    if isinstance(environment, dict):
        return set(environment)
    return {entry.split("=", 1)[0] for entry in environment or []}


def check_env_names():
    problems = Problems()
    known, origin = known_env_names()
    used = {}  # name -> where

    compose = load_documents(COMPOSE)[0]
    for name, service in compose.get("services", {}).items():
        build = service.get("build", {})
        is_service = (isinstance(build, dict) and build.get("target") == RUNTIME_STAGE) or str(
            service.get("image", "")
        ).startswith(SERVICE_NAME)
        if is_service:
            for var in env_names(service.get("environment")):
                used.setdefault(var, []).append(f"{COMPOSE} {name}")

    docs = [doc for _, doc in listed_resources()]
    deployment = find(docs, "Deployment", SERVICE_NAME)
    if problems.check(deployment is not None, f"no Deployment/{SERVICE_NAME}"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for entry in container.get("env", []):
                used.setdefault(entry["name"], []).append(f"Deployment/{SERVICE_NAME}")
            config = service_config_map(docs, container)
            for var in (config or {}).get("data", {}):
                used.setdefault(var, []).append(f"ConfigMap/{config['metadata']['name']}")

    for instruction, arguments in dockerfile_stages().get(RUNTIME_STAGE, []):
        if instruction.upper() == "ENV":
            for var in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", arguments):
                used.setdefault(var, []).append(f"{DOCKERFILE} stage {RUNTIME_STAGE}")

    pending = sorted((set(used) - known) & CONTRACT_ENV_NAMES)
    for var in sorted(set(used) - known - CONTRACT_ENV_NAMES):
        problems.add(
            f"{var} (set in {', '.join(sorted(set(used[var])))}) is not a setting of the service (names from {origin})"
        )
    note = f"; contract names this build does not know yet: {', '.join(pending)}" if pending else ""
    problems.finish(f"{len(used)} names set, all known to the service (names from {origin}){note}")


# --- Dockerfile: the dependency layer -----------------------------------------------


def cargo_targets(manifest):
    """The source files a manifest names for its targets (lib, bins, ...)."""
    with open(manifest, "rb") as handle:
        data = tomllib.load(handle)
    base = os.path.dirname(manifest)
    named = [data["lib"]] if "lib" in data else []
    for kind in ("bin", "test", "bench", "example"):
        named.extend(data.get(kind, []))
    return [os.path.normpath(os.path.join(base, t["path"])) for t in named if "path" in t]


def check_docker_deps():
    """The build stage's first layer compiles the dependencies from the manifests
    alone, with placeholder sources: every target path a copied manifest names
    must be among the placeholders, or cargo stops before it builds anything."""
    problems = Problems()
    build = dockerfile_stages().get("build", [])
    manifests, created, layer = [], set(), None
    for instruction, arguments in build:
        if instruction.upper() == "COPY":
            sources = shlex.split(arguments)[:-1]
            manifests.extend(s for s in sources if s.endswith("Cargo.toml"))
        elif instruction.upper() == "RUN" and "cargo build" in arguments:
            layer = arguments
            break
    if not problems.check(layer is not None, "no RUN with cargo build in the build stage"):
        problems.finish("")
    for command in layer.split("&&"):
        words = shlex.split(command.replace(">", " > "))
        if words and words[0] == "touch":
            created.update(os.path.normpath(w) for w in words[1:])
        if ">" in words:
            created.add(os.path.normpath(words[words.index(">") + 1]))
    named = [(m, path) for m in manifests for path in cargo_targets(m)]
    for manifest, path in named:
        problems.check(path in created, f"{manifest} names {path}, which the dependency layer does not create")
    problems.finish(
        f"{len(manifests)} manifests copied; the {len(named)} target paths they name are created "
        f"before the dependency build ({', '.join(sorted(created))})"
    )


CHECKS = {
    "kustomization": check_kustomization,
    "kube-refs": check_kube_refs,
    "policies": check_policies,
    "dashboard": check_dashboard,
    "compose": check_compose,
    "env-names": check_env_names,
    "docker-deps": check_docker_deps,
}

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "generated":
        write_generated(sys.argv[2])
        sys.exit(0)
    if len(sys.argv) != 2 or sys.argv[1] not in CHECKS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(CHECKS)}}}")
    try:
        CHECKS[sys.argv[1]]()
    except (OSError, yaml.YAMLError, json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as error:
        # A file that cannot be read or lacks a required part: say which, briefly.
        print(f"  - {type(error).__name__}: {error}")
        sys.exit(1)
