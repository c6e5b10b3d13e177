"""Team access: the role matrix, the gate in front of Prefect's API, and the API's own
websocket check for per-user logins (docs/access.md)."""
