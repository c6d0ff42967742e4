"""Subcommands of ``napari-dfa``; see :mod:`napari_dfa.cli`."""
