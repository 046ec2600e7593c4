"""Running the service: CLI, configuration, migrations, packaging, restarts."""
