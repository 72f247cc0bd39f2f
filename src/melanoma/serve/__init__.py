"""The clinic service (`melanoma serve`): REST API, browser UI, audit trail in a database, melanoma alerts.

Layout follows FastAPI's full-stack template: `settings` (one typed object), `app` (the factory), `routers/` (one
module per resource), `db` (SQLAlchemy models + session dependency; Alembic migrations in `migrations/`),
`inference` (model loading and the batching worker), `uploads` (hostile-input checks), `webhook` (alert sender),
`static/` (the UI, a plain client of the public API). Nothing here imports torch for prediction.
"""
