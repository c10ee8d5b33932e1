"""Built-in feature front-ends (their options: each one's ``Config``)."""

import seqkit
from seqkit.features.audio import FbankFeatures
from seqkit.features.lm import LMTokens
from seqkit.features.text import TokenFeatures


class Tokens:
    """``tokens``: token embeddings (and character-bigram embeddings) for tagging."""

    Config = TokenFeatures


class Fbank:
    """``fbank``: log-mel filterbanks, SpecAugment and a convolutional front-end, for speech."""

    Config = FbankFeatures


class LanguageModelTokens:
    """``lm-tokens``: characters, words or BPE pieces and their embeddings, for language models."""

    Config = LMTokens


@seqkit.hookimpl
def register_features(register):
    register("tokens", Tokens)
    register("fbank", Fbank)
    register("lm-tokens", LanguageModelTokens)
