"""Who is calling: OCI request signatures, principals, policies and the keys behind them."""

from dockyard import compiled

compiled.use(__name__, __path__)  # before any module of the package is imported: see compiled.py
