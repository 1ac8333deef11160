"""INT8 against FP32: does the quantized model answer like the one it was made from?

    python -m benchmarks.int8_fidelity                        # ~15 minutes on 2 cores
    python -m benchmarks.int8_fidelity --recipes classifier-fp32,classifier-fp32-percentile-gptq --networks stand-in

Three differently built ResNet-18s, each exported to FP32 ONNX and quantized by every recipe of
serve_app.model.artifacts.RECIPES exactly as the service does it (calibrated on 32 images), then compared
with its own FP32 model on images that were never used for calibration:

- `stand-in`: the service's stand-in (classes defined by shared photos 0-31, which also calibrate).
- `seeded`: built the same way from another seed, with batch norm and classes from photos 32-63;
  calibrated on photos 0-31.
- `digits`: trained here for about a minute on scikit-learn's bundled handwritten digits, upscaled
  to 112 x 112 (its activations are a trained network's); calibrated on 32 training digits,
  compared on the 597 held-out ones.

The stand-in and seeded networks are compared on photos 64-99, each in 16 versions (576 images:
as is, mirrored, zoomed, turned, cropped, lighter, darker, flatter, paler, blurred). Reported per
network and recipe: top-1 agreement, top-5 overlap, the largest probability difference, the FP32
model's median top-1 probability (how much margin there is to lose) and the seconds quantizing
took. Speed: INT8 against FP32 ONNX Runtime at batch 8 with 2 threads, median of repeated runs, on
the stand-in. Writes benchmarks/results/int8_fidelity.{md,png,json}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.report import RESULTS, command_line, machine_line, markdown_table
from serve_app.imaging import image_files
from serve_app.launch.evaluate import Fidelity
from serve_app.model.artifacts import (
    INPUT_NAME,
    OUTPUT_NAME,
    RECIPES,
    served_recipe,
    Int8Recipe,
    export_onnx,
    quantize_int8,
)
from serve_app.model.calibration import CALIBRATION_IMAGES, photo_batch
from serve_app.model.top_k import softmax
from serve_app.settings import SHARED_IMAGES

TARGET_TOP1 = 0.98
TARGET_SPEEDUP = 2.0
DIGITS_SIZE = 112
DIGITS_VERSION = "digits-v1"
EVALUATION_FROM = 64  # photos 0-31 calibrate (and make the stand-in), 32-63 make the seeded network


@dataclass
class Network:
    name: str
    build: Callable[[], object]  # -> serve_app.model.network.ResNet18Classifier
    calibration: np.ndarray  # uint8 NHWC
    evaluation: np.ndarray


def photo_variants(paths: list[Path]) -> np.ndarray:
    """Each photo in 16 versions (see `variants`), preprocessed like requests."""
    from PIL import Image

    from serve_app.imaging import load_image

    rows = []
    for path in paths:
        for variant in variants(Image.open(path).convert("RGB")):
            encoded = io.BytesIO()
            variant.save(encoded, "PNG", compress_level=0)  # lossless and fast
            rows.append(load_image(encoded.getvalue(), max_pixels=10**9, draft=False))
    return np.stack(rows)


def variants(image):
    """The photo as is, mirrored, zoomed in, turned, cropped to each corner, lighter, darker, flatter,
    paler and blurred: photos users could send, each near-tie a fresh chance to disagree."""
    from PIL import Image, ImageEnhance, ImageFilter

    width, height = image.size
    mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    zoomed = image.crop((width * 0.1, height * 0.1, width * 0.9, height * 0.9))
    yield from (image, mirrored, zoomed, zoomed.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    yield from (image.rotate(angle, resample=Image.Resampling.BILINEAR) for angle in (8, -8))
    yield mirrored.rotate(15, resample=Image.Resampling.BILINEAR)
    for left, top in ((0, 0), (0.15, 0), (0, 0.15), (0.15, 0.15)):
        yield image.crop((width * left, height * top, width * (left + 0.85), height * (top + 0.85)))
    yield from (ImageEnhance.Brightness(image).enhance(factor) for factor in (0.8, 1.2))
    yield ImageEnhance.Contrast(image).enhance(0.8)
    yield ImageEnhance.Color(image).enhance(0.5)
    yield image.filter(ImageFilter.GaussianBlur(1))


def classifier(state_dict) -> object:
    from torchvision.models import resnet18

    from serve_app.model.network import ResNet18Classifier

    resnet = resnet18(weights=None)
    resnet.load_state_dict(state_dict)
    return ResNet18Classifier(resnet).eval()


def standin_network():
    from serve_app.model.standin import standin_state_dict

    return classifier(standin_state_dict(str(SHARED_IMAGES)))


def seeded_network():
    """The stand-in's recipe with seed 1, from photos 32-63 (none of which calibrates)."""
    from serve_app.model.standin import build_standin_state_dict

    photos = image_files(SHARED_IMAGES)[CALIBRATION_IMAGES:EVALUATION_FROM]
    with tempfile.TemporaryDirectory() as folder:
        for photo in photos:
            os.symlink(photo, Path(folder) / photo.name)
        return classifier(build_standin_state_dict(folder, seed=1))


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits as uint8 112x112x3 images, shuffled with a fixed seed."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.stack([
        np.repeat(np.asarray(Image.fromarray((d / 16 * 255).astype(np.uint8)).resize(
            (DIGITS_SIZE, DIGITS_SIZE), Image.Resampling.BILINEAR))[:, :, None], 3, axis=2)
        for d in digits.images
    ])
    order = np.random.default_rng(0).permutation(len(images))
    return images[order], digits.target[order]


