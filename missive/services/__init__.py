"""Domain services: they know PostgreSQL and the cipher, never Temporal."""
