"""Tasks: loaders, prompt templates, verbalizers and metrics, behind a registry."""
