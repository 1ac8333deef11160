"""What travels between the ingress and a model replica: the only types serve_app.http and
serve_app.model share. Pure NumPy.

A request's images go as one `ImageBatch`, in upload order (uint8 pixels, or plain JPEGs' bytes where
the replicas decode, or the error an image got in the ingress), and only the k best classes of each
come back in the same order (`TopK`), not 1,000 probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

from serve_app.errors import ServiceError

NUM_CLASSES = 1000


# One image as it travels: uint8 pixels of CROP_SHAPE (decoded in the ingress), a plain JPEG's bytes
# (for the replica to decode), or why the ingress could not take it (answered in its place).
Image = Union[np.ndarray, bytes, ServiceError]


@dataclass(frozen=True)
class ImageBatch:
    """One request's images, in the order they were uploaded, and how many classes it wants of each."""

    images: tuple[Image, ...]
    k: int = 3

    def __len__(self) -> int:
        return len(self.images)

    @property
    def nbytes(self) -> int:
        return sum(image.nbytes if isinstance(image, np.ndarray) else len(image) for image in self.images
                   if not isinstance(image, ServiceError))

    @property
    def has_work(self) -> bool:
        """Whether any image needs the model (a request of refused images only is answered at once)."""
        return not all(isinstance(image, ServiceError) for image in self.images)


@dataclass(frozen=True)
class TopK:
    """The k best classes of each image, best first, in the order of the ImageBatch's images."""

    indices: np.ndarray  # int32 (n, k)
    scores: np.ndarray  # float32 (n, k) probabilities
    errors: dict[int, ServiceError] = field(default_factory=dict)  # image -> why it has no answer
    # Set by the model replica: a digest of what decided these answers (weights, backend, artifact,
    # decoding), which the ingress's result cache keys them with.
    identity: str = ""
    # Set by the ingress's result cache, where it is on: which images it answered without the model.
    cached: tuple[bool, ...] = ()

    def __len__(self) -> int:
        return len(self.indices)

    @classmethod
    def unanswered(cls, batch: ImageBatch) -> "TopK":
        """The answer to a batch of refused images only: each one's error, no classes."""
        size = len(batch)
        errors = {row: image for row, image in enumerate(batch.images) if isinstance(image, ServiceError)}
        return cls(np.zeros((size, batch.k), np.int32), np.zeros((size, batch.k), np.float32), errors)
