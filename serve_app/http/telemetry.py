"""What the ingress tells its operators: metrics through Ray Serve's metrics API (exported on Ray's
Prometheus endpoint, names prefixed `ray_`) and one structured log line per request.

Ray Serve gives every request an id (the client's own X-Request-ID when it sends one) and returns it
in the X-Request-ID header; the log line carries the same id. (Behind HAProxy the Ingress replica
serves HTTP itself and does this; behind Ray's Python proxy, the proxy does.)
"""

from __future__ import annotations

import logging
import time

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.errors import InternalError
from serve_app.http.responses import error_response
from serve_app.http.routes import route_label
from serve_app.http.scope import header, note_error, route_path
from serve_app.metric_buckets import BATCH_SIZE_BUCKETS, SECONDS_BUCKETS

# Serve's own logger: its handlers write to the replica's log file, as JSON when the config's
# logging_config says `encoding: JSON`, and they add the request id, route and replica.
request_log = logging.getLogger("ray.serve")

class IngressMetrics:
    def __init__(self):
        from ray.serve import metrics

        self.requests = metrics.Counter(
            "serve_app_requests", description="HTTP requests answered, by route and status.", tag_keys=("route", "status")
        )
        self.rejected_uploads = metrics.Counter(
            "serve_app_rejected_uploads", description="Uploads refused, by reason (the error code).", tag_keys=("reason",)
        )
        self.decode_seconds = metrics.Histogram(
            "serve_app_decode_seconds", description="Decode + preprocess time per image.", boundaries=SECONDS_BUCKETS
        )
        self.requests_per_call = metrics.Histogram(
            "serve_app_requests_per_call", description="Requests an ingress replica sent in one model call.",
            boundaries=BATCH_SIZE_BUCKETS,
        )
        self.images_per_call = metrics.Histogram(
            "serve_app_images_per_call", description="Images in one model call.", boundaries=BATCH_SIZE_BUCKETS
        )
        self.cache_lookups = metrics.Counter(
            "serve_app_result_cache_lookups", description="Images looked up in the result cache, by outcome "
            "(hit: answered without the model, from the store or a computation in flight; miss).",
            tag_keys=("outcome",),
        )
        self.cache_store_errors = metrics.Counter(
            "serve_app_result_cache_store_errors",
            description="Calls to the result cache's store (Redis) that failed or timed out: each was a miss.",
        )
        self.grpc_requests = metrics.Counter(
            "serve_app_grpc_requests", description="gRPC calls answered, by RPC and status code.",
            tag_keys=("rpc", "code"),
        )

    def rejected(self, reason: str) -> None:
        self.rejected_uploads.inc(tags={"reason": reason})

    def cache_lookup(self, outcome: str) -> None:
        self.cache_lookups.inc(tags={"outcome": outcome})

    def cache_store_error(self) -> None:
        self.cache_store_errors.inc()

    def grpc_answer(self, rpc: str, code: str) -> None:
        self.grpc_requests.inc(tags={"rpc": rpc, "code": code})

    def model_call(self, requests: int, images: int) -> None:
        self.requests_per_call.observe(requests)
        self.images_per_call.observe(images)


class RequestTelemetry:
    """ASGI middleware, the outermost: counts every answer by route and status, and every refusal noted
    with note_error by its code, and logs each failed request (each request, with `log_every_request`)
    with its request id. An exception nothing else handled becomes a JSON 500 (`internal_error`) in the
    route's error shape, logged with its traceback."""

    def __init__(self, app: ASGIApp, metrics: IngressMetrics, log_every_request: bool = False):
        self.app = app
        self.metrics = metrics
        self.log_every_request = log_every_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering
        answered = False

        async def send_and_note(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except ClientDisconnect:
            pass  # nobody is left to answer
        except Exception:
            if answered:
                raise
            error = InternalError("the service failed on this request; the failure is logged with its request id")
            request_log.exception("unexpected failure on %s %s", scope["method"], route_path(scope),
                                  extra={"serve_app": {"request_id": header(scope, b"x-request-id")}})
            note_error(scope, error.code)
            await error_response(scope, error.code, error.message, error.status)(scope, receive, send_and_note)
        finally:
            route = route_label(route_path(scope))
            self.metrics.requests.inc(tags={"route": route, "status": str(status)})
            error_codes = scope.get("state", {}).get("error_codes", [])
            for code in error_codes:
                self.metrics.rejected(code)
            if self.log_every_request or status >= 400 or error_codes:
                self._log(scope, route, status, error_codes, started)

    @staticmethod
    def _log(scope: Scope, route: str, status: int, error_codes: list[str], started: float) -> None:
        fields = {
            "request_id": header(scope, b"x-request-id"),
            "method": scope["method"],
            "route": route,
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            "error": ",".join(error_codes) or None,
        }
        request_log.info("%s %s %s", scope["method"], route, status, extra={"serve_app": fields})
