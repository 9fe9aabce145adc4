"""The ``hbloop`` command: settings from flags and config files, one module per
subcommand."""
