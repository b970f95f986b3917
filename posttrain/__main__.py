"""``python -m posttrain`` (and ``torchrun -m posttrain``) runs the CLI."""

import sys

from posttrain.cli import main

sys.exit(main())
