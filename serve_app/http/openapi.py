"""The service's OpenAPI 3.1 description, built from the route table, the error types and the
inference protocol's names: served at GET /openapi.json, fuzzed by tests/test_service.py, and the
source the README's route and error tables are checked against."""

from __future__ import annotations

from serve_app import errors
from serve_app.http.handlers import Api
from serve_app.http.inference_protocol import (
    IMAGES_INPUT,
    MODEL_NAME,
    PIXELS_INPUT,
    PIXELS_SHAPE,
    PROBABILITIES_OUTPUT,
    speaks_inference_protocol,
)
from serve_app.http.routes import ENDPOINTS, Endpoint
from serve_app.http.uploads import MAX_TOP_K
from serve_app.settings import AppSettings

JSON = "application/json"


def error_types() -> list[type[errors.ServiceError]]:
    """Every client error the service answers with, in the order errors.py defines them."""
    return [kind for kind in vars(errors).values()
            if isinstance(kind, type) and issubclass(kind, errors.ServiceError) and kind is not errors.ServiceError]


def errors_by_status() -> dict[int, list[str]]:
    statuses: dict[int, list[str]] = {}
    for kind in error_types():
        statuses.setdefault(kind.status, []).append(kind.code)
    return dict(sorted(statuses.items()))


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict) -> dict:
    return {"content": {JSON: {"schema": schema}}}


def error_description(status: int, codes: list[str], protocol: bool) -> dict:
    if protocol:
        return {"description": ", ".join(codes), **json_content(ref("ProtocolError"))}
    schema = {"type": "object", "required": ["error"], "additionalProperties": False, "properties": {
        "error": {"type": "object", "required": ["code", "message"], "additionalProperties": False, "properties": {
            "code": {"type": "string", "enum": codes}, "message": {"type": "string"}}}}}
    return {"description": ", ".join(codes), **json_content(schema)}


def upload_body(max_images: int) -> dict:
    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "array", "minItems": 1, "maxItems": max_images, "description": "one part per image",
                         "items": {"type": "string", "contentMediaType": "application/octet-stream"}}}}},
            "image/*": {"schema": {"type": "string", "contentMediaType": "image/*"}},
            "application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}},
        },
    }

TOP_K = {"name": "top_k", "in": "query", "required": False, "description": "classes per image (default 3)",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K}}

SCHEMAS = {
    "Prediction": {"type": "object", "required": ["index", "label", "label_zh", "score"], "properties": {
        "index": {"type": "integer", "minimum": 0, "maximum": 999}, "label": {"type": "string"},
        "label_zh": {"type": "string"}, "score": {"type": "number", "minimum": 0, "maximum": 1}}},
    "Model": {"type": "object", "required": ["architecture", "weights", "weights_sha256", "standin", "backend", "device"],
              "properties": {"architecture": {"type": "string"}, "weights": {"type": "string"},
                             "weights_sha256": {"type": "string"}, "standin": {"type": "boolean"},
                             "backend": {"type": "string"}, "device": {"type": "string"},
                             "null_model": {"type": "boolean", "description": "present (true) only when the "
                                            "measurement-only null model answers: no inference ran"},
                             "notice": {"type": "string"}}},
    "Classification": {"type": "object", "required": ["predictions", "model"], "properties": {
        "predictions": {"type": "array", "items": ref("Prediction")}, "model": ref("Model")}},
    "Classifications": {"type": "object", "required": ["results", "model"], "properties": {
        "results": {"type": "array", "items": {"type": "object", "required": ["filename"], "properties": {
            "filename": {"type": ["string", "null"]},
            "predictions": {"type": "array", "items": ref("Prediction")},
            "error": {"type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}}}}}},
        "model": ref("Model")}},
    "Health": {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]}, "model": ref("Model"),
        "replica": {"type": "object"}, "reason": {"type": "string"},
        "ingress": {"type": "object", "description": "this ingress replica's requests, model calls and requests per call"}}},
    "Labels": {"type": "object", "required": ["count", "labels"], "properties": {
        "count": {"type": "integer"}, "labels": {"type": "array", "items": {
            "type": "object", "required": ["index", "label", "label_zh"], "properties": {
                "index": {"type": "integer"}, "label": {"type": "string"}, "label_zh": {"type": "string"}}}}}},
    "ProtocolError": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
        "name": {"type": "string"}, "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}}}},
    "Tensor": {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}, "parameters": {"type": "object"},
        "data": {"type": "array"}}},
    "ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                      "properties": {"name": {"const": MODEL_NAME}, "versions": {"type": "array"},
                                     "platform": {"type": "string"},
                                     "inputs": {"type": "array", "items": ref("Tensor")},
                                     "outputs": {"type": "array", "items": ref("Tensor")}}},
    "InferRequest": {
        "type": "object", "required": ["inputs"],
        "description": f"One input: `{IMAGES_INPUT}` (BYTES [N], base64 strings in JSON) or `{PIXELS_INPUT}` "
                       f"(UINT8 {PIXELS_SHAPE}); optionally `outputs: [{{\"name\": \"{PROBABILITIES_OUTPUT}\", "
                       "\"parameters\": {\"classification\": k}}]` for the top k as \"score:index:label\".",
        "properties": {"id": {"type": "string"}, "inputs": {"type": "array", "items": ref("Tensor")},
                       "outputs": {"type": "array", "items": {"type": "object"}}, "parameters": {"type": "object"}}},
    "InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"const": MODEL_NAME}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "outputs": {"type": "array", "items": ref("Tensor")}}},
}


