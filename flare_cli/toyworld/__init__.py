"""The embedded toy world: a seeded English-like language and a pseudo target language ("qtw"),
a tokenizer, a tiny Llama base, a tiny NLLB-architecture MT model and task data, all built
offline (`build`). Importing this package loads no torch."""

from flare_cli.toyworld.build import SIZES, TARGET_LANG, World, build, default_root
from flare_cli.toyworld.tokenizer import ENGLISH_FLORES, TARGET_FLORES
from flare_cli import languages

languages.register("qtw", "qtw_Latn", "Toy world target language")

__all__ = ["ENGLISH_FLORES", "SIZES", "TARGET_FLORES", "TARGET_LANG", "World", "build", "default_root"]
