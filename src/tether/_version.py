"""tether's version, for ``tether.__version__`` and the client's User-Agent.

Must never import anything: modules that ``tether/__init__.py`` itself imports read
the version here, since reading it from ``tether`` would be an import cycle.
"""

__version__ = "0.1.0"
