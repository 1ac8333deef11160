"""The null Ray Serve app: what Serve itself costs per request, with no model and no decoding.

One Starlette route that reads the multipart upload and answers a constant top-3, deployed the way
ours is (same Ray settings, replicas and CPUs as our ingress). Ours as a share of its requests/s is
the share of Serve's own ceiling the service reaches (benchmarks/device_run.py).
"""

from ray import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ANSWER = [{"label": "tench", "score": 1.0}, {"label": "goldfish", "score": 0.0}, {"label": "great white shark", "score": 0.0}]


async def classify(request: Request) -> JSONResponse:
    form = await request.form()
    await form["file"].read()
    await form.close()
    return JSONResponse(ANSWER)


@serve.deployment(name="NullIngress")
@serve.ingress(Starlette(routes=[Route("/", classify, methods=["POST"])]))
class NullIngress:
    pass


app = NullIngress.bind()
