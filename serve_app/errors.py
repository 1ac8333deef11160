"""Errors as types.

A request's errors are ServiceErrors: each has a stable `code`, its HTTP `status` and the gRPC status
code that matches it (`grpc_status`, a grpc.StatusCode name): the one status table. WeightsError is
the operator's: the service cannot start with what it was configured to load.
"""


class WeightsError(RuntimeError):
    """The configured weights (or the photos and artifacts built from them) cannot be had; the message
    says how to provide them."""



class ServiceError(Exception):
    code = "bad_request"
    status = 400
    grpc_status = "INVALID_ARGUMENT"

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class NoFileError(ServiceError):
    code = "no_file"


class EmptyImageError(ServiceError):
    code = "empty_image"


class CorruptImageError(ServiceError):
    code = "corrupt_image"


class InvalidParameterError(ServiceError):
    code = "invalid_parameter"


class MalformedRequestError(ServiceError):
    code = "malformed_request"


class TooManyImagesError(ServiceError):
    code = "too_many_images"


class UploadTooLargeError(ServiceError):
    code = "upload_too_large"
    status = 413
    grpc_status = "RESOURCE_EXHAUSTED"


class ImageTooLargeError(ServiceError):
    code = "image_too_large"
    status = 413
    grpc_status = "RESOURCE_EXHAUSTED"


class UnsupportedMediaTypeError(ServiceError):
    code = "unsupported_media_type"
    status = 415


class UnauthorizedError(ServiceError):
    """No API key, or not a valid one, where keys are configured (401)."""

    code = "unauthorized"
    status = 401
    grpc_status = "UNAUTHENTICATED"


class RequestTimeoutError(ServiceError):
    """The upload did not arrive within request_timeout_s (408)."""

    code = "request_timeout"
    status = 408
    grpc_status = "DEADLINE_EXCEEDED"


class ProcessingTimeoutError(ServiceError):
    """The model did not answer within request_timeout_s (504)."""

    code = "timeout"
    status = 504
    grpc_status = "DEADLINE_EXCEEDED"


class OverloadedError(ServiceError):
    """The model deployment's queue is full: try again shortly (503 with Retry-After)."""

    code = "overloaded"
    status = 503
    grpc_status = "RESOURCE_EXHAUSTED"


class InferenceFailedError(ServiceError):
    """The model failed on the batch this request was in (500). Only that batch's requests fail;
    the replica goes on serving."""

    code = "inference_failed"
    status = 500
    grpc_status = "INTERNAL"


class InternalError(ServiceError):
    """The service's own code failed on this request (500): answered, counted and logged like every
    other error, with the request id, instead of a plain-text page."""

    code = "internal_error"
    status = 500
    grpc_status = "INTERNAL"


class ModelUnavailableError(ServiceError):
    """No model replica could answer, even after retries (503 with Retry-After)."""

    code = "model_unavailable"
    status = 503
    grpc_status = "UNAVAILABLE"

