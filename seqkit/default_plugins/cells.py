"""Built-in recurrent cells."""

import seqkit
from seqkit.cells import GRUCell, LSTMCell


@seqkit.hookimpl
def register_cells(register):
    register("lstm", LSTMCell)
    register("gru", GRUCell)
