"""Baseline 3: LitServe, the strongest same-model peer, as its documentation teaches it.

    SERVE_APP_WEIGHTS=standin BASELINE_BACKEND=onnx-int8 BASELINE_THREADS=1 \
        python -m benchmarks.baselines.litserve_app --port 8002 --workers 2

One `LitAPI` whose stages are LitServe's own (decode_request, batch, predict, unbatch,
encode_response), two inference worker processes on the CPU, batching with `max_batch_size=8` and
`batch_timeout=0.01` as its batching guide shows. BASELINE_BACKEND=onnx-int8 runs the very INT8
model ours serves (benchmarks/baselines/common.py), with BASELINE_THREADS ONNX Runtime threads per
worker. POST a multipart `file` to /predict; the answer is the top 3 as [{"label", "score"}].
"""

from __future__ import annotations

import argparse

import litserve as ls

from benchmarks.baselines.common import load_model, top3


class ResNet18API(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = load_model()

    def decode_request(self, request):
        return self.model.preprocess(request["file"].file.read())

    def batch(self, inputs: list) -> list:
        return inputs  # the model stacks them

    def predict(self, images: list):
        return self.model.logits(images)

    def unbatch(self, logits) -> list:
        return list(logits)

    def encode_response(self, logits) -> list[dict]:
        return top3(logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--workers", type=int, default=2, help="inference worker processes")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout", type=float, default=0.01)
    args = parser.parse_args()
    api = ResNet18API(max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False)


if __name__ == "__main__":
    main()
