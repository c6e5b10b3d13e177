"""Flowyard business-logic flows.

Kept apart from the platform package (`flowyard`) on purpose: teams own these
flows and their dependencies; the platform only runs them.
"""
