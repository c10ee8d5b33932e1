"""Built-in task heads (their options: each head's ``Config``)."""

import seqkit
from seqkit.heads.ctc import CTC
from seqkit.heads.lm import LMHead
from seqkit.heads.tagger import Tagger


@seqkit.hookimpl
def register_heads(register):
    register("tagger", Tagger)
    register("ctc", CTC)
    register("lm", LMHead)
