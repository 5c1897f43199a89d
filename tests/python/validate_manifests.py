"""Validates rendered manifests offline (run by tests/manifests.rs).

Usage: validate_manifests.py [--kubernetes-version 1.33] FILE...

Each FILE is a YAML stream, such as `kubectl kustomize` output. Every object is checked:

- Kubernetes' own kinds, CustomResourceDefinitions included, against the JSON schemas that the
  kubernetes-validate package ships for the requested Kubernetes version, in strict mode: an
  unknown field is an error, as `kubectl apply` (server-side field validation Strict) would
  refuse it.
- Custom resources of a CRD found in the input, against that CRD's openAPIV3Schema, read the
  way the API server reads it (nullable, x-kubernetes-int-or-string,
  x-kubernetes-preserve-unknown-fields; unknown fields refused).
- Prometheus Operator kinds (PodMonitor, ServiceMonitor, PrometheusRule): kubernetes-validate
  has no schema for them and their CRDs are not part of this repository, so they get a
  structural check of the fields relaunch uses (selectors, endpoints, rule groups; every rule an
  alert or a record with an expression; durations; string labels and annotations).
- Grafana dashboards (ConfigMaps labelled grafana_dashboard): every value is dashboard JSON
  with a uid, a title and panels whose queries have an expression.

Any other kind is an error. Prints one line per object, then a summary; exits 1 when any object
is invalid and 2 when the schemas for the Kubernetes version are missing.
"""

import argparse
import copy
import json
import re
import sys

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils

PROMETHEUS_OPERATOR = "monitoring.coreos.com/v1"
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
ALERT_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RECORD_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def load(paths):
    objects = []
    for path in paths:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    objects.append((path, doc))
    return objects


def describe(obj):
    meta = obj.get("metadata") or {}
    name = meta.get("name", "<no name>")
    if meta.get("namespace"):
        name = f"{meta['namespace']}/{name}"
    return f"{obj.get('kind', '<no kind>')} {name}"


# --- custom resources of CRDs in the input ---------------------------------------------------


def api_schema(schema):
    """An openAPIV3Schema as JSON Schema, with the meaning the API server gives it."""
    schema = copy.deepcopy(schema)

    def convert(s):
        if not isinstance(s, dict):
            return s
        for key in ("properties", "patternProperties"):
            if key in s:
                s[key] = {k: convert(v) for k, v in s[key].items()}
        for key in ("items", "additionalProperties", "not"):
            if isinstance(s.get(key), dict):
                s[key] = convert(s[key])
        for key in ("allOf", "anyOf", "oneOf"):
            if key in s:
                s[key] = [convert(v) for v in s[key]]
        if s.pop("x-kubernetes-int-or-string", False):
            s.pop("type", None)
            s.setdefault("anyOf", []).extend([{"type": "integer"}, {"type": "string"}])
        preserve = s.pop("x-kubernetes-preserve-unknown-fields", False)
        if s.get("type") == "object" and "properties" in s and not preserve:
            s.setdefault("additionalProperties", False)
        if s.pop("nullable", False):
            if "type" in s:
                s["type"] = [s["type"], "null"]
            else:
                s = {"anyOf": [s, {"type": "null"}]}
        return s

    schema = convert(schema)
    # apiVersion, kind and metadata are implicit in every CRD's schema.
    properties = schema.setdefault("properties", {})
    properties.setdefault("apiVersion", {"type": "string"})
    properties.setdefault("kind", {"type": "string"})
    properties.setdefault("metadata", {"type": "object"})
    return schema


def crd_schemas(objects):
    """(apiVersion, kind) -> JSON Schema, for every served version of every CRD in the input."""
    schemas = {}
    for _, obj in objects:
        if obj.get("kind") != "CustomResourceDefinition":
            continue
        spec = obj.get("spec") or {}
        group = spec.get("group")
        kind = (spec.get("names") or {}).get("kind")
        for version in spec.get("versions") or []:
            raw = ((version.get("schema") or {}).get("openAPIV3Schema"))
            if version.get("served") is False or raw is None:
                continue
            schemas[(f"{group}/{version['name']}", kind)] = api_schema(raw)
    return schemas


def check_custom_resource(obj, schema):
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]


