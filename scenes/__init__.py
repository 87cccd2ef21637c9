"""The preset scenes, installed as the package ``bnnlab.presets``.

This folder is the only copy of the presets: pyproject.toml maps the package
``bnnlab.presets`` onto it, so a wheel carries these files as ``bnnlab/presets/*.toml``
and the program reads them through :mod:`importlib.resources`.
"""
