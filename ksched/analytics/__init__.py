"""History to analytics: flat rows of runs, tasks, attempts and decisions on Kafka, for a Kafka Connect sink.

`rows` (pure) makes the rows; `projector` (the shell) reads the view topics and the decision log and writes the
rows to the analytics topics; `connector` is the sink's configuration a user copies (docs/ANALYTICS.md).
"""
