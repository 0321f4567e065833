"""Megatron -> HF checkpoint converter (Megatron-LM style entry point).

    python converters/mcore_to_hf.py --mcore-dir DIR --out DIR [--max-shard-size 2GB] [--verify] [--force]

Same as ``r1vfree-convert mcore-to-hf``; see :mod:`r1vfree_mcore.conversion.cli`.
"""

import sys

from r1vfree_mcore.conversion.cli import main

if __name__ == "__main__":
    sys.exit(main(["mcore-to-hf", *sys.argv[1:]], lean_imports=True))
