"""Baseline 1: a Flask app running the model per request, as most tutorials write it.

    SERVE_APP_WEIGHTS=standin gunicorn -w 2 -b 127.0.0.1:8001 benchmarks.baselines.flask_app:app

One model per gunicorn worker (workers = cores). As written, torch uses its default thread count
in every worker; BASELINE_THREADS=1 gives each worker one thread, so workers don't fight over
cores (the tuned variant `flask-tuned` in benchmarks/compare.py). BASELINE_BACKEND=onnx-int8 runs
our INT8 model instead of eager torch (`flask-int8`).
"""

from flask import Flask, jsonify, request

from benchmarks.baselines.common import load_model, top3

model = load_model()
app = Flask(__name__)


@app.post("/predict")
def predict():
    upload = request.files.get("file")
    if upload is None:
        return jsonify(error="no file"), 400
    return jsonify(top3(model.logits([model.preprocess(upload.read())])[0]))
