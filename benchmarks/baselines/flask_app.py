"""Baseline 1: a Flask app running the eager model per request, as most tutorials write it.

    SERVE_APP_WEIGHTS=standin gunicorn -w 2 -b 127.0.0.1:8001 benchmarks.baselines.flask_app:app

One model per gunicorn worker (workers = cores). As written, torch uses its default thread count
in every worker; BASELINE_TORCH_THREADS=1 gives each worker one thread, so workers don't fight
over cores (the tuned variant `flask-tuned` in benchmarks/compare.py).
"""

import os

import torch
from flask import Flask, jsonify, request

from benchmarks.baselines.common import image_tensor, load_eager_model, top3

if os.environ.get("BASELINE_TORCH_THREADS"):
    torch.set_num_threads(int(os.environ["BASELINE_TORCH_THREADS"]))
model = load_eager_model()
app = Flask(__name__)


@app.post("/predict")
def predict():
    upload = request.files.get("file")
    if upload is None:
        return jsonify(error="no file"), 400
    with torch.inference_mode():
        logits = model(image_tensor(upload.read()).unsqueeze(0))[0]
    return jsonify(top3(logits))
