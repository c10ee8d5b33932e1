"""Built-in dataset providers."""

import seqkit
from seqkit.data.providers import conll_provider, msra_provider
from seqkit.data.speech import librivox_provider, manifest_provider, synth_provider


@seqkit.hookimpl
def register_datasets(register):
    register("conll", conll_provider)
    register("msra-ner", msra_provider)
    register("synth-speech", synth_provider)
    register("manifest", manifest_provider)
    register("librivox-sample", librivox_provider)