def digits_network(epochs: int = 5, train: int = 1200):
    """ResNet-18 trained from seeded weights on the first 1,200 digits (cached: about a minute)."""
    import torch
    from torchvision.models import resnet18

    from serve_app.model.cache import cache_folder
    from serve_app.model.network import ResNet18Classifier

    path = cache_folder() / f"resnet18-{DIGITS_VERSION}.pt"
    if path.is_file():
        return classifier(torch.load(path, weights_only=True))
    images, labels = digit_images()
    x, y = torch.from_numpy(images[:train]), torch.from_numpy(labels[:train])
    torch.manual_seed(0)
    network = ResNet18Classifier(resnet18(weights=None))
    optimizer = torch.optim.SGD(network.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * (train // 32 + 1))
    network.train()
    for _ in range(epochs):
        for batch in torch.randperm(train).split(32):
            loss = torch.nn.functional.cross_entropy(network(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.resnet.state_dict(), path)
    return network.eval()


def networks(names: list[str]) -> list[Network]:
    photos = image_files(SHARED_IMAGES)
    built = []
    if {"stand-in", "seeded"} & set(names):
        calibration, evaluation = photo_batch(photos[:CALIBRATION_IMAGES]), photo_variants(photos[EVALUATION_FROM:])
        built += [Network("stand-in", standin_network, calibration, evaluation),
                  Network("seeded", seeded_network, calibration, evaluation)]
    if "digits" in names:
        images, _ = digit_images()
        built.append(Network("digits", digits_network, images[:32], images[1200:]))
    return [n for n in built if n.name in names]


def session(path: Path, threads: int = 2):
    """The model at `path`, run on the CPU the way a replica runs it."""
    import onnxruntime as ort

    from serve_app.model.backends.onnx_runtime import session_options

    return ort.InferenceSession(str(path), session_options(threads, spinning=False), providers=["CPUExecutionProvider"])


def probabilities(model, images: np.ndarray) -> np.ndarray:
    return softmax(np.concatenate([model.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + 16]})[0]
                                   for i in range(0, len(images), 16)]))


def batch_seconds(model, batch: np.ndarray, runs: int = 20) -> float:
    model.run([OUTPUT_NAME], {INPUT_NAME: batch})
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model.run([OUTPUT_NAME], {INPUT_NAME: batch})
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def measure(network: Network, recipes: list[Int8Recipe], folder: Path, timed: bool = True,
            built: dict[str, Path] | None = None) -> dict:
    """Each recipe's INT8 against the network's FP32 on its evaluation images, and (`timed`) its speed
    and build time. `built` names INT8 models already quantized from this FP32 by a recipe (the
    service's own artifacts): those are compared as they are, not built again."""
    fp32 = folder / f"{network.name}.onnx"
    example_size = network.evaluation.shape[1]
    export_onnx(network.build(), fp32, example_size=example_size)
    reference_model = session(fp32)
    reference = probabilities(reference_model, network.evaluation)
    fp32_seconds = batch_seconds(reference_model, network.evaluation[:8]) if timed else None
    rows = {}
    for recipe in recipes:
        int8 = (built or {}).get(recipe.name)
        started = time.perf_counter()
        if int8 is None:
            int8 = folder / f"{network.name}-{recipe.name}.onnx"
            quantize_int8(fp32, int8, network.calibration, recipe)
        build_seconds = time.perf_counter() - started
        model = session(int8)
        rows[recipe.name] = asdict(Fidelity.of(probabilities(model, network.evaluation), reference))
        if timed:
            rows[recipe.name].update(speedup=fp32_seconds / batch_seconds(model, network.evaluation[:8]),
                                     build_seconds=build_seconds)
        print(json.dumps({"network": network.name, "recipe": recipe.name, **rows[recipe.name]}), flush=True)
    return {"images": len(network.evaluation), "median_top1_probability": float(np.median(reference.max(1))),
            "recipes": rows}


