"""Serving: ``audioldm-trt serve``, the HTTP API on Ray Serve with step-level batching across requests.

``app`` holds the Ray Serve application (an HTTP ingress and the engine replicas), ``loop`` a replica's step
loop, ``policy`` the scheduling policies that pick each UNet call's requests, ``api`` the HTTP bodies,
``metrics`` the Prometheus metrics, ``cli`` the command, ``playground/`` the page served at ``GET /``. Needs the
``serve`` extra; the engine never imports it.
"""
