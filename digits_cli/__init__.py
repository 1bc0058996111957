"""The `digits` command line and the Python client it is built on (client.py): only the
REST API, nothing of the server."""
