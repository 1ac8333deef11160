"""The script the lent GPU machine runs (benchmarks/device_run.py), proven here first: both parts as a
dry run on this machine's cores, without CUDA, writing what a device run would write."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from serve_app.launch.harness import REPO

pytestmark = pytest.mark.serve


@pytest.mark.parametrize("part, stem", [(1, "gpu"), (2, "scale16")])
def test_the_device_run_works_end_to_end_as_a_dry_run(tmp_path, part, stem):
    done = subprocess.run([sys.executable, "-m", "benchmarks.device_run", "--part", str(part), "--dry-run",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = tmp_path / "results"
    assert {p.name for p in results.iterdir()} == {f"{stem}.md", f"{stem}.json", f"{stem}.png"}
    run = json.loads((results / f"{stem}.json").read_text())
    assert run["dry_run"] is True and "DRY RUN" in (results / f"{stem}.md").read_text()
    assert run["null"]["req_s"] > 0 and run["null"]["errors"] == 0
    assert run["targets"], "every target it could measure has a verdict"
    if part == 1:
        assert run["agreement"] >= 0.9, "ours was timed only after agreeing with eager FP32"
        assert run["single"]["errors"] == 0 and run["multi"]["errors"] == 0 and run["multi"]["images_s"] > 0
        assert (tmp_path / "pytest_gpu.txt").read_text().strip(), "pytest -m gpu ran and its output came back"
        assert run["model"] and all(row["eager fp32"] > 0 for row in run["model"])
    else:
        counts = [n for _, n in run["replicas"]]
        assert max(counts) == 2 and counts[-1] == 1, f"the model deployment scaled up and back down: {counts}"
        assert all(step.get("errors", 0) == 0 for step in run["steps"])
    refused = subprocess.run([sys.executable, "-m", "benchmarks.device_run", "--publish", str(results)], cwd=REPO,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "dry run" in refused.stderr, "a dry run's numbers are never published"
