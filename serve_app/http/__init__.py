"""The HTTP side: the ingress deployment and the Starlette app it serves. Imports nothing from serve_app.model."""
