"""seqkit's own cells, heads and datasets, registered through the same hooks plugins use."""
