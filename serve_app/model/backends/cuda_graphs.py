"""The GPU backend: ResNet-18 in half precision and channels-last, captured as one CUDA Graph per batch size.

A CUDA Graph replays a whole forward pass with one launch, which removes the per-layer launch cost
that dominates ResNet-18 at small and medium batches. Graphs have fixed shapes, so a batch is padded
up to the nearest captured size (and one larger than the largest is split). All graphs are captured,
and so warmed up, in the constructor: the replica reports ready only after that.

A captured graph reads its weights and its static input and output by address and holds no
reference to them: every replayer keeps the network alive (without it the weights were freed when
the constructor returned, and replays read whatever reused that memory: NaN in every precision).
Replays share static buffers and one memory pool, so they run one at a time per backend (the
replica's two batched methods call `infer` from worker threads).
"""

from __future__ import annotations

import bisect
import threading
from typing import Callable

import numpy as np
import torch

from serve_app.imaging import CROP_SHAPE
from serve_app.model.network import build_network
from serve_app.model.weights import WeightsSource
from serve_app.settings import ModelSettings

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
WARMUP_ITERATIONS = 3


class PaddedRunner:
    """Runs a batch of any size on runners that each take one fixed batch size."""

    def __init__(self, runners: dict[int, Callable[[torch.Tensor], torch.Tensor]]):
        self.sizes = sorted(runners)
        self.runners = runners

    def size_for(self, count: int) -> int:
        """The smallest runner size that holds `count` images (the largest, if none does)."""
        at = bisect.bisect_left(self.sizes, count)
        return self.sizes[min(at, len(self.sizes) - 1)]

    @property
    def largest(self) -> int:
        return self.sizes[-1]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        outputs = []
        for start in range(0, batch.shape[0], self.largest):
            chunk = batch[start : start + self.largest]
            size = self.size_for(chunk.shape[0])
            padded = chunk.new_zeros((size, *chunk.shape[1:]))
            padded[: chunk.shape[0]] = chunk
            # A graph's output is one buffer that its next replay overwrites: copy this chunk's rows
            # out before another chunk of the same size replays it.
            outputs.append(self.runners[size](padded)[: chunk.shape[0]].clone())
        return torch.cat(outputs)


def capture_graphs(network: torch.nn.Module, sizes: list[int], device: torch.device) -> dict[int, Callable]:
    """One CUDA Graph per batch size, largest first so the others reuse its memory pool."""
    runners: dict[int, Callable] = {}
    pool = None
    stream = torch.cuda.Stream(device)
    for size in sorted(set(sizes), reverse=True):
        static_input = torch.zeros((size, *CROP_SHAPE), dtype=torch.uint8, device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(WARMUP_ITERATIONS):  # cuDNN picks its kernels outside the capture
                network(static_input)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=pool):
            static_output = network(static_input)
        pool = graph.pool()
        runners[size] = _replayer(graph, static_input, static_output, network)
    torch.cuda.synchronize(device)
    return runners


def _replayer(graph, static_input: torch.Tensor, static_output: torch.Tensor, network: torch.nn.Module) -> Callable:
    def run(batch: torch.Tensor) -> torch.Tensor:
        static_input.copy_(batch)
        graph.replay()
        return static_output

    run.network = network  # the graph's weights, alive as long as the graph can be replayed
    return run


class CudaGraphsBackend:
    name = "cuda-graphs"
    artifact_sha256 = None  # runs from the weights themselves

    def __init__(self, settings: ModelSettings, source: WeightsSource, threads: int):
        if not torch.cuda.is_available():
            raise RuntimeError(
                "the cuda-graphs backend needs a CUDA GPU and this replica sees none: give the model "
                "deployment num_gpus, or use backend onnx-int8 (configs/cpu.yaml) on CPUs"
            )
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = True
        self.device = "cuda"
        self._device = torch.device("cuda")
        self.precision = settings.precision
        network = build_network(source, settings).to(self._device, dtype=DTYPES[settings.precision])
        network = network.to(memory_format=torch.channels_last)
        self.batch_sizes = sorted(set(settings.graph_batch_sizes))
        self._run = PaddedRunner(capture_graphs(network, self.batch_sizes, self._device))
        self.max_batch_size = self._run.largest  # a forward pass larger than the largest graph is refused
        self._replaying = threading.Lock()

    def infer(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        batch = torch.as_tensor(images).to(self._device, non_blocking=True)
        with self._replaying, torch.inference_mode():
            # .cpu() waits for the replay, so the static output is read before another batch replays.
            return self._run(batch).float().cpu().numpy()
