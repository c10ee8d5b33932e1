"""Built-in task heads."""

import seqkit
from seqkit.heads.ctc import CTC
from seqkit.heads.tagger import Tagger


@seqkit.hookimpl
def register_heads(register):
    register("tagger", Tagger)
    register("ctc", CTC)
