"""Encoder speed table: raw nn.LSTM vs seqkit's engines and installed plugin cells.

    python bench/encoder.py --precision fp32 --repeats 7   # the README's table: N=32 L=200 I=80 H=256, 3 layers
    python bench/encoder.py --precision fp32 --mode fwd+bwd --json out.json

The same command as ``seqkit bench encoder`` (``--help`` lists the options).
"""

from seqkit.cli.bench import encoder_cmd

if __name__ == "__main__":
    encoder_cmd.main(prog_name="python bench/encoder.py")
