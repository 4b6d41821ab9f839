"""R_psi, the latent-space surrogate reward, served over HTTP with gradients (`python -m surrogate_service`)."""

__version__ = "0.1.0"
