"""The mechanisms methods are made of, one idea per file (see ``lifelong.methods`` for how they combine).

Each module has ``SETTINGS`` (name -> :class:`~lifelong.methods.Setting`) and a ``build(ctx)`` returning a
regulariser (``name`` + ``loss(step_ctx)``) and/or an ``after_learn(ctx)`` returning tensors to store with
the concept.
"""
