"""memdeploy: deploy neural networks onto memristor crossbars with the hardware in the loop."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
