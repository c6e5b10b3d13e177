"""Deploying users' flow projects (a folder with a `prefect.yaml`) onto the platform."""
