"""Pre-labelling job engine: a durable, shared queue of Label Studio tasks, one worker per
process, ``/predict`` within a time budget, and the ``prelabel``/``jobs`` commands.

See README.md, "Pre-labelling whole projects".
"""
