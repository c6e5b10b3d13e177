"""How clients reach the platform: one profile, one environment, one admin API helper.

Everything that acts as a platform client (`flowyard env`, the local worker, remote workers,
the compose worker, the CLI's Prefect children) builds its environment here, from a
`ClientProfile` made either from the platform's own context or from a worker join file, so
they cannot disagree.
"""
