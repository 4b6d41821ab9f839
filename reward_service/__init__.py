"""Black-box image rewards over HTTP (`python -m reward_service`)."""

__version__ = "0.1.0"
