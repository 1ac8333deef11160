"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`, as Triton's and KServe's
gRPC clients call it, on Serve's gRPC port (9000), answered by the same ingress deployment as HTTP
(ingress.py has one method per RPC, which Serve calls by name) through the same model client: the
same decoding, limits, coalescing into model calls and deadlines as /v2 over HTTP.

The messages are tritonclient's generated modules for the protocol's service definition
(`tritonclient.grpc.service_pb2`: Triton's grpc_service.proto, which keeps KServe's
grpc_predict_v2.proto's package, service, messages and field numbers). Inputs and outputs are
those of /v2 over HTTP (inference_protocol.py): `images`, BYTES [N] of encoded images, or `pixels`,
UINT8 [N, 224, 224, 3], as `raw_input_contents` (what tritonclient sends) or typed `contents`;
`probabilities`, FP32 [N, 1000], or with the classification extension BYTES [N, k], always as
`raw_output_contents`. API keys travel as `authorization: Bearer <key>` metadata (tritonclient's
`headers=`), needed for the RPCs whose HTTP twins need one. Every refusal is a status code
(ServiceError.grpc_status) with the same message HTTP gives. Knows nothing of Ray beyond the
context object Serve hands each call; never imports torch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Awaitable, Callable

from serve_app.errors import (
    InternalError,
    InvalidParameterError,
    ModelUnavailableError,
    ServiceError,
    UnauthorizedError,
    UploadTooLargeError,
)
from serve_app.http import inference_protocol as v2
from serve_app.http.access import bearer, key_matches
from serve_app.http.handlers import v2_answer, within
from serve_app.http.model_client import ModelClient
from serve_app.http.presentation import cache_headers, public_model_info
from serve_app.http.routes import is_open
from serve_app.labels import imagenet_labels
from serve_app.settings import AppSettings

# The gRPC proxy's servicer (the configs' grpc_options.grpc_servicer_functions).
SERVICER_FUNCTION = "tritonclient.grpc.service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"
MODEL_PATH = f"{v2.V2_PREFIX}/models/{v2.MODEL_NAME}"
# Each RPC's HTTP twin: whether it needs an API key is the route table's (routes.py) to say.
HTTP_TWINS = {
    "ServerLive": f"{v2.V2_PREFIX}/health/live",
    "ServerReady": f"{v2.V2_PREFIX}/health/ready",
    "ModelReady": f"{MODEL_PATH}/ready",
    "ServerMetadata": v2.V2_PREFIX,
    "ModelMetadata": MODEL_PATH,
    "ModelInfer": f"{MODEL_PATH}/infer",
}
HEALTH_TIMEOUT_S = 10.0
log = logging.getLogger("ray.serve")


def messages():
    """tritonclient's generated messages, imported where gRPC is answered (never at import time,
    so the HTTP side loads without them)."""
    from tritonclient.grpc import service_pb2

    return service_pb2


class GrpcInference:
    """The RPCs, each `(request message, Serve's gRPC context) -> response message`."""

    def __init__(self, model: ModelClient, settings: AppSettings, api_version: str,
                 on_answer: Callable[[str, str], None] = lambda rpc, status: None):
        self._model = model
        self._on_answer = on_answer  # (rpc, status code name), once per call: the metrics count it
        self._settings = settings.ingress
        self._keys = [key.get_secret_value().encode() for key in settings.auth.api_keys]
        self._version = api_version
        self._labels = imagenet_labels()
        self._pb = messages()

    async def ServerLive(self, request, context):
        return await self._answer("ServerLive", context, self._pb.ServerLiveResponse, self._live)

    async def ServerReady(self, request, context):
        return await self._answer("ServerReady", context, self._pb.ServerReadyResponse, self._ready)

    async def ModelReady(self, request, context):
        return await self._answer("ModelReady", context, self._pb.ModelReadyResponse,
                                  lambda: self._model_ready(request))

    async def ServerMetadata(self, request, context):
        return await self._answer("ServerMetadata", context, self._pb.ServerMetadataResponse, self._server_metadata)

    async def ModelMetadata(self, request, context):
        return await self._answer("ModelMetadata", context, self._pb.ModelMetadataResponse,
                                  lambda: self._model_metadata(request))

    async def ModelInfer(self, request, context):
        return await self._answer("ModelInfer", context, self._pb.ModelInferResponse, lambda: self._infer(request, context))

    # ---- what each RPC does ----------------------------------------------------------------------

    async def _live(self):
        return self._pb.ServerLiveResponse(live=True)

    async def _ready(self):
        return self._pb.ServerReadyResponse(ready=await self._model_answers())

    async def _model_ready(self, request):
        self._known_model(request.name)
        return self._pb.ModelReadyResponse(ready=await self._model_answers())

    async def _server_metadata(self):
        metadata = v2.server_metadata(self._version)
        return self._pb.ServerMetadataResponse(**metadata)

    async def _model_metadata(self, request):
        self._known_model(request.name)
        backend = public_model_info(await self._info(time.monotonic() + self._settings.request_timeout_s))["backend"]
        metadata = v2.model_metadata(backend)
        tensor = self._pb.ModelMetadataResponse.TensorMetadata
        return self._pb.ModelMetadataResponse(
            name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"],
            inputs=[tensor(**t) for t in metadata["inputs"]], outputs=[tensor(**t) for t in metadata["outputs"]])

    async def _infer(self, request, context):
        deadline = time.monotonic() + self._settings.request_timeout_s
        self._known_model(request.model_name)
        if request.ByteSize() > self._settings.max_upload_bytes:
            raise UploadTooLargeError(f"the request is larger than the limit of {self._settings.max_upload_bytes} bytes")
        parsed = parse_infer_request(request, self._settings.max_images_per_request)
        answer = await v2_answer(self._model, parsed, deadline, self._settings)
        output, _, raw = v2.output_tensor(parsed, answer, self._labels)
        context.set_trailing_metadata([(name.lower(), value) for name, value in cache_headers(answer).items()])
        tensor = self._pb.ModelInferResponse.InferOutputTensor(**output)
        return self._pb.ModelInferResponse(model_name=v2.MODEL_NAME, model_version=v2.MODEL_VERSION,
                                           id=parsed.id or "", outputs=[tensor], raw_output_contents=[raw])

    # ---- what every RPC goes through -------------------------------------------------------------

    async def _answer(self, rpc: str, context, empty: Callable[[], Any], work: Callable[[], Awaitable[Any]]):
        """`work`'s message; or, for a refusal, the empty message with its status code and message set
        on the context (an unexpected failure is INTERNAL, logged with its traceback)."""
        try:
            self._check_key(rpc, context)
            answer = await work()
            self._on_answer(rpc, "OK")
            return answer
        except ServiceError as error:
            refusal = error
        except Exception:
            log.exception("unexpected failure on gRPC %s", rpc)
            refusal = InternalError("the service failed on this request; the failure is logged")
        _refuse(context, refusal)
        self._on_answer(rpc, refusal.grpc_status)
        return empty()

    def _check_key(self, rpc: str, context) -> None:
        if not self._keys or is_open(HTTP_TWINS[rpc]):
            return
        token = bearer(dict(context.invocation_metadata()).get("authorization"))
        if token is None:
            raise UnauthorizedError("this service needs an API key: send `authorization: Bearer <key>` metadata")
        if not key_matches(token, self._keys):
            raise UnauthorizedError("the API key is not valid")

    def _known_model(self, name: str) -> None:
        if name != v2.MODEL_NAME:
            raise UnknownModel(f"unknown model {name!r}: this server serves {v2.MODEL_NAME!r}")

    async def _model_answers(self) -> bool:
        try:
            await asyncio.wait_for(self._model.info(), HEALTH_TIMEOUT_S)
        except Exception:
            return False
        return True

    async def _info(self, deadline: float) -> dict:
        return await within(deadline, self._model.info(), ModelUnavailableError(
            "the model deployment did not say what it runs within the request timeout: retry later"))


class UnknownModel(ServiceError):
    """gRPC only: a model name other than resnet18 (HTTP answers an unknown route's 404)."""

    code = "not_found"
    status = 404
    grpc_status = "NOT_FOUND"


def parse_infer_request(request, max_images: int) -> v2.InferRequest:
    """A ModelInferRequest's one input, checked as /v2 over HTTP checks it."""
    if len(request.inputs) != 1:
        raise InvalidParameterError(f"send exactly one input: `{v2.IMAGES_INPUT}` (BYTES) or "
                                    f"`{v2.PIXELS_INPUT}` (UINT8)")
    if len(request.raw_input_contents) > 1:
        raise InvalidParameterError("raw_input_contents holds more entries than there are inputs")
    tensor, shape = request.inputs[0], list(request.inputs[0].shape)
    raw = request.raw_input_contents[0] if request.raw_input_contents else None

    def images() -> list[bytes]:
        return v2.bytes_elements(raw) if raw is not None else list(tensor.contents.bytes_contents)

    def pixels():
        if raw is not None:
            return v2.uint8_elements(raw, shape)
        values = tensor.contents.uint_contents
        if len(values) != math.prod(shape) or (values and max(values) > 255):
            raise InvalidParameterError(f"shape {shape} needs {math.prod(shape)} UINT8 values (0 to 255) in "
                                        "contents.uint_contents")
        return v2.uint8_elements(bytes(values), shape)

    return v2.checked_request(tensor.name, tensor.datatype, shape, images, pixels, request.id or None,
                              _classification(request), binary_output=True, max_images=max_images)


def _classification(request) -> int | None:
    outputs = list(request.outputs)
    if not outputs:
        return None
    if len(outputs) != 1 or outputs[0].name != v2.PROBABILITIES_OUTPUT:
        raise InvalidParameterError(f"the only output is `{v2.PROBABILITIES_OUTPUT}`")
    parameter = outputs[0].parameters.get("classification")
    if parameter is None:
        return None
    kind = parameter.WhichOneof("parameter_choice")
    value = getattr(parameter, kind) if kind else None
    return v2.checked_classification(value if kind in ("int64_param", "uint64_param") else str(value))


def _refuse(context, error: ServiceError) -> None:
    import grpc

    context.set_code(getattr(grpc.StatusCode, error.grpc_status))
    context.set_details(error.message)

