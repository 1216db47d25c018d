#!/usr/bin/env python3
"""Validates Istio mesh config snippets (the ext_authz extension providers) offline.

Each FILE is checked against schemas/istio-mesh-config.schema.json, a JSON Schema
written for this repository from the field names and types of Istio's
mesh/v1alpha1/config.proto (protobuf's JSON mapping): no field it does not name,
durations as protobuf reads them ("0.5s", never "500ms"), ports, status codes;
and no two providers sharing a name. Istio's own validation of the mesh config
(istiod's) is not run.

Needs PyYAML and jsonschema (both come with kubernetes-validate). Exit 0 when
everything validates, 1 otherwise.
"""

import argparse
import json
import pathlib
import sys

import jsonschema
import yaml

SCHEMA = pathlib.Path(__file__).resolve().parent / "schemas" / "istio-mesh-config.schema.json"


def field(error):
    """`a.b[0].c`, as validate-crds.mjs names fields."""
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def validate(path, validator):
    try:
        snippet = yaml.safe_load(pathlib.Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        print(f"FAIL {path}: {error}")
        return 1
    errors = []
    for error in sorted(validator.iter_errors(snippet), key=lambda e: list(map(str, e.absolute_path))):
        errors.append(f"{field(error)}: {error.message}")
    providers = []
    if not errors:
        providers = [p["name"] for p in snippet["meshConfig"]["extensionProviders"]]
        if len(providers) != len(set(providers)):
            errors.append("meshConfig.extensionProviders: two providers share a name")
    if errors:
        print(f"FAIL {path}: mesh config [{SCHEMA.name}]")
        for error in errors:
            print(f"       {error}")
        return 1
    print(f"ok   {path}: mesh config, providers {', '.join(providers)} [{SCHEMA.name}]")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", metavar="FILE", help="mesh config snippets")
    args = parser.parse_args()
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft4Validator.check_schema(schema)
    validator = jsonschema.Draft4Validator(schema)
    rc = 0
    for path in args.files:
        rc |= validate(path, validator)
    return rc


if __name__ == "__main__":
    sys.exit(main())
