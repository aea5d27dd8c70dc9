"""flare_cli: FLARE cross-lingual LoRA adapters as a command-line tool."""

__version__ = "0.1.0"
