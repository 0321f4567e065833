"""HF -> Megatron checkpoint converter (Megatron-LM style entry point).

    python converters/hf_to_mcore.py --hf-dir DIR --out DIR --tp N --pp M [--dtype ...] [--verify] [--force]

Same as ``r1vfree-convert hf-to-mcore``; see :mod:`r1vfree_mcore.conversion.cli`.
"""

import sys

from r1vfree_mcore.conversion.cli import main

if __name__ == "__main__":
    sys.exit(main(["hf-to-mcore", *sys.argv[1:]], lean_imports=True))
