"""dockyard: self-hosted BYOC model deployments, wire-compatible with OCI Data Science."""
__version__ = "0.1.0"
