"""Kubernetes workers: what a team applies to its own cluster to serve a `kubernetes` work
pool (`flowyard render kubernetes`), and the pool's base job template (`flowyard apply`).

Both are built from one pod environment (`pods.pod_env`): `client_env` of the worker
profile with the paths a pod has, split into the secret keys (a Secret) and the rest.
"""
