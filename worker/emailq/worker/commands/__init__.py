"""The operator commands: the `emailq` CLI, `emailq dlq`, `emailq dev`, and Flower's
additions."""
