"""Run the array emulator: `python -m backends.emulator --profile NAME`."""

import sys

from backends.emulator.cli import main

sys.exit(main())
