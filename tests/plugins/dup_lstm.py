"""A plugin that clashes with the built-in 'lstm' cell name."""

import seqkit
from seqkit.cells import LSTMCell


@seqkit.hookimpl
def register_cells(register):
    register("lstm", LSTMCell)