# --- Prometheus Operator kinds ----------------------------------------------------------------


def string_map(value, where, errors):
    if value is None:
        return
    if not isinstance(value, dict):
        errors.append(f"{where}: must be a mapping of strings")
        return
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            errors.append(f"{where}.{k}: must be a string (quote numbers and booleans)")


def label_selector(value, where, errors):
    if not isinstance(value, dict):
        errors.append(f"{where}: must be a label selector (matchLabels/matchExpressions)")
        return
    unknown = set(value) - {"matchLabels", "matchExpressions"}
    if unknown:
        errors.append(f"{where}: unknown fields {sorted(unknown)}")
    string_map(value.get("matchLabels"), f"{where}.matchLabels", errors)
    if not value.get("matchLabels") and not value.get("matchExpressions"):
        errors.append(f"{where}: selects everything; name the pods or services")


def duration(value, where, errors):
    if value is not None and not (isinstance(value, str) and DURATION.match(value)):
        errors.append(f"{where}: {value!r} is not a Prometheus duration such as 30s or 5m")


def relabelings(value, where, errors):
    if value is None:
        return
    if not isinstance(value, list):
        errors.append(f"{where}: must be a list")
        return
    for i, r in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(r, dict):
            errors.append(f"{at}: must be a mapping")
            continue
        sources = r.get("sourceLabels")
        if sources is not None and not (
            isinstance(sources, list) and all(isinstance(s, str) for s in sources)
        ):
            errors.append(f"{at}.sourceLabels: must be a list of label names")
        if r.get("action", "replace").lower() == "replace" and not r.get("targetLabel"):
            errors.append(f"{at}: a replace relabeling needs targetLabel")


def scrape_endpoints(value, where, errors):
    if not isinstance(value, list) or not value:
        errors.append(f"{where}: must be a non-empty list")
        return
    for i, e in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(e, dict):
            errors.append(f"{at}: must be a mapping")
            continue
        if not isinstance(e.get("port"), str) and e.get("targetPort") is None:
            errors.append(f"{at}: needs port (a port name) or targetPort")
        path = e.get("path", "/metrics")
        if not isinstance(path, str) or not path.startswith("/"):
            errors.append(f"{at}.path: must start with /")
        duration(e.get("interval"), f"{at}.interval", errors)
        duration(e.get("scrapeTimeout"), f"{at}.scrapeTimeout", errors)
        relabelings(e.get("relabelings"), f"{at}.relabelings", errors)
        relabelings(e.get("metricRelabelings"), f"{at}.metricRelabelings", errors)


def check_prometheus_operator(obj):
    errors = []
    kind = obj.get("kind")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return ["spec: missing"]
    if kind == "PodMonitor":
        label_selector(spec.get("selector"), "spec.selector", errors)
        scrape_endpoints(spec.get("podMetricsEndpoints"), "spec.podMetricsEndpoints", errors)
    elif kind == "ServiceMonitor":
        label_selector(spec.get("selector"), "spec.selector", errors)
        scrape_endpoints(spec.get("endpoints"), "spec.endpoints", errors)
    elif kind == "PrometheusRule":
        groups = spec.get("groups")
        if not isinstance(groups, list) or not groups:
            return ["spec.groups: must be a non-empty list"]
        names = set()
        for g, group in enumerate(groups):
            at = f"spec.groups[{g}]"
            if not isinstance(group, dict) or not group.get("name"):
                errors.append(f"{at}: needs a name")
                continue
            if group["name"] in names:
                errors.append(f"{at}: group name {group['name']!r} repeated")
            names.add(group["name"])
            duration(group.get("interval"), f"{at}.interval", errors)
            rules = group.get("rules")
            if not isinstance(rules, list) or not rules:
                errors.append(f"{at}.rules: must be a non-empty list")
                continue
            for r, rule in enumerate(rules):
                check_rule(rule, f"{at}.rules[{r}]", errors)
    else:
        errors.append(f"no structural check for kind {kind}")
    return errors


