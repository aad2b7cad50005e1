"""``audioldm-trt bench``: this runtime timed side by side with diffusers on the same work, outputs compared.

``bench`` runs it, ``workers`` holds the worker processes (one per contender), ``report`` turns the record
into JSON, markdown and a chart, ``machine`` says what it ran on. See ``benchmarks/README.md``.
"""
