"""``ctl server``: the HTTP API (``/api/v1``) and the web UI over the same store and engine functions
as the CLI. ``ops`` is the one module that calls the engine; ``auth`` holds tokens, sessions and CSRF."""
