"""The `stack` profile's services: PostgreSQL, Redis, S3 (moto), git, MLflow, Prometheus, Alertmanager,
Pushgateway and the payload-logger sink, started on loopback (`python -m mlops_assets.stack up`)."""
