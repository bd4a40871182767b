"""symgrad: the command line and test helpers over derive/, compiled/ and models/."""

__version__ = "0.1.0"
