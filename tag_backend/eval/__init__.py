"""Evaluation of the engine: dataset readers, name->class mapping, metrics, reports.

``tag-backend eval`` (:mod:`tag_backend.eval.cli`) is a thin wrapper around
:func:`tag_backend.eval.runner.run_eval`. Nothing here loads weights at import time.
"""
