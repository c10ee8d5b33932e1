"""seqkit-music: music on seqkit's shared encoder, added as a plugin through the public task API:
the ``piano-roll`` task (polyphonic frames; ``bernoulli`` and ``nade`` heads; independent
Bernoulli and Markov baselines), the ``melody`` task (event tokens on the language-modelling
machinery), the ``jsb``, ``chorales``, ``midi`` and ``folk`` datasets; ``seqkit generate`` writes
their MIDI, piano-roll pictures and WAV previews."""

from __future__ import annotations

import seqkit

from .data import MELODY, TASK, chorales_provider, folk_provider, jsb_provider, midi_provider
from .melody import Melody, MelodyModel, MelodyTask
from .model import BernoulliHead, MusicModel, NadeHead, PianoRollTask
from .roll import PianoRoll

__version__ = "0.1.0"
__all__ = ["Melody", "MelodyModel", "MusicModel", "PianoRoll", "__version__"]


@seqkit.hookimpl
def register_tasks(register):
    register(TASK, PianoRollTask)
    register(MELODY, MelodyTask)


@seqkit.hookimpl
def register_heads(register):
    register("bernoulli", BernoulliHead)
    register("nade", NadeHead)


@seqkit.hookimpl
def register_datasets(register):
    register("jsb", jsb_provider)
    register("chorales", chorales_provider)
    register("midi", midi_provider)
    register("folk", folk_provider)
