"""Flowyard: a self-hosted workflow and experiment platform built on Prefect 3."""

__version__ = "0.1.0"
