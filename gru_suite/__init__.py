"""GRU Suite: one shared GRU backbone serving pluggable sequence tasks.

Importing this package is cheap; torch and Lightning load with the modules that need them.
"""

__version__ = "0.1.0"
