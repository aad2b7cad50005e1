"""Serving: ``audioldm-trt serve``, the HTTP API on Ray Serve with step-level batching across requests.

``app`` builds the Ray Serve application: ``ingress`` (the HTTP API, admission, readiness, drain) in front of
``replica`` (an engine and its step loop, on every replica). ``loop`` is a replica's step loop, ``policy`` the
scheduling policies that pick each UNet call's requests, ``api`` the HTTP bodies, ``metrics`` the Prometheus
metrics, ``cli`` the command, ``playground/`` the page served at ``GET /``. Needs the ``serve`` extra; the
engine never imports it.
"""
