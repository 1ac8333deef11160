"""The served INT8 recipe keeps answering like FP32, on images it was not calibrated on.

Guards the figures of benchmarks/results/int8_fidelity.md on the stand-in and on a seeded network
built from other photos, quantized exactly as the service does it (serve_app.model.artifacts.quantize_int8).
"""

from __future__ import annotations

import pytest

from benchmarks.int8_fidelity import EVALUATION_FROM, measure, networks, variants
from serve_app.imaging import image_files
from serve_app.model.artifacts import ARTIFACT_FILES, RECIPES, int8_saturates_here, served_recipe
from serve_app.settings import SHARED_IMAGES

pytestmark = pytest.mark.timeout(900)

# Measured on 576 images each (36 photos x 16 versions): see the benchmark. Half a point to a point of slack for other CPUs'
# kernels; the recipe served before (nearest rounding, min-max ranges) scores 95.7-96.4% here.
MIN_TOP1 = 0.975
MIN_TOP5_OVERLAP = 0.98
MAX_PROB_DIFFERENCE = 0.06


def evaluation_images() -> int:
    from PIL import Image

    photos = image_files(SHARED_IMAGES)
    return len(photos[EVALUATION_FROM:]) * len(list(variants(Image.open(photos[0]).convert("RGB"))))


@pytest.fixture(scope="module")
def measured(tmp_path_factory, standin_artifacts) -> dict:
    """Speed is the benchmark's to measure; the stand-in's served INT8 is the one the service serves
    (the session's artifacts, built by that recipe from the same FP32 and calibration photos)."""
    folder = tmp_path_factory.mktemp("int8")
    recipes = [RECIPES["all-int8"], RECIPES["classifier-fp32"], served_recipe()]
    served = {"stand-in": {served_recipe().name: standin_artifacts / ARTIFACT_FILES["onnx-int8"]}}
    return {network.name: measure(network, recipes, folder, timed=False, built=served.get(network.name))
            for network in networks(["stand-in", "seeded"])}


@pytest.mark.parametrize("network", ["stand-in", "seeded"])
def test_the_served_recipe_agrees_with_fp32_on_images_it_never_saw(measured, network):
    served = measured[network]["recipes"][served_recipe().name]
    assert measured[network]["images"] == evaluation_images(), "every variant of every photo never calibrated on"
    assert served["top1_agreement"] >= MIN_TOP1, served
    assert served["top5_overlap"] >= MIN_TOP5_OVERLAP, served
    assert served["max_abs_prob_error"] <= MAX_PROB_DIFFERENCE, served


@pytest.mark.parametrize("network", ["stand-in", "seeded"])
def test_gptq_rounding_and_percentile_ranges_beat_nearest_rounding_with_min_max_ranges(measured, network):
    recipes = measured[network]["recipes"]
    served, nearest = recipes[served_recipe().name], recipes["classifier-fp32"]
    assert served["top1_agreement"] > nearest["top1_agreement"], (served, nearest)
    assert served["max_abs_prob_error"] < nearest["max_abs_prob_error"], (served, nearest)


@pytest.mark.parametrize("network", ["stand-in", "seeded"])
@pytest.mark.skipif(int8_saturates_here(), reason="8-bit weights saturate on this CPU (x86 without VNNI): the "
                    "recipes compared here are not what it builds; served_recipe() uses 7-bit weights here")
def test_keeping_the_classifier_in_fp32_bounds_the_probability_error(measured, network):
    """Quantizing the classifier's 1000-way output is what moved probabilities by up to 0.3."""
    recipes = measured[network]["recipes"]
    assert recipes["classifier-fp32"]["max_abs_prob_error"] <= 0.1
    assert recipes["classifier-fp32"]["max_abs_prob_error"] < recipes["all-int8"]["max_abs_prob_error"]
