"""Bad command-line input: one exception and an argparse parser that raises it.

Every subcommand reports bad input as one line on stderr and exit status 2; raising instead of
argparse's own print-usage-and-exit lets the subcommand print that line itself."""

import argparse


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)
