"""The protocol core: what hbloop knows without a socket or a clock of its own.

The wire schema (``schema``, declared with construct, for documents and tests), the
formats the per-frame path speaks (``wire``), the frame codec (``protocol``),
the connection state machine (``session``), the grant arithmetic and limits
(``policy``), back-off, histogram buckets. Time arrives as an argument; bytes arrive
and leave as ``bytes``. Nothing here imports from the layers above.
"""
