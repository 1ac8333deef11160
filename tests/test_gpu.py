"""The GPU path: the cuda-graphs backend, decoding on the model replica, and configs/gpu.yaml.

Everything here imports on a CPU-only machine. The logic that does not need a GPU (padding batches
to captured sizes, the replica-side decode pipeline on the CPU device, its fallbacks, the config)
is tested everywhere; what needs CUDA is marked `gpu` and skipped, with the reason, without one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.imaging import image_files, is_plain_jpeg, load_image, open_image
from serve_app.launch.harness import deployment, load_config
from serve_app.model.backends.cuda_graphs import CudaGraphsBackend, PaddedRunner
from serve_app.model.device_imaging import decode_batch, joined, split_for_threads
from serve_app.model.weights import resolve_weights
from serve_app.settings import (
    AppSettings,
    BatchSettings,
    IngressSettings,
    ModelSettings,
)
from tests.images import encode, exif_rotated_jpeg

LIMITS = IngressSettings().decode_limits  # what the ingress applies, handed to replicas that decode
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine: GPU-only path not exercised")


@pytest.fixture(scope="module")
def standin_network():
    from serve_app.model.network import build_network

    settings = ModelSettings(weights="standin")
    return build_network(resolve_weights("standin"), settings)


@pytest.fixture(scope="module")
def photos(shared_images):
    return shared_images[::5]  # 20 photos


# ---- configs/gpu.yaml ------------------------------------------------------------------------


def test_gpu_config_sizes_replicas_batches_graphs_and_decoding():
    config = load_config("gpu.yaml")
    settings = AppSettings.from_args(config["applications"][0]["args"])
    classifier, ingress = deployment(config, "Classifier"), deployment(config, "Ingress")
    batch = BatchSettings.model_validate(classifier["user_config"])
    assert settings.model.backend == "cuda-graphs" and settings.model.precision in ("fp16", "bf16")
    assert settings.model.decode_on_replica is True
    assert batch.max_batch_size >= 64
    assert max(settings.model.graph_batch_sizes) >= batch.max_batch_size, "a full batch must fit a captured graph"
    assert 0 < classifier["ray_actor_options"]["num_gpus"] <= 1
    images_in_a_replica = classifier["max_ongoing_requests"] * settings.ingress.max_images_per_call
    assert images_in_a_replica >= 2 * batch.max_batch_size, "a full batch waits while one runs"
    assert ingress["ray_actor_options"]["num_cpus"] >= 1 and ingress["autoscaling_config"]["min_replicas"] >= 2


def test_cuda_graphs_backend_refuses_clearly_without_a_gpu():
    if HAS_CUDA:
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        CudaGraphsBackend(ModelSettings(weights="standin", backend="cuda-graphs"), resolve_weights("standin"), 1)


# ---- padding to captured batch sizes (device independent) ------------------------------------


def test_partial_batches_are_padded_to_the_nearest_size_and_results_stay_in_order(standin_network, photos):
    images = torch.from_numpy(np.stack([load_image(p.read_bytes(), max_pixels=10**8) for p in photos]))
    calls = []

    def runner_for(size):
        def run(batch):
            assert batch.shape[0] == size
            calls.append(size)
            with torch.inference_mode():
                return standin_network(batch)
        return run

    runner = PaddedRunner({size: runner_for(size) for size in (1, 2, 4, 8)})
    with torch.inference_mode():
        expected = standin_network(images)
    for count in (1, 3, 5, 8, 11, 20):
        calls.clear()
        out = runner(images[:count])
        assert out.shape == (count, 1000)
        torch.testing.assert_close(out, expected[:count], atol=1e-4, rtol=1e-4)
        if count <= 8:
            assert calls == [runner.size_for(count)] and runner.size_for(count) >= count
        else:
            assert calls[:-1] == [8] * (count // 8), "batches over the largest size are split"
    assert [runner.size_for(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, 8]


def test_chunks_of_one_graph_size_each_keep_their_own_rows():
    """A CUDA Graph writes every replay into the same output buffer; a batch larger than the largest
    graph replays it once per chunk, and each chunk's rows must survive the next replay."""
    def graph_like(size):
        output = torch.empty((size, 2))  # the graph's static output, overwritten by each replay

        def replay(batch):
            output.copy_(torch.stack([batch[:, 0], batch[:, 0] * 10], dim=1))
            return output
        return replay

    runner = PaddedRunner({size: graph_like(size) for size in (2, 4)})
    batch = torch.arange(11, dtype=torch.float32).reshape(11, 1)
    out = runner(batch)
    assert out[:, 0].tolist() == list(range(11)), "each chunk's rows, not the last replay's"
    assert out[:, 1].tolist() == [10.0 * i for i in range(11)]


# ---- decoding on the model replica: pipeline on the CPU device ---------------------------------


