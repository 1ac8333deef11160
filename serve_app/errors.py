"""Client errors as types. Each has a stable `code`; the ingress maps types to HTTP statuses."""


class ServiceError(Exception):
    code = "bad_request"

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def as_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


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


class ImageTooLargeError(ServiceError):
    code = "image_too_large"


class UnsupportedMediaTypeError(ServiceError):
    code = "unsupported_media_type"


class UnauthorizedError(ServiceError):
    """No API key, or not a valid one, where keys are configured (401)."""

    code = "unauthorized"


class RequestTimeoutError(ServiceError):
    """The upload did not arrive within request_timeout_s (408)."""

    code = "request_timeout"


class ProcessingTimeoutError(ServiceError):
    """The model did not answer within request_timeout_s (504)."""

    code = "timeout"


class OverloadedError(ServiceError):
    """The model deployment's queue is full: try again shortly (503 with Retry-After)."""

    code = "overloaded"


class ModelUnavailableError(ServiceError):
    """No model replica could answer, even after retries (503 with Retry-After)."""

    code = "model_unavailable"


def error_from_json(body: dict) -> ServiceError:
    """The error an {"error": {"code", "message"}} body stands for (it crossed a process boundary as data)."""
    error = body["error"]
    by_code = {kind.code: kind for kind in _all_subclasses(ServiceError)}
    return by_code.get(error["code"], ServiceError)(error["message"])


def _all_subclasses(kind: type) -> list[type]:
    return [sub for direct in kind.__subclasses__() for sub in (direct, *_all_subclasses(direct))]