def check_rule(rule, at, errors):
    if not isinstance(rule, dict):
        errors.append(f"{at}: must be a mapping")
        return
    unknown = set(rule) - {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
    if unknown:
        errors.append(f"{at}: unknown fields {sorted(unknown)}")
    alert, record = rule.get("alert"), rule.get("record")
    if (alert is None) == (record is None):
        errors.append(f"{at}: needs exactly one of alert and record")
    if alert is not None and not (isinstance(alert, str) and ALERT_NAME.match(alert)):
        errors.append(f"{at}.alert: {alert!r} is not a valid alert name")
    if record is not None and not (isinstance(record, str) and RECORD_NAME.match(record)):
        errors.append(f"{at}.record: {record!r} is not a valid metric name")
    expr = rule.get("expr")
    if not isinstance(expr, str) or not expr.strip():
        errors.append(f"{at}.expr: must be a non-empty PromQL expression")
    elif expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}") or expr.count("[") != expr.count("]"):
        errors.append(f"{at}.expr: unbalanced brackets")
    duration(rule.get("for"), f"{at}.for", errors)
    if record is not None and ("for" in rule or "annotations" in rule):
        errors.append(f"{at}: a recording rule takes neither for nor annotations")
    string_map(rule.get("labels"), f"{at}.labels", errors)
    string_map(rule.get("annotations"), f"{at}.annotations", errors)


# --- Grafana dashboards -----------------------------------------------------------------------


def check_dashboards(obj):
    errors = []
    data = obj.get("data") or {}
    if not data:
        return ["data: no dashboard"]
    for key, text in data.items():
        try:
            dashboard = json.loads(text)
        except (TypeError, ValueError) as e:
            errors.append(f"data.{key}: not JSON: {e}")
            continue
        for field in ("uid", "title", "panels"):
            if not dashboard.get(field):
                errors.append(f"data.{key}: no {field}")
        for panel in dashboard.get("panels") or []:
            if panel.get("type") == "row":
                continue
            title = panel.get("title", "<untitled>")
            targets = panel.get("targets") or []
            if not targets:
                errors.append(f"data.{key}: panel {title!r} has no queries")
            for t in targets:
                if not str(t.get("expr", "")).strip():
                    errors.append(f"data.{key}: panel {title!r} has a query without expr")
    return errors


# --- main -------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", default="1.33")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()

    shipped = kv_utils.all_versions()
    if not any(kv_utils.major_minor(v) == args.kubernetes_version for v in shipped):
        print(
            f"FATAL kubernetes-validate {kubernetes_validate.version.__version__} has no schemas "
            f"for Kubernetes {args.kubernetes_version} (it has {', '.join(shipped)})"
        )
        return 2

    objects = load(args.files)
    crds = crd_schemas(objects)
    failed = 0
    for path, obj in objects:
        what = describe(obj)
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if not api_version or not kind or not (obj.get("metadata") or {}).get("name"):
            print(f"ERROR {path}: {what}: needs apiVersion, kind and metadata.name")
            failed += 1
            continue
        if (api_version, kind) in crds:
            how = "CRD schema"
            errors = check_custom_resource(obj, crds[(api_version, kind)])
        elif api_version == PROMETHEUS_OPERATOR:
            how = "structural check (no schema for Prometheus Operator kinds)"
            errors = check_prometheus_operator(obj)
            if not DNS_SUBDOMAIN.match(obj["metadata"]["name"]):
                errors.append("metadata.name: not a DNS subdomain")
        else:
            how = f"Kubernetes {args.kubernetes_version} schema, strict"
            try:
                kubernetes_validate.validate(obj, args.kubernetes_version, strict=True)
                errors = []
            except kubernetes_validate.ValidationError as e:
                at = ".".join(str(p) for p in e.path) or "<root>"
                errors = [f"{at}: {e.message}"]
            except kubernetes_validate.SchemaNotFoundError as e:
                errors = [f"unknown kind: {e.message}"]
            labels = (obj.get("metadata") or {}).get("labels") or {}
            if not errors and kind == "ConfigMap" and "grafana_dashboard" in labels:
                how += ", Grafana dashboard"
                errors = check_dashboards(obj)
        if errors:
            failed += 1
            for error in errors:
                print(f"ERROR {path}: {what}: {error}")
        else:
            print(f"ok {what} ({how})")
    print(f"{len(objects) - failed} valid, {failed} invalid")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
