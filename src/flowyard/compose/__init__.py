"""The container deployment: compose files rendered from the same service descriptions as
native mode (`view` is the config as containers see it, `specs` one compose service per
native service, `render` the files, `init_job` what native `up` does before the API)."""
