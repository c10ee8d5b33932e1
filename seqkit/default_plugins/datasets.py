"""Built-in dataset providers (their options: each provider's ``Config``)."""

import seqkit
from seqkit.data.lm import kjv_provider, text_provider
from seqkit.data.providers import conll_provider, msra_provider, msra_text_provider
from seqkit.data.speech import librivox_provider, manifest_provider, synth_provider


@seqkit.hookimpl
def register_datasets(register):
    register("conll", conll_provider)
    register("msra-ner", msra_provider)
    register("msra-text", msra_text_provider)
    register("synth-speech", synth_provider)
    register("manifest", manifest_provider)
    register("librivox-sample", librivox_provider)
    register("text", text_provider)
    register("kjv", kjv_provider)
