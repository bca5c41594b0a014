"""The MRPF job: ``config`` (YAML) -> ``pipeline`` (stages, resume) -> ``report``; ``compare`` (a grid of runs),
``experiment`` (NNI's experiment manager), ``cli`` (``nni-mrs``)."""
