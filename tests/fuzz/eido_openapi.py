"""Writes the OpenAPI document of intake's two EIDO HTTP endpoints, for schemathesis.

NENA's own document (shared/eido/openapi.yaml) describes only GET /EIDO/{IncidentId} and
refers to NIEM files it does not ship, so schemathesis cannot load it as is. This takes its
components/schemas unchanged except for the two conversions the Rust schema test makes too
(services/intake/tests/eido.rs): $refs to files NENA does not ship become unconstrained, and
`minItems: 1,` (a string in YAML) becomes 1. It then describes Relay's two operations over
NENA's EmergencyIncidentDataObjectType.

Usage: python eido_openapi.py path/to/shared/eido/openapi.yaml out.json
"""

import json
import sys

import yaml


def convert(value):
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return {}
        out = {key: convert(child) for key, child in value.items()}
        if isinstance(out.get("minItems"), str):
            out["minItems"] = int(out["minItems"].rstrip(",").strip())
        return out
    if isinstance(value, list):
        return [convert(item) for item in value]
    return value


def error(description):
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RelayError"}}},
    }


def main(source, target):
    with open(source, encoding="utf-8") as f:
        nena = yaml.safe_load(f)
    schemas = convert(nena["components"]["schemas"])
    schemas["RelayError"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "reason", "message", "fieldViolations"],
                "properties": {
                    "code": {"type": "string"},
                    "reason": {"type": "string"},
                    "domain": {"type": "string"},
                    "message": {"type": "string"},
                    "fieldViolations": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["field", "description"],
                            "properties": {
                                "field": {"type": "string"},
                                "description": {"type": "string"},
                            },
                        },
                    },
                },
            }
        },
    }
    schemas["RelaySubmitted"] = {
        "type": "object",
        "required": ["incidentId", "created", "location"],
        "properties": {
            "incidentId": {"type": "string"},
            "created": {"type": "boolean"},
            "location": {"type": "string"},
        },
    }
    eido = {"$ref": "#/components/schemas/EmergencyIncidentDataObjectType"}
    document = {
        "openapi": "3.0.2",
        "info": {
            "title": "Relay intake: NENA EIDO over HTTP",
            "version": "1",
            "description": "POST an EIDO; GET one back (NENA's dereference operation).",
        },
        "paths": {
            "/EIDO": {
                "post": {
                    "operationId": "SubmitEIDO",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": eido}},
                    },
                    "responses": {
                        "201": {
                            "description": "Created",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RelaySubmitted"}}},
                        },
                        "200": {
                            "description": "Already accepted (same URN and issuer)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RelaySubmitted"}}},
                        },
                        "400": error("The EIDO is refused; each violation names a JSON path"),
                        "413": {"description": "Larger than 1 MiB"},
                    },
                }
            },
            "/EIDO/{IncidentId}": {
                "get": {
                    "operationId": "GetEIDO",
                    "parameters": [
                        {
                            "name": "IncidentId",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "OK", "content": {"application/json": {"schema": eido}}},
                        "400": error("Malformed incident id"),
                        "404": error("No incident has this id"),
                    },
                }
            },
        },
        "components": {"schemas": schemas},
    }
    with open(target, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