def operation(endpoint: Endpoint, settings: AppSettings) -> dict:
    protocol = speaks_inference_protocol(endpoint.path)
    answers = {
        Api.classify: json_content({"oneOf": [ref("Classification"), ref("Classifications")]}),
        Api.predict: json_content({"type": "array", "items": {"type": "object", "required": ["label", "score"],
                                                             "properties": {"label": {"type": "string"},
                                                                            "score": {"type": "number"}}}}),
        Api.healthz: json_content(ref("Health")),
        Api.labels: json_content(ref("Labels")),
        Api.page: {"content": {"text/html": {"schema": {"type": "string"}}}},
        Api.openapi: json_content({"type": "object"}),
        Api.v2_server: json_content(ref("ServerMetadata")),
        Api.v2_model: json_content(ref("ModelMetadata")),
        Api.v2_infer: {"content": {JSON: {"schema": ref("InferResponse")},
                                   "application/octet-stream": {"schema": {"type": "string"}}}},
    }
    spec: dict = {"operationId": endpoint.name, "summary": endpoint.summary,
                  "responses": {"200": {"description": "OK", **answers.get(endpoint.handler, {})}}}
    if settings.auth.api_keys and not endpoint.open:
        spec["security"] = [{"apiKey": []}]
        spec["responses"]["401"] = error_description(401, ["unauthorized"], protocol)
    if endpoint.handler in (Api.classify, Api.predict):
        spec["requestBody"] = upload_body(settings.ingress.max_images_per_request)
        if endpoint.handler is Api.classify:
            spec["parameters"] = [TOP_K]
        for status, codes in errors_by_status().items():
            if status != 401:
                spec["responses"][str(status)] = error_description(status, codes, protocol=False)
    if endpoint.handler is Api.v2_infer:
        spec["requestBody"] = {"required": True, "content": {
            JSON: {"schema": ref("InferRequest")},
            "application/octet-stream": {"schema": {"type": "string"},
                                         "description": "Triton's binary extension: the JSON header "
                                                        "(Inference-Header-Content-Length bytes), then the tensors"}}}
        for status, codes in errors_by_status().items():
            if status != 401:
                spec["responses"][str(status)] = error_description(status, codes, protocol=True)
    if endpoint.handler in (Api.healthz, Api.v2_ready, Api.v2_model_ready):
        unavailable = json_content(ref("Health")) if endpoint.handler is Api.healthz else json_content(ref("ProtocolError"))
        spec["responses"]["503"] = {"description": "the model deployment is not answering", **unavailable}
    return spec


def openapi_document(version: str, settings: AppSettings) -> dict:
    """The description of the service as configured: its limits, and, where API keys are set, which
    routes need one (and may answer 401)."""
    paths: dict = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation(endpoint, settings)
    return {
        "openapi": "3.1.0",
        "info": {"title": "serve-app: ResNet-18 image classification", "version": version,
                 "description": "Classify images with torchvision's ResNet-18 (ImageNet-1K). Errors are "
                                "{\"error\": {\"code\", \"message\"}}; on /v2 routes (the Open Inference Protocol) "
                                "{\"error\": \"<message>\"}."},
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}}},
    }
