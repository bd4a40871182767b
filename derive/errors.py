"""The one error type derive/ raises for bad definitions or unknown names."""


class DeriveError(ValueError):
    """A layer definition that cannot be derived; the message names the layer and the term."""

    def __init__(self, layer: str, message: str):
        self.layer = layer
        super().__init__(f"{layer}: {message}")
