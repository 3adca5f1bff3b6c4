"""What sitq shows of itself: the worker's log lines (``logs``), Prometheus metrics
(``metrics``, with the ``sitq[metrics]`` extra) and OpenTelemetry traces (``tracing``, with the
``sitq[otel]`` extra). Importing this package imports neither extra."""
