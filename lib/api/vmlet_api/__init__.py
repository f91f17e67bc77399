"""vmlet's Kubernetes API by name: every ``vmlet.io`` name the facade, ``kubectl vm`` and the local
environment share (`vmlet_api.names`). Standard library only; providers never need it.
"""