def test_replica_decoding_matches_the_ingress_path(photos, standin_network):
    encoded = [p.read_bytes() for p in photos]
    decoded = decode_batch(encoded, torch.device("cpu"), LIMITS)
    assert decoded.order == list(range(len(photos))) and not decoded.errors
    reference = np.stack([load_image(data, max_pixels=10**8, draft=False) for data in encoded])
    difference = np.abs(decoded.images.numpy().astype(int) - reference.astype(int))
    assert difference.mean() < 1.5, "tensor resize and Pillow's resize agree to about a grey level"
    with torch.inference_mode():
        top_device = standin_network(decoded.images).argmax(1).numpy()
        top_ingress = standin_network(torch.from_numpy(reference)).argmax(1).numpy()
    assert (top_device == top_ingress).mean() >= 0.95


def test_a_bad_jpeg_fails_alone_and_a_refused_one_falls_back_to_the_cpu(photos):
    from PIL import Image

    good = photos[0].read_bytes()
    cmyk = encode(Image.open(photos[1]).convert("CMYK"), "JPEG")  # libjpeg/nvJPEG RGB decode can't take all of these
    truncated = good[: len(good) // 3]
    garbage = b"\xff\xd8\xff" + b"\x00" * 200
    decoded = decode_batch([good, garbage, cmyk, truncated, good], torch.device("cpu"), LIMITS)
    assert decoded.order == [0, 2, 4]
    assert set(decoded.errors) == {1, 3}
    assert all(e.code == "corrupt_image" for e in decoded.errors.values())
    cmyk_row = decoded.images[1].numpy()
    np.testing.assert_allclose(cmyk_row.mean(), load_image(cmyk, max_pixels=10**8).mean(), atol=3)


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_a_batch_decoded_in_parts_side_by_side_is_the_batch_decoded_whole(photos, threads):
    good = [p.read_bytes() for p in photos[:5]]
    garbage = b"\xff\xd8\xff" + b"\x00" * 200
    encoded = [good[0], garbage, good[1], good[2], garbage, good[3], good[4]]
    whole = decode_batch(encoded, torch.device("cpu"), LIMITS)
    parts = split_for_threads(encoded, threads)
    assert len(parts) == min(threads, len(encoded)) and [b for part in parts for b in part] == encoded
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    together = joined([decode_batch(part, torch.device("cpu"), LIMITS) for part in parts])
    assert together.order == whole.order == [0, 2, 3, 5, 6]
    assert set(together.errors) == set(whole.errors) == {1, 4}
    assert torch.equal(together.images, whole.images)


def test_only_plain_jpegs_go_to_the_replica_undecoded(photos):
    from PIL import Image

    rgb = Image.open(photos[0]).convert("RGB")
    plain = {"rgb jpeg": encode(rgb, "JPEG"), "grey jpeg": encode(rgb.convert("L"), "JPEG")}
    not_plain = {
        "cmyk jpeg": encode(rgb.convert("CMYK"), "JPEG"),
        "exif-rotated jpeg": exif_rotated_jpeg(rgb),
        "png": encode(rgb, "PNG"),
        "webp": encode(rgb, "WEBP"),
    }
    for name, data in plain.items():
        assert is_plain_jpeg(open_image(data, max_pixels=10**8)), name
    for name, data in not_plain.items():
        assert not is_plain_jpeg(open_image(data, max_pixels=10**8)), name


def test_gpu_benchmark_refuses_to_time_a_path_that_disagrees_with_fp32():
    from benchmarks.gpu import MIN_TOP1_AGREEMENT
    from benchmarks.report import Disagrees, check_agreement

    reference = np.arange(100)
    assert check_agreement("same", reference.copy(), reference, MIN_TOP1_AGREEMENT) == 1.0
    nan_like = np.zeros(100, dtype=int)  # what NaN logits give: argmax 0 for every photo
    with pytest.raises(Disagrees, match="not timed"):
        check_agreement("broken", nan_like, reference, MIN_TOP1_AGREEMENT)


# ---- on a GPU ----------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_cuda_graphs_fp16_agrees_with_fp32_eager(photos, standin_network):
    backend = CudaGraphsBackend(
        ModelSettings(weights="standin", backend="cuda-graphs", graph_batch_sizes=[1, 4, 16]),
        resolve_weights("standin"), 4,
    )
    images = np.stack([load_image(p.read_bytes(), max_pixels=10**8) for p in photos])
    with torch.inference_mode():
        reference = torch.softmax(standin_network(torch.from_numpy(images)), 1).numpy()
    for count in (1, 3, 16, 20):
        logits = backend.infer(images[:count])
        probabilities = torch.softmax(torch.from_numpy(logits), 1).numpy()
        assert (probabilities.argmax(1) == reference[:count].argmax(1)).mean() >= 0.95
        assert np.abs(probabilities - reference[:count]).max() < 0.05


@pytest.mark.gpu
@needs_cuda
def test_graphs_keep_their_weights_when_freed_memory_is_reused(photos, standin_network):
    """The graphs read the network's weights by address: once the constructor returns, nothing but the
    backend may keep them alive. Freed GPU memory is refilled with NaN to make a dangling read show."""
    import gc

    backend = CudaGraphsBackend(
        ModelSettings(weights="standin", backend="cuda-graphs", graph_batch_sizes=[1, 8]), resolve_weights("standin"), 4,
    )
    gc.collect()
    torch.cuda.empty_cache()
    filler = [torch.full((64, 1024, 1024), float("nan"), device="cuda") for _ in range(8)]  # 2 GiB of NaN
    images = np.stack([load_image(p.read_bytes(), max_pixels=10**8) for p in photos[:8]])
    logits = backend.infer(images)
    del filler
    with torch.inference_mode():
        reference = standin_network(torch.from_numpy(images)).numpy()
    assert np.isfinite(logits).all()
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.95


@pytest.mark.gpu
@needs_cuda
def test_batches_inferred_from_two_threads_at_once_get_their_own_answers(photos):
    from concurrent.futures import ThreadPoolExecutor

    backend = CudaGraphsBackend(
        ModelSettings(weights="standin", backend="cuda-graphs", graph_batch_sizes=[4]), resolve_weights("standin"), 4,
    )
    images = np.stack([load_image(p.read_bytes(), max_pixels=10**8) for p in photos[:16]])
    batches = [images[i : i + 4] for i in range(0, 16, 4)]
    alone = [backend.infer(batch) for batch in batches]
    with ThreadPoolExecutor(2) as pool:
        for _ in range(5):
            together = list(pool.map(backend.infer, batches))
            for a, b in zip(alone, together):
                np.testing.assert_array_equal(a, b)


@pytest.mark.gpu
@needs_cuda
def test_nvjpeg_decoding_matches_the_cpu_decode(photos):
    encoded = [p.read_bytes() for p in photos]
    on_gpu = decode_batch(encoded, torch.device("cuda"), LIMITS)
    on_cpu = decode_batch(encoded, torch.device("cpu"), LIMITS)
    assert on_gpu.images.device.type == "cuda" and on_gpu.order == on_cpu.order
    difference = (on_gpu.images.cpu().int() - on_cpu.images.int()).abs().float().mean()
    assert difference < 1.5


BIG_JPEG_SCRIPT = """
import resource, sys, torch
from pathlib import Path
from serve_app.imaging import image_files
from serve_app.model.device_imaging import decode_batch
from serve_app.settings import DecodeLimits
encoded = [p.read_bytes() for p in image_files(Path(sys.argv[1]))]
torch.set_num_threads(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
decoded = decode_batch(encoded, torch.device('cpu'), DecodeLimits(int(sys.argv[2]), True))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
torch.save({'images': decoded.images, 'order': decoded.order, 'grown_kib': peak - before}, sys.argv[3])
"""


def test_a_chunk_of_large_jpegs_decodes_within_a_memory_bound_and_answers_as_the_ingress(
        tmp_path, shared_images, standin_network):
    """Eight 20-megapixel JPEGs, 160 MP in all (480 MB decoded at once), small enough on the wire to
    pass the ingress. Decoded in groups of at most max_image_pixels (here 40 MP, 120 MB), resized as
    soon as their group is decoded, the replica's memory grows by less than two groups' worth."""
    import subprocess
    import sys

    from PIL import Image

    max_pixels = 40_000_000
    folder = tmp_path / "big"
    folder.mkdir()
    for i, photo in enumerate(shared_images[:8]):
        Image.open(photo).convert("RGB").resize((5000, 4000), Image.Resampling.BILINEAR).save(
            folder / f"{i}.jpg", quality=85)
    encoded = [path.read_bytes() for path in image_files(folder)]
    out = tmp_path / "decoded.pt"
    subprocess.run([sys.executable, "-c", BIG_JPEG_SCRIPT, str(folder), str(max_pixels), str(out)], check=True)
    result = torch.load(out)
    bound_mib = 2 * max_pixels * 3 / 2**20
    grown_mib = result["grown_kib"] / 1024
    assert grown_mib < bound_mib, f"decoding grew the process by {grown_mib:.0f} MiB (bound {bound_mib:.0f})"
    assert result["order"] == list(range(8))
    reference = np.stack([load_image(data, max_pixels=max_pixels, draft=False) for data in encoded])
    assert np.abs(result["images"].numpy().astype(int) - reference.astype(int)).mean() < 1.5
    with torch.inference_mode():
        on_replica = standin_network(result["images"]).argmax(1)
        on_ingress = standin_network(torch.from_numpy(reference)).argmax(1)
    assert on_replica.tolist() == on_ingress.tolist(), "every answer as the ingress path gives it"
