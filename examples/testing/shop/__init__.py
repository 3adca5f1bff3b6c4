"""A small shop's application code: it sends mail through sitq tasks."""
