"""Checks an OpenTelemetry Collector configuration offline.

The collector itself cannot be installed from the package registries this
project may use (Debian, PyPI, npm, crates.io), so its own `otelcol
validate` cannot run here. This is the schema check instead:

- a JSON Schema (2020-12, `otel_collector.schema.json`) of the config's
  shape, and of each component taphook's example uses (the `otlp` receiver,
  `memory_limiter`, `batch`, the `otlp`, `otlphttp` and `debug` exporters),
  strict (an unknown key is an error, as the collector's own decoding
  makes it), validated with the `jsonschema` package;
- what a schema cannot say: every component a pipeline names is defined,
  `memory_limiter` comes first among a pipeline's processors (the
  collector's advice), and a traces pipeline takes OTLP on the ports taphook
  is told to export to (4317 for grpc, 4318 for http/protobuf).

Usage: otel_collector.py CONFIG. Exit 1 with the problems on stderr.
"""

import json
import pathlib
import re
import sys

import jsonschema
import yaml

SCHEMA = pathlib.Path(__file__).with_name("otel_collector.schema.json")
SECTIONS = ("receivers", "processors", "exporters", "connectors", "extensions")
PORTS = {"grpc": 4317, "http": 4318}


def component_type(component_id):
    return component_id.split("/", 1)[0]


def references(config):
    """Problems a schema cannot see: the pipelines' references."""
    problems = []
    defined = {s: set((config.get(s) or {}).keys()) for s in SECTIONS}
    service = config.get("service") or {}
    for ext in service.get("extensions") or []:
        if ext not in defined["extensions"]:
            problems.append(f"service.extensions: `{ext}` is not defined under extensions")
    pipelines = service.get("pipelines") or {}
    for name, pipeline in pipelines.items():
        for role, section in (("receivers", "receivers"), ("processors", "processors"), ("exporters", "exporters")):
            for ref in pipeline.get(role) or []:
                if ref not in defined[section] and ref not in defined["connectors"]:
                    problems.append(
                        f"service.pipelines.{name}.{role}: `{ref}` is not defined under {section}"
                    )
        processors = pipeline.get("processors") or []
        limiters = [i for i, p in enumerate(processors) if component_type(p) == "memory_limiter"]
        if limiters and limiters[0] != 0:
            problems.append(
                f"service.pipelines.{name}.processors: memory_limiter must come first"
            )
    traces = [p for n, p in pipelines.items() if component_type(n) == "traces"]
    if not traces:
        problems.append("service.pipelines: no traces pipeline")
    for pipeline in traces:
        otlp = [r for r in pipeline.get("receivers") or [] if component_type(r) == "otlp"]
        if not otlp:
            problems.append("the traces pipeline has no otlp receiver: taphook exports OTLP")
        for r in otlp:
            protocols = ((config.get("receivers") or {}).get(r) or {}).get("protocols") or {}
            for proto, port in PORTS.items():
                endpoint = (protocols.get(proto) or {}).get("endpoint", "")
                if not re.search(rf":{port}$", endpoint or ""):
                    problems.append(
                        f"receivers.{r}.protocols.{proto}.endpoint: `{endpoint}` is not on port {port}, "
                        "where taphook's examples export"
                    )
    return problems


def main(path):
    try:
        config = yaml.safe_load(pathlib.Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        print(f"{path}: cannot read: {e}", file=sys.stderr)
        return 1
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
        for e in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if not problems:
        problems = references(config)
    for p in problems:
        print(f"{path}: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"ok    OpenTelemetry Collector config (schema and references): {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
