"""Baseline 1: a Flask app running the eager model per request, as most tutorials write it.

    SERVE_APP_WEIGHTS=standin gunicorn -w 2 -b 127.0.0.1:8001 benchmarks.baselines.flask_app:app

One model per gunicorn worker, one torch thread per worker (workers = cores, so they don't fight
over cores: the strongest simple setup, not a strawman).
"""

import torch
from flask import Flask, jsonify, request

from benchmarks.baselines.common import image_tensor, load_eager_model, top3

torch.set_num_threads(1)
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
