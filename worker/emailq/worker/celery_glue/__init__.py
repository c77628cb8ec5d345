"""Celery and kombu glue: the app, the transport that takes emails, the consumer, the lean
task path, the pool, and the `emailq.deliver` task."""
