"""The executor service: claims ready attempts under Kafka transactions and runs them sandboxed."""
