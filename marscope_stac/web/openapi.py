"""The web map's API described by OpenAPI 3.1 (served at ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any

__all__ = ["OPENAPI"]

_ERROR = {"$ref": "#/components/schemas/Error"}
_PRODUCT = {"name": "product", "in": "path", "required": True, "schema": {"type": "string"}}
_ANSWER = {"name": "answer", "in": "path", "required": True, "schema": {"type": "string"}}
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "MarScope-STAC web map",
        "version": "1",
        "description": "Ask a planet in plain language; answers are published STAC items.",
    },
    "paths": {
        "/api/config": {
            "get": {
                "summary": "What the page needs before the first query (body, extent, basemap)",
                "responses": {"200": {"description": "the configuration"}},
            }
        },
        "/api/queries": {
            "get": {
                "summary": "The published query products, newest first",
                "responses": {"200": {"description": "product records with their STAC items"}},
            }
        },
        "/api/products/{product}/detections.{fmt}": {
            "get": {
                "summary": "A product's detections as GeoJSON (body CRS) or CSV, all or in a box",
                "parameters": [
                    {
                        "name": "product",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "fmt",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": ["geojson", "csv"]},
                    },
                    {
                        "name": "bbox",
                        "in": "query",
                        "description": "west,south,east,north in degrees on the body",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {"description": "the detections"},
                    "400": {"description": "a malformed bbox"},
                    "404": {"description": "no such product"},
                },
            }
        },
        "/api/cells": {
            "get": {
                "summary": "Centres of the embedded cells in a box (box selection of examples)",
                "parameters": [
                    {
                        "name": "bbox",
                        "in": "query",
                        "required": True,
                        "description": "west,south,east,north in degrees on the body",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {"description": "{centres: [[lon, lat], ...]}"},
                    "400": {"description": "no or a malformed bbox, or more than 1,000 cells"},
                },
            }
        },
        "/api/cells/image": {
            "get": {
                "summary": "The tile the model saw of the embedded cell at lon, lat (PNG)",
                "parameters": [
                    {"name": k, "in": "query", "required": True, "schema": {"type": "number"}}
                    for k in ("lon", "lat")
                ],
                "responses": {
                    "200": {"description": "a 96 x 96 PNG", "content": {"image/png": {}}},
                    "400": {"description": "lon or lat missing or not numbers"},
                    "404": {"description": "not an embedded cell, or no source raster here"},
                },
            }
        },
        "/api/products/{product}": {
            "delete": {
                "summary": "Remove a published query product (its files and catalog link)",
                "parameters": [
                    {
                        "name": "product",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {"description": "the product and the files deleted"},
                    "404": {"description": "no such product"},
                    "409": {"description": "another product is derived from it"},
                },
            }
        },
        "/api/answers/{answer}": {
            "get": {
                "summary": "The product of a live answer, once its files are written (waits)",
                "parameters": [_ANSWER],
                "responses": {
                    "200": {"description": "the published product's record"},
                    "404": {"description": "no such answer or product"},
                    "500": {"description": "its files could not be written, and why"},
                },
            }
        },
        **{
            f"/api/answers/{{answer}}/{layer}/{{z}}/{{x}}/{{y}}.{ext}": {
                "get": {
                    "summary": f"A tile of a live answer's {what}, made from it in memory",
                    "parameters": [_ANSWER]
                    + [
                        {"name": k, "in": "path", "required": True, "schema": {"type": "integer"}}
                        for k in "zxy"
                    ],
                    "responses": {
                        "200": {"description": f"the tile its archive holds ({media})"},
                        "204": {"description": "its archive has no such tile"},
                        "404": {"description": "the answer is no longer held"},
                    },
                }
            }
            for layer, ext, what, media in (
                ("probability", "png", "probability", "palette PNG"),
                ("detections", "mvt", "detections", "gzip Mapbox Vector Tile"),
            )
        },
        "/api/query": {
            "post": {
                "summary": "Ask: texts, examples, classes or a composite; publishes products",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Query"}}
                    },
                },
                "responses": {
                    "200": {"description": "the published products"},
                    **{
                        str(code): {
                            "description": what,
                            "content": {"application/json": {"schema": _ERROR}},
                        }
                        for code, what in (
                            (400, "a request the engine cannot answer, and why"),
                            (403, "not from this server's page (Host, Origin, JSON)"),
                            (408, "the body did not arrive in time"),
                            (413, "the body is empty or larger than 64 KB"),
                            (503, "the server has no embedding set"),
                        )
                    },
                },
            }
        },
    },
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            },
            "Query": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "texts": {"type": "array", "items": {"type": "string"}, "maxItems": 16},
                    "classify": {"type": "boolean"},
                    "live": {
                        "type": "boolean",
                        "description": "answer with tile URLs now; files written after",
                    },
                    "points": {"$ref": "#/components/schemas/Points"},
                    "negative_points": {"$ref": "#/components/schemas/Points"},
                    "threshold": {"type": "number", "minimum": 0, "maximum": 1},
                    "image_weight": {"type": "number", "minimum": 0, "maximum": 1},
                    "and_not": {"type": "string"},
                    "near": {"type": "string"},
                    "within_km": {"type": "number", "exclusiveMinimum": 0},
                    "products": {"type": "array", "items": {"type": "string"}},
                    "learner": {"enum": ["prototype", "classifier"]},
                },
            },
            "Points": {
                "type": "array",
                "description": "[lon, lat] pairs in degrees on the body",
                "items": {
                    "type": "array",
                    "items": {"type": "number"},
                    "minItems": 2,
                    "maxItems": 2,
                },
            },
        }
    },
}
"""The JSON API's OpenAPI description (served at ``/api/openapi.json``)."""