def plot(results: dict, recipes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 5))
    width = 0.8 / len(results)
    for index, (name, measured) in enumerate(results.items()):
        values = [100 * measured["recipes"][r]["top1_agreement"] for r in recipes]
        axis.bar(np.arange(len(recipes)) + index * width, values, width, label=name)
    axis.axhline(100 * TARGET_TOP1, color="black", linestyle="--", linewidth=1, label=f"target {TARGET_TOP1:.0%}")
    axis.set_xticks(np.arange(len(recipes)) + width * (len(results) - 1) / 2,
                    [f"{r} (served)" if r == served_recipe().name else r for r in recipes], fontsize=7, rotation=20, ha="right")
    axis.set(ylabel="top-1 agreement with FP32 (%)", ylim=(80, 100.5),
             title="INT8 recipes against FP32, on images never used for calibration")
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.suptitle(machine_line(), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_results(results: dict, recipes: list[str], command: str) -> str:
    first = next(iter(results))
    header = ["recipe", "INT8 speed / FP32", f"build s ({first})"] + [
        f"{name}: top-1 / top-5 overlap / max dp" for name in results]
    rows = []
    for recipe in recipes:
        speed, build = (results[first]["recipes"][recipe][key] for key in ("speedup", "build_seconds"))
        cells = [f"{recipe} (served)" if recipe == served_recipe().name else recipe, f"{speed:.2f}x", f"{build:.0f}"]
        for measured in results.values():
            r = measured["recipes"][recipe]
            cells.append(f"{r['top1_agreement']:.1%} / {r['top5_overlap']:.1%} / {r['max_abs_prob_error']:.3f}")
        rows.append(cells)
    served = {name: m["recipes"].get(served_recipe().name) for name, m in results.items()}
    lines = [
        "# INT8 fidelity: each quantization recipe against its FP32 model",
        "",
        f"- Machine: {machine_line()}",
        f"- Command: `{command}`",
        "- Images never used for calibration: "
        + "; ".join(f"{name}: {m['images']} (FP32 median top-1 probability {m['median_top1_probability']:.2f})"
                    for name, m in results.items()),
        "",
        markdown_table(header, rows),
        "",
    ]
    if all(served.values()):
        lines += [
            f"Served recipe `{served_recipe().name}`: "
            + ", ".join(f"{name} {r['top1_agreement']:.1%}" for name, r in served.items())
            + f" top-1 agreement (target {TARGET_TOP1:.0%} on each), "
            + f"{next(iter(served.values()))['speedup']:.2f}x FP32's speed (target {TARGET_SPEEDUP:g}x).",
            "",
        ]
    lines += ["![int8 fidelity](int8_fidelity.png)", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(results, recipes, RESULTS / "int8_fidelity.png")
    (RESULTS / "int8_fidelity.json").write_text(json.dumps(results, indent=2))
    text = "\n".join(lines)
    (RESULTS / "int8_fidelity.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=",".join(dict.fromkeys([*RECIPES, served_recipe().name])))
    parser.add_argument("--networks", default="stand-in,seeded,digits")
    args = parser.parse_args()
    recipes = [served_recipe() if name == served_recipe().name else RECIPES[name] for name in args.recipes.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        results = {n.name: measure(n, recipes, Path(folder)) for n in networks(args.networks.split(","))}
    print(write_results(results, [r.name for r in recipes], command_line()))


if __name__ == "__main__":
    main()
