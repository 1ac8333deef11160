"""The model side: the classifier deployment, its backends, and where its weights and artifacts come from.
Imports nothing from serve_app.http."""
