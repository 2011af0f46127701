"""Built-in tasks: one file per task family, each registering its tasks into suite.registry.TASKS."""
