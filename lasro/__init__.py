"""The `lasro` command: one entry point for the trainer and both services (`lasro --help`)."""

__version__ = "0.1.0"
