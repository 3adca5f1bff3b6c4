"""Integrations with web frameworks: ``sitq.contrib.django``."""
