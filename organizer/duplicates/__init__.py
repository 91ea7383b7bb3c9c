"""Duplicates people can act on: kinds, keepers, decisions, plans and an undoable clean-up."""
