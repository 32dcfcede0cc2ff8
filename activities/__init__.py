"""Activities: thin classes over the services, one file per area."""
