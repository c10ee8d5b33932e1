"""Built-in dataset providers."""

import seqkit
from seqkit.data.providers import conll_provider, msra_provider


@seqkit.hookimpl
def register_datasets(register):
    register("conll", conll_provider)
    register("msra-ner", msra_provider)
